"""In-process bus with the RabbitMQ bus's semantics, for running without a broker and for tests.

Events cross the bus as the same JSON bytes RabbitMQ would carry, so a handler never shares an
object with the publisher. Nothing survives the process: it is durable only as far as the
process lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from omnichannel.bus.base import (
    DEFAULT_DELIVERY_LIMIT,
    Bus,
    BusError,
    Handler,
    Subscription,
    check_code,
    decode_event,
    encode_event,
)
from omnichannel.model import RoutedEvent
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the handlers of `queue` failed on `delivery_limit + 1` times."""

    queue: str
    event: RoutedEvent
    error: str


@dataclass(slots=True)
class _Delivery:
    body: bytes
    message_id: int
    # Failed deliveries so far, like RabbitMQ's `x-delivery-count`.
    failures: int = 0


class _Queue:
    def __init__(self, code: str) -> None:
        self.code = code
        self.items: asyncio.Queue[_Delivery] = asyncio.Queue()


class MemoryBus(Bus):
    """One asyncio queue per code; handler failures requeue up to the delivery limit."""

    def __init__(
        self, *, delivery_limit: int = DEFAULT_DELIVERY_LIMIT, drain_timeout: float = 30.0
    ) -> None:
        if delivery_limit < 0:
            raise ValueError("delivery_limit must be >= 0")
        self.delivery_limit = delivery_limit
        self.drain_timeout = drain_timeout
        self._queues: dict[str, _Queue] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._closed = False
        #: Events dead-lettered after the delivery limit, oldest first.
        self.dead_letters: list[DeadLetter] = []

    @property
    def queue_codes(self) -> frozenset[str]:
        """The codes declared so far."""
        return frozenset(self._queues)

    def pending(self, queue_code: str) -> int:
        """Events waiting in a queue (not counting those being handled)."""
        return self._queues[queue_code].items.qsize()

    async def start(self, queue_codes: Sequence[str]) -> None:
        """Register the codes; idempotent."""
        self._check_open()
        for code in queue_codes:
            check_code(code)
        for code in queue_codes:
            if code not in self._queues:
                self._queues[code] = _Queue(code)

    async def publish(self, events: Sequence[RoutedEvent]) -> None:
        """Enqueue every routable event; raise `BusError` naming the unroutable ones."""
        self._check_open()
        bodies = [encode_event(event) for event in events]
        unroutable: list[int] = []
        for event, body in zip(events, bodies, strict=True):
            queue = self._queues.get(event.queue)
            if queue is None:
                unroutable.append(event.message_id)
                continue
            queue.items.put_nowait(_Delivery(body, event.message_id))
        if unroutable:
            raise BusError(
                f"{len(unroutable)} of {len(events)} events unroutable (no queue bound)",
                unroutable,
            )

    async def consume(
        self, queue_code: str, handler: Handler, *, prefetch: int = 100
    ) -> Subscription:
        """Start a consumer; several consumers of one queue compete for its events."""
        self._check_open()
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        queue = self._queues.get(queue_code)
        if queue is None:
            raise BusError(f"queue {queue_code!r} is not declared; call start() first")
        subscription = _MemorySubscription(self, queue, handler, prefetch)
        self._subscriptions.add(subscription)
        subscription.start()
        return subscription

    async def ping(self) -> bool:
        """True until closed."""
        return not self._closed

    async def close(self) -> None:
        """Cancel every subscription; queued events are dropped with the bus."""
        if self._closed:
            return
        self._closed = True
        subscriptions = list(self._subscriptions)
        await asyncio.gather(*(s.cancel() for s in subscriptions))

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("bus is closed")

    def _dead_letter(self, queue: _Queue, delivery: _Delivery, error: BaseException) -> None:
        event = decode_event(delivery.body)
        self.dead_letters.append(DeadLetter(queue.code, event, repr(error)))
        log.error(
            "bus.dead_lettered",
            queue=queue.code,
            message_id=delivery.message_id,
            failures=delivery.failures,
            error=repr(error),
        )


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, queue: _Queue, handler: Handler, prefetch: int) -> None:
        self._bus = bus
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._cancelled = False

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"bus-consume-{self._queue.code}")

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self._loop_task is not None:
            await cancel_and_wait([self._loop_task])
        if self._handlers:
            # Let handlers in progress finish, as closing an AMQP channel only after acks would.
            _done, pending = await asyncio.wait(self._handlers, timeout=self._bus.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._bus._subscriptions.discard(self)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                delivery = await self._queue.items.get()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._handle(delivery))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, delivery: _Delivery) -> None:
        try:
            await self._handler(decode_event(delivery.body))
        except asyncio.CancelledError as exc:
            # Stopped unacknowledged (the consumer was cancelled): back to the queue, counted
            # as a failed delivery as RabbitMQ counts a message returned by a closed channel.
            self._fail(delivery, exc)
            raise
        except Exception as exc:
            self._fail(delivery, exc)
        finally:
            self._slots.release()

    def _fail(self, delivery: _Delivery, error: BaseException) -> None:
        delivery.failures += 1
        if delivery.failures > self._bus.delivery_limit:
            self._bus._dead_letter(self._queue, delivery, error)
            return
        log.warning(
            "bus.handler_failed",
            queue=self._queue.code,
            message_id=delivery.message_id,
            failures=delivery.failures,
            error=repr(error),
        )
        self._queue.items.put_nowait(delivery)
