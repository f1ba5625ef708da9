"""Work queues of the outbound stage: one queue per channel, carrying ids of replies to send.

In process, an item is a task started at once; the database is what survives a restart. With
RabbitMQ, each channel has a durable quorum queue `<prefix>.outbound.<channel>`, so any engine
process may send any reply and a reply taken by a process that dies returns to the queue. Items
are delivered at least once: the handler must be idempotent (delivery claims each message).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from omnichannel.bus.base import BusError, check_code
from omnichannel.bus.rabbitmq import RabbitBus
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

#: Runs one work item (an outbound message id); raising puts the item back on the queue.
WorkHandler = Callable[[int], Awaitable[None]]


class WorkQueues(abc.ABC):
    """Named queues of integer work items, each consumed by one handler."""

    @abc.abstractmethod
    async def start(self, names: Sequence[str], handler: WorkHandler) -> None:
        """Declare the queues of `names` and run `handler` for their items."""

    @abc.abstractmethod
    async def put(self, name: str, item: int) -> None:
        """Enqueue `item` durably on queue `name`; raise `BusError` if it was not accepted."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming; items in progress are cancelled and return to their queue."""


class LocalWorkQueues(WorkQueues):
    """In process: every item is a task at once; nothing outlives the process."""

    def __init__(self) -> None:
        self._handler: WorkHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, names: Sequence[str], handler: WorkHandler) -> None:
        """Remember the handler; in process there is nothing to declare."""
        self._handler = handler

    async def put(self, name: str, item: int) -> None:
        """Run the handler for `item` in the background."""
        if self._handler is None:
            raise BusError("work queues not started")
        task = asyncio.create_task(self._run(name, self._handler, item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, name: str, handler: WorkHandler, item: int) -> None:
        try:
            await handler(item)
        except Exception:
            # Nothing to requeue to in process: the item stays unsent in the database and is
            # resumed at the next start.
            log.exception("work.handler_failed", queue=name, item=item)

    async def close(self) -> None:
        """Cancel the items in progress and wait for them to unwind."""
        await cancel_and_wait(self._tasks)


class RabbitWorkQueues(WorkQueues):
    """A durable quorum queue per name on the bus's RabbitMQ connection."""

    def __init__(self, bus: RabbitBus, *, prefetch: int = 32) -> None:
        self._bus = bus
        self._prefetch = prefetch
        self._publisher: AbstractRobustChannel | None = None
        self._consumer: AbstractRobustChannel | None = None
        self._consuming: list[tuple[AbstractQueue, str]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._handler: WorkHandler | None = None
        self._declared: set[str] = set()
        self._declaring = asyncio.Lock()

    def queue_name(self, name: str) -> str:
        """`<prefix>.outbound.<name>`."""
        return f"{self._bus.prefix}.outbound.{check_code(name)}"

    async def start(self, names: Sequence[str], handler: WorkHandler) -> None:
        """Declare each queue (limits and dead-lettering as for OPD queues) and consume it."""
        connection = self._bus.connection
        if connection is None:
            raise BusError("the bus is not started")
        self._handler = handler
        try:
            self._publisher = await connection.channel(publisher_confirms=True)
            self._consumer = await connection.channel(publisher_confirms=False)
            await self._consumer.set_qos(prefetch_count=self._prefetch)
        except (aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise BusError(f"cannot open channels for outbound queues: {exc!r}") from exc
        for name in names:
            await self._declare(name)

    async def _declare(self, name: str) -> None:
        """Declare and consume one queue, once."""
        async with self._declaring:
            if name in self._declared:
                return
            assert self._consumer is not None and self._handler is not None
            try:
                queue = await self._consumer.declare_queue(
                    self.queue_name(name), durable=True, arguments=self._bus.queue_arguments()
                )
                tag = await queue.consume(self._consumer_of(self._handler))
            except (aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
                raise BusError(f"cannot declare outbound queue {name!r}: {exc!r}") from exc
            self._consuming.append((queue, tag))
            self._declared.add(name)

    def _consumer_of(
        self, handler: WorkHandler
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                try:
                    item = int(message.body)
                except ValueError:
                    log.error("work.malformed_item", body=message.body[:100])
                    await message.reject(requeue=False)
                    return
                try:
                    await handler(item)
                except Exception:
                    log.exception("work.handler_failed", item=item)
                    await message.nack(requeue=True)
                    return
                await message.ack()
            finally:
                self._handlers.discard(task)

        return on_message

    async def put(self, name: str, item: int) -> None:
        """Publish `item` persistently and wait for the broker's confirm."""
        if self._publisher is None:
            raise BusError("work queues not started")
        # A channel no adapter announced at start-up still gets its queue, rather than an
        # unroutable publish that would leave the reply waiting for the next start.
        await self._declare(name)
        try:
            if self._publisher.is_closed:
                await self._publisher.ready()
            await self._publisher.default_exchange.publish(
                aio_pika.Message(str(item).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 message_id=str(item), content_type="text/plain"),
                routing_key=self.queue_name(name), mandatory=True,
            )
        except Exception as exc:
            raise BusError(f"outbound item {item} not confirmed: {exc!r}", [item]) from exc

    async def close(self) -> None:
        """Cancel the consumers and the handlers in progress; their items go back to the queues."""
        for queue, tag in self._consuming:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers))
        for channel in (self._consumer, self._publisher):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()


def make_work_queues(bus: object) -> WorkQueues:
    """RabbitMQ work queues beside a RabbitMQ bus; in process otherwise."""
    return RabbitWorkQueues(bus) if isinstance(bus, RabbitBus) else LocalWorkQueues()
