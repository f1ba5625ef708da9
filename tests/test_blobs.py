"""The blob store keeps files by content, whole or not at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omnichannel.blobs import BlobStore


async def test_a_file_is_kept_once_under_its_sha256(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    content = b"\xff\xd8\xff photo of a pothole"
    blob_id = await store.put(content)
    assert blob_id == hashlib.sha256(content).hexdigest()
    assert await store.put(content) == blob_id
    path = store.path(blob_id)
    assert path is not None and path.read_bytes() == content
    assert len(list((tmp_path / "blobs").rglob("*"))) == 3  # two directory levels, one file


async def test_unknown_or_malformed_ids_name_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.path("0" * 64) is None
    assert store.path("../../etc/passwd") is None
    assert store.path("A" * 64) is None
