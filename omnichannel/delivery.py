"""Outbound delivery: agents' replies leave through the channel of their conversation."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
import structlog

from omnichannel import metrics
from omnichannel.model import DeliveryStatus, Template
from omnichannel.store import outbound, queries
from omnichannel.store.database import Database

log = structlog.get_logger(__name__)


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


class Deliverer:
    """Sends queued replies with retries and exponential backoff; resumes them after restart."""

    def __init__(
        self, db: Database, senders: dict[str, Sender], *, attempts: int, timeout_s: float,
        backoff_s: float = 0.5,
    ) -> None:
        self._db = db
        self._senders = senders
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Resume every reply that was queued but not delivered when the engine stopped."""
        async with self._db.api.connect() as conn:
            pending = await outbound.unsent(conn)
        for message_id in pending:
            self.submit(message_id)

    def submit(self, message_id: int) -> None:
        """Deliver a stored outbound message in the background."""
        task = asyncio.create_task(self._deliver(message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel deliveries in flight; they stay queued and resume at the next start."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _outgoing(self, message_id: int) -> Outgoing | None:
        async with self._db.api.connect() as conn:
            msg = await outbound.outbound_message(conn, message_id)
            if msg is None:
                return None
            target = await queries.conversation_channel(conn, msg["conversation_id"])
        if target is None:
            return None
        return Outgoing(
            message_id=message_id, conversation_id=target.id,
            tracking_number=target.tracking_number, channel=target.channel,
            account=target.account, recipient=target.sender_id, text=msg["text"],
        )

    async def _record(self, message_id: int, status: DeliveryStatus, attempts: int,
                      error: str | None = None, external_id: str | None = None) -> None:
        try:
            async with self._db.write(self._db.api) as conn:
                await outbound.record_delivery(conn, message_id, status=status,
                                              attempts=attempts, error=error,
                                              external_id=external_id)
        except sa.exc.IntegrityError:
            # The provider gave an id another message already has: the send happened all the
            # same, and a reply left `queued` would be sent twice after a restart.
            log.warning("provider_id_conflict", message_id=message_id, external_id=external_id)
            async with self._db.write(self._db.api) as conn:
                await outbound.record_delivery(conn, message_id, status=status,
                                              attempts=attempts, error=error)

    async def _deliver(self, message_id: int) -> None:
        outgoing = await self._outgoing(message_id)
        if outgoing is None:
            return
        sender = self._senders.get(outgoing.channel)
        if sender is None:
            await self._record(message_id, DeliveryStatus.FAILED, 0,
                               f"no sender is configured for channel {outgoing.channel!r}")
            return
        bound = log.bind(message_id=message_id, channel=outgoing.channel)
        error = ""
        for attempt in range(1, self._attempts + 1):
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
                await self._record(message_id, DeliveryStatus.SENT, attempt,
                                   external_id=external_id)
                bound.info("reply_sent", attempt=attempt)
                return
            metrics.DELIVERIES.labels(outgoing.channel, "error").inc()
            bound.warning("reply_send_failed", attempt=attempt, error=error)
            if not retryable:
                break
            if attempt < self._attempts:
                await self._record(message_id, DeliveryStatus.QUEUED, attempt, error)
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        await self._record(message_id, DeliveryStatus.FAILED, attempt, error)
        bound.error("reply_failed", attempts=attempt, error=error)
