"""Outbound delivery: agents' replies leave through the channel of their conversation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from omnichannel import metrics
from omnichannel.blobs import BlobStore
from omnichannel.bus.base import BusError
from omnichannel.bus.work import WorkQueues
from omnichannel.model import DeliveryStatus, Template
from omnichannel.store import outbound, queries
from omnichannel.store.database import Database
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """A file an agent sends with a reply (e.g. the photo of the finished repair)."""

    content: bytes
    content_type: str
    filename: str | None = None

    @property
    def is_image(self) -> bool:
        """Whether channels can show it inline as a photo."""
        return self.content_type in {"image/jpeg", "image/png", "image/gif", "image/webp"}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A reply ready to hand to a channel's sender."""

    message_id: int
    conversation_id: int
    tracking_number: str
    channel: str
    account: str
    recipient: str
    text: str
    #: Set when the reply is an approved template rather than free text.
    template: Template | None = None
    #: Files sent with the reply, the text as their caption where the channel has captions.
    files: tuple[OutgoingFile, ...] = ()
    #: Who wrote it: an agent, or `omnichannel` for the engine's own automatic messages.
    author: str | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and restarts, for providers that dedupe sends by key."""
        return f"omnichannel-{self.message_id}"


class DeliveryError(Exception):
    """A send failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Sender(Protocol):
    """Hands one reply to a provider and returns the provider's id for it, if any."""

    async def send(self, message: Outgoing) -> str | None: ...


#: Finds the sender of replies in conversations of a channel and account.
SenderLookup = Callable[[str, str], "Sender | None"]

#: How long past its own timeout and backoff a send stays claimed: a claim older than that
#: belongs to a worker that died.
LEASE_MARGIN_S = 5.0

#: A queued reply untouched this long is offered again by the sweep (its work item was lost).
STALLED_AFTER_S = 30.0


class Deliverer:
    """Sends queued replies through their channel's work queue, with retries and backoff.

    Each reply is claimed before it is sent, so however many workers, redeliveries and
    restarts race for it, one sends it. A conversation's replies go one at a time, in order:
    a reply whose predecessor is unsent is left to it, and each finished reply offers the next.
    A periodic sweep offers again what no one holds: replies whose worker died mid-send (its
    claim lapsed) or whose work item was lost.
    """

    def __init__(
        self, db: Database, senders: SenderLookup, queues: WorkQueues, blobs: BlobStore, *,
        attempts: int, timeout_s: float, backoff_s: float = 0.5, sweep_s: float = 10.0,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._senders = senders
        self._queues = queues
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._sweep_s = sweep_s
        self._publishing: set[asyncio.Task[None]] = set()
        #: Replies claimed by the worker that sent their predecessor.
        self._chained: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, channels: Sequence[str]) -> None:
        """Consume every channel's queue, resume replies left unsent, and start the sweep."""
        await self._queues.start(channels, self.deliver)
        await self._offer(stalled_after=None)
        self._sweeper = asyncio.create_task(self._sweep())

    async def _offer(self, stalled_after: timedelta | None) -> None:
        """Submit the first unsent reply of every conversation that has one (and is stalled)."""
        async with self._db.api.connect() as conn:
            pending = await outbound.unsent(conn, stalled_after=stalled_after)
        for message_id, channel in pending:
            self.submit(message_id, channel)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self._offer(stalled_after=timedelta(seconds=STALLED_AFTER_S))
            except Exception:
                log.exception("delivery_sweep_failed")

    def submit(self, message_id: int, channel: str) -> None:
        """Queue a stored outbound message for delivery (in the background)."""
        task = asyncio.create_task(self._put(message_id, channel))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _put(self, message_id: int, channel: str) -> None:
        try:
            await self._queues.put(channel, message_id)
        except BusError as exc:
            # The reply stays queued in the database; the sweep offers it again.
            log.error("reply_not_queued", message_id=message_id, error=str(exc))

    async def stop(self) -> None:
        """Stop sending; replies in progress go back to `queued` and resume at the next start."""
        if self._sweeper is not None:
            await cancel_and_wait([self._sweeper])
        for task in list(self._publishing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._queues.close()
        await cancel_and_wait(self._chained)

    def _lease(self, attempt: int) -> timedelta:
        return timedelta(seconds=self._timeout_s * 2 + self._backoff_s * 2**attempt
                         + LEASE_MARGIN_S)

    async def _claim(self, message_id: int) -> tuple[dict[str, Any], Any] | None:
        """The claimed reply and its conversation's addressing, read in one transaction."""
        async with self._db.api.connect() as conn:
            first = await outbound.first_unsent_of_conversation(conn, message_id)
        if first != message_id:
            # Sent already, or behind an earlier reply whose worker claims it when that one is
            # recorded (this reply is committed, so that look finds it): a read spares the
            # write lock a claim that cannot succeed.
            return None
        async with self._db.write(self._db.api) as conn:
            claimed = await outbound.claim(conn, message_id, self._lease(0))
            if claimed is None:
                return None
            return claimed, await queries.conversation_channel(conn, claimed["conversation_id"])

    async def _outgoing(self, claimed: dict[str, Any], target: Any) -> Outgoing | None:
        if target is None:
            return None
        template = (claimed["raw"] or {}).get("template")
        files = []
        for entry in claimed["attachments"] or []:
            path = self._blobs.path(entry["blob_id"])
            if path is None:
                raise DeliveryError(f"the file {entry['blob_id']} is no longer stored",
                                    retryable=False)
            files.append(OutgoingFile(await asyncio.to_thread(path.read_bytes),
                                      entry["content_type"], entry.get("filename")))
        return Outgoing(
            message_id=claimed["id"], conversation_id=target.id,
            tracking_number=target.tracking_number, channel=claimed["channel"],
            account=claimed["account"], recipient=target.sender_id, text=claimed["text"],
            template=Template(template["name"], template["language"],
                              tuple(template["parameters"])) if template else None,
            files=tuple(files), author=claimed.get("author"),
        )

    async def _record(self, claimed: dict[str, Any], status: DeliveryStatus, attempts: int,
                      error: str | None = None, external_id: str | None = None) -> None:
        """Record how the send went and, in the same transaction, claim the conversation's
        next reply, which this worker then sends (one write per reply on a busy thread)."""
        message_id = claimed["id"]
        try:
            async with self._db.write(self._db.api) as conn:
                await outbound.record_delivery(conn, message_id, status=status,
                                               attempts=attempts, error=error,
                                               external_id=external_id)
                following = await self._claim_next(conn, claimed["conversation_id"])
        except sa.exc.IntegrityError:
            # The provider gave an id another message already has: the send happened all the
            # same, and a reply left claimed would be sent twice after a restart.
            log.warning("provider_id_conflict", message_id=message_id, external_id=external_id)
            async with self._db.write(self._db.api) as conn:
                await outbound.record_delivery(conn, message_id, status=status,
                                               attempts=attempts, error=error)
                following = await self._claim_next(conn, claimed["conversation_id"])
        if following is not None:
            task = asyncio.create_task(self._send_claimed(*following))
            self._chained.add(task)
            task.add_done_callback(self._chained.discard)

    async def _claim_next(
        self, conn: Any, conversation_id: int
    ) -> tuple[dict[str, Any], Any] | None:
        following = await outbound.next_unsent(conn, conversation_id)
        if following is None:
            return None
        claimed = await outbound.claim(conn, following[0], self._lease(0))
        if claimed is None:
            return None  # another worker holds it
        return claimed, await queries.conversation_channel(conn, conversation_id)

    async def deliver(self, message_id: int) -> None:
        """Send one reply unless it is sent or being sent; idempotent."""
        taken = await self._claim(message_id)
        if taken is None:
            # Sent already, held by another worker, or waiting for an earlier reply of its
            # conversation, whose worker claims it next.
            return
        await self._send_claimed(*taken)

    async def _send_claimed(self, claimed: dict[str, Any], target: Any) -> None:
        try:
            await self._send(claimed, target)
        except asyncio.CancelledError:
            # Stopping: hand the reply back so the next start (or another worker) sends it.
            async with self._db.write(self._db.api) as conn:
                await outbound.release(conn, claimed["id"])
            raise

    async def _send(self, claimed: dict[str, Any], target: Any) -> None:
        message_id = claimed["id"]
        try:
            outgoing = await self._outgoing(claimed, target)
        except DeliveryError as exc:
            await self._record(claimed, DeliveryStatus.FAILED, 0, str(exc))
            return
        sender = self._senders(claimed["channel"], claimed["account"])
        if outgoing is None or sender is None:
            await self._record(claimed, DeliveryStatus.FAILED, 0,
                               f"no sender is configured for channel {claimed['channel']!r}, "
                               f"account {claimed['account']!r}")
            return
        bound = log.bind(message_id=message_id, channel=outgoing.channel)
        error = ""
        first = claimed["delivery_attempts"] + 1
        for attempt in range(first, first + self._attempts):
            try:
                # Vendor clients do not all enforce their own timeouts: bound every call here.
                async with asyncio.timeout(self._timeout_s):
                    external_id = await sender.send(outgoing)
            except DeliveryError as exc:
                error, retryable = str(exc), exc.retryable
            except TimeoutError:
                error, retryable = f"no answer within {self._timeout_s:g} s", True
            else:
                metrics.DELIVERIES.labels(outgoing.channel, "sent").inc()
                await self._record(claimed, DeliveryStatus.SENT, attempt,
                                   external_id=external_id)
                bound.info("reply_sent", attempt=attempt)
                return
            metrics.DELIVERIES.labels(outgoing.channel, "error").inc()
            bound.warning("reply_send_failed", attempt=attempt, error=error)
            if not retryable or attempt == first + self._attempts - 1:
                break
            async with self._db.write(self._db.api) as conn:
                await outbound.extend(conn, message_id, attempts=attempt, error=error,
                                      lease=self._lease(attempt))
            await asyncio.sleep(self._backoff_s * 2 ** (attempt - first))
        await self._record(claimed, DeliveryStatus.FAILED, attempt, error)
        bound.error("reply_failed", attempts=attempt, error=error)
