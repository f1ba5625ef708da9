"""Downloads the files citizens send from the provider into the blob store, after the answer.

A webhook is answered once its message is stored; the files it names are fetched afterwards,
from the fetches queued in the same transaction, so a crash only delays them. A file over the
limit is recorded as such and the citizen is told, never silently dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from omnichannel.adapters.base import Adapter, FetchError, TooLarge
from omnichannel.blobs import BlobStore
from omnichannel.store import attachments, outbound, queries
from omnichannel.store.attachments import FetchStatus
from omnichannel.store.database import Database
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

#: Downloads running at once, across messages.
CONCURRENCY = 4


class Fetcher:
    """Fetches queued attachments with retries; resumes what a stop left pending."""

    def __init__(
        self, db: Database, adapter_of: Callable[[str, str], Adapter | None], blobs: BlobStore,
        *, max_bytes: int, attempts: int, timeout_s: float, too_large_text: str,
        deliver: Callable[[int, str], None], backoff_s: float = 1.0,
    ) -> None:
        self._db = db
        self._adapter_of = adapter_of
        self._blobs = blobs
        self._max_bytes = max_bytes
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._too_large_text = too_large_text
        self._deliver = deliver
        self._backoff_s = backoff_s
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Resume the fetches a stop or a crash left pending."""
        async with self._db.api.connect() as conn:
            for message_id in await attachments.pending_messages(conn):
                self.submit(message_id)

    def submit(self, message_id: int) -> None:
        """Fetch a stored message's pending files in the background."""
        task = asyncio.create_task(self._fetch_message(message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel fetches in progress; they stay pending and resume at the next start."""
        await cancel_and_wait(self._tasks)

    async def _fetch_message(self, message_id: int) -> None:
        async with self._db.api.connect() as conn:
            fetches = await attachments.pending_fetches(conn, message_id)
        for fetch in fetches:
            async with self._slots:
                await self._fetch_one(fetch)

    async def _fetch_one(self, fetch: dict[str, Any]) -> None:
        bound = log.bind(message_id=fetch["message_id"], position=fetch["position"])
        adapter = self._adapter_of(str(fetch["channel"]), str(fetch["account"]))
        if adapter is None:
            await self._record(fetch, FetchStatus.FAILED, 0,
                               error=f"no adapter serves {fetch['channel']} account "
                                     f"{fetch['account']!r}")
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    download = await adapter.fetch(str(fetch["account"]), str(fetch["url"]),
                                                   max_bytes=self._max_bytes)
            except TooLarge as exc:
                bound.info("attachment_too_large", reason=str(exc))
                await self._too_large(fetch, attempt, str(exc), exc.limit_bytes)
                return
            except (FetchError, TimeoutError) as exc:
                retryable = exc.retryable if isinstance(exc, FetchError) else True
                error = str(exc) or f"no answer within {self._timeout_s:g} s"
                bound.warning("attachment_fetch_failed", attempt=attempt, error=error)
                if not retryable or attempt >= self._attempts:
                    await self._record(fetch, FetchStatus.FAILED, attempt, error=error)
                    return
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
                continue
            if len(download.content) > self._max_bytes:
                await self._too_large(fetch, attempt, "larger than the configured limit", None)
                return
            blob_id = await self._blobs.put(download.content)
            await self._record(fetch, FetchStatus.STORED, attempt, blob_id=blob_id,
                               size=len(download.content), content_type=download.content_type)
            bound.info("attachment_stored", blob_id=blob_id, size=len(download.content))
            return

    async def _record(
        self, fetch: dict[str, Any], status: FetchStatus, attempts: int, *,
        error: str | None = None, blob_id: str | None = None, size: int | None = None,
        content_type: str | None = None,
    ) -> None:
        async with self._db.write(self._db.api) as conn:
            await attachments.record_fetch(conn, fetch, status, attempts=attempts, error=error,
                                           blob_id=blob_id, size=size,
                                           content_type=content_type)

    async def _too_large(self, fetch: dict[str, Any], attempts: int, reason: str,
                         provider_limit: int | None) -> None:
        """Record the file as too large and tell the citizen, in one transaction."""
        limit = min(self._max_bytes, provider_limit or self._max_bytes)
        async with self._db.write(self._db.api) as conn:
            await attachments.record_fetch(conn, fetch, FetchStatus.TOO_LARGE,
                                           attempts=attempts, error=reason)
            message = await outbound.outbound_message(conn, fetch["message_id"])
            assert message is not None
            target = await queries.conversation_channel(conn, message["conversation_id"])
            notice = await outbound.add_outbound(
                conn, message["conversation_id"], channel=target.channel,
                account=target.account, author="omnichannel",
                text=self._too_large_text.format(limit=_human_size(limit)),
            )
        self._deliver(notice["id"], target.channel)


def _human_size(size: int) -> str:
    """`20 MB`, `500 KB`: a size as citizens read it (decimal units, as providers state them)."""
    for unit, scale in (("MB", 1_000_000), ("KB", 1_000)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"
