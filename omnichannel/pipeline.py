"""The inbound stages: group-committed ingest, then the outbox relay that publishes to the bus."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import sqlalchemy as sa
import structlog

from omnichannel import metrics
from omnichannel.bus import Bus, BusError
from omnichannel.model import InboundMessage, RoutedEvent
from omnichannel.store import outbox
from omnichannel.store.database import Database
from omnichannel.store.ingest import Ingestor, Stored
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

EventListener = Callable[[Sequence[RoutedEvent]], Awaitable[None]]


class ShuttingDown(Exception):
    """The engine is stopping and takes no more messages."""


class IngestPipeline:
    """Collects concurrent requests into batches, each written in one transaction.

    A request waits until its batch is committed, so a 2xx answer means the message is on
    disk. While one batch is in the database the next one fills up: group commit without
    an artificial delay.
    """

    def __init__(
        self, db: Database, ingestor: Ingestor, publisher: Publisher, *, batch_size: int,
        workers: int, on_outbound: Callable[[int, str], None] | None = None,
        on_fetch: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        #: Hands replies queued in an ingest transaction (acknowledgements) to delivery.
        self._on_outbound = on_outbound
        self._on_fetch = on_fetch
        self._ingestor = ingestor
        self._publisher = publisher
        self._batch_size = batch_size
        self._workers = workers
        self._queue: asyncio.Queue[tuple[InboundMessage, asyncio.Future[Stored], float]] = (
            asyncio.Queue()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        """Start the writer tasks."""
        self._tasks = [asyncio.create_task(self._writer()) for _ in range(self._workers)]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Finish what was accepted (for up to `grace_s` seconds), then stop the writers.

        A request still waiting when the grace ends gets an error, never a 2xx, so its
        sender delivers it again.
        """
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace_s)
        await cancel_and_wait(self._tasks)

    async def submit(self, message: InboundMessage) -> Stored:
        """Store `message` durably and return where it went."""
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((message, future, time.perf_counter()))
        return await future

    async def _writer(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(
        self, batch: list[tuple[InboundMessage, asyncio.Future[Stored], float]]
    ) -> None:
        messages = [m for m, _, _ in batch]
        try:
            results = await self._transaction(messages)
        except Exception:
            if len(batch) == 1:
                log.exception("ingest_failed", channel=messages[0].channel)
                _fail(batch[0][1], RuntimeError("the message could not be stored"))
                return
            # One bad message (or a deadlock between batches) must not fail the others:
            # write them one by one.
            log.warning("ingest_batch_retry_singly", size=len(batch), exc_info=True)
            for item in batch:
                await self._write([item])
            return
        metrics.INGEST_BATCH_SIZE.observe(len(batch))
        now = time.perf_counter()
        events = []
        for (message, future, started), result in zip(batch, results, strict=True):
            if result.duplicate:
                metrics.MESSAGES_DUPLICATE.labels(message.channel).inc()
            else:
                metrics.MESSAGES_INGESTED.labels(message.channel).inc()
            if result.event is not None:
                events.append(result.event)
            if result.acknowledgement_id is not None and self._on_outbound is not None:
                self._on_outbound(result.acknowledgement_id, message.channel)
            if result.fetches and self._on_fetch is not None:
                self._on_fetch(result.message_id)
            metrics.INGEST_SECONDS.observe(now - started)
            if not future.done():
                future.set_result(result)
        self._publisher.submit(events)

    async def _transaction(self, messages: list[InboundMessage]) -> list[Stored]:
        async with self._db.write() as conn:
            return await self._ingestor.ingest(conn, messages)


def _fail(future: asyncio.Future[Stored], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


class Publisher:
    """Relays stored messages' events to the bus and marks them published once confirmed.

    Events come straight from ingest; after a restart, those never confirmed are read back
    from the database. The bus may see an event twice (consumers dedupe by message id), but
    never loses one. Relay workers keep several batches in flight on the bus; one marker
    records the confirmed ids, coalescing them into as few database writes as it can.
    """

    def __init__(
        self, db: Database, bus: Bus, *, batch_size: int = 200, workers: int = 8,
        retry_max_s: float = 5.0, max_backlog: int = 20000,
    ) -> None:
        self._db = db
        #: Events held in memory at most; past it (a long broker outage) they wait in the
        #: database and are read back once the backlog has drained.
        self._max_backlog = max_backlog
        self._overflowed = False
        self._drained = asyncio.Event()
        self._bus = bus
        self._batch_size = batch_size
        self._workers = workers
        self._retry_max_s = retry_max_s
        self._queue: asyncio.Queue[RoutedEvent] = asyncio.Queue()
        self._confirmed: list[int] = []
        self._has_confirmed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[EventListener] = []
        self._pending = 0  # submitted, and not yet confirmed and marked
        self._idle = asyncio.Event()
        self._idle.set()

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener` with every batch of events the bus has confirmed."""
        self._listeners.append(listener)

    def submit(self, events: Sequence[RoutedEvent]) -> None:
        """Queue events of freshly committed messages (or leave them to the outbox when full)."""
        for event in events:
            if self._queue.qsize() >= self._max_backlog:
                if not self._overflowed:
                    log.warning("publish_backlog_full", backlog=self._queue.qsize())
                self._overflowed = True
                self._idle.clear()
                continue
            self._pending += 1
            self._idle.clear()
            self._queue.put_nowait(event)

    async def start(self) -> None:
        """Start relaying, after queueing what an earlier run stored but never published."""
        await self._recover()
        self._tasks = [asyncio.create_task(self._relay()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._marker()))
        self._tasks.append(asyncio.create_task(self._reread_overflow()))

    async def drain(self) -> None:
        """Wait until every queued event is confirmed and marked."""
        await self._idle.wait()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Publish what is queued (for up to `grace_s` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), grace_s)
        await cancel_and_wait(self._tasks)

    async def _reread_overflow(self) -> None:
        """After an overflow, read the events left in the database once the backlog is gone."""
        while True:
            await self._drained.wait()
            self._drained.clear()
            if self._overflowed:
                self._overflowed = False
                await self._recover()
                if self._pending == 0:
                    self._idle.set()

    async def _recover(self) -> None:
        async with self._db.api.connect() as conn:
            last = 0
            while True:
                events = await outbox.unpublished(conn, last, self._batch_size)
                if not events:
                    break
                self.submit(events)
                last = events[-1].message_id
        if self._pending:
            log.info("outbox_recovered", events=self._pending)

    async def _relay(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._publish(batch)
            self._confirmed.extend(e.message_id for e in batch)
            self._has_confirmed.set()

    async def _publish(self, batch: list[RoutedEvent]) -> None:
        delay = 0.05
        while True:
            try:
                await self._bus.publish(batch)
                break
            except BusError as exc:
                # Retried every few seconds for as long as the broker is away: one line each,
                # without a traceback.
                metrics.PUBLISH_FAILURES.inc()
                log.warning("publish_failed_retrying", events=len(batch), delay=delay,
                            error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        for event in batch:
            metrics.EVENTS_PUBLISHED.labels(event.queue).inc()
        for listener in self._listeners:
            try:
                await listener(batch)
            except Exception:
                log.exception("event_listener_failed")

    async def _marker(self) -> None:
        while True:
            await self._has_confirmed.wait()
            self._has_confirmed.clear()
            ids, self._confirmed = self._confirmed, []
            await self._mark(ids)
            self._pending -= len(ids)
            if self._pending == 0:
                self._drained.set()
                if not self._overflowed:
                    self._idle.set()

    async def _mark(self, ids: list[int]) -> None:
        delay = 0.05
        while True:
            try:
                async with self._db.write() as conn:
                    await outbox.mark_published(conn, ids)
                return
            except sa.exc.DBAPIError as exc:
                # Unmarked events are published again after a restart; keep trying meanwhile.
                log.warning("mark_published_failed", events=len(ids), error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
