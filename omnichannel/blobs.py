"""Files kept on disk by content: a blob's id is the SHA-256 of its bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

_BLOB_ID = re.compile(r"[0-9a-f]{64}")


class BlobStore:
    """Content-addressed files under one directory; the same file sent twice is kept once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def put(self, content: bytes) -> str:
        """Store `content` durably and return its id (written off the event loop)."""
        blob_id = hashlib.sha256(content).hexdigest()
        await asyncio.to_thread(self._write, blob_id, content)
        return blob_id

    def path(self, blob_id: str) -> Path | None:
        """Where a stored blob is; None for an id that is malformed or unknown."""
        if not _BLOB_ID.fullmatch(blob_id):
            return None
        path = self.root / blob_id[:2] / blob_id[2:4] / blob_id
        return path if path.is_file() else None

    def _write(self, blob_id: str, content: bytes) -> None:
        target = self.root / blob_id[:2] / blob_id[2:4] / blob_id
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a temporary name, flushed, then renamed: a crash leaves no half file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
