"""RabbitMQ bus (aio-pika): routed events to one durable quorum queue per OPD.

Topology (names shown with the default prefix `omnichannel`; declared idempotently by `start`):

- exchange `omnichannel.routed`: topic, durable. Every routed event is published here with
  routing key `opd.<code>` (`RoutedEvent.routing_key`) and `mandatory=True`, so an event whose
  queue is not bound comes back as an error instead of being dropped.
- queue `omnichannel.opd.<code>` per queue code (`triage` included): durable quorum queue bound
  with `opd.<code>`, arguments `x-queue-type=quorum`, `x-delivery-limit=<limit>` (default 5),
  `x-dead-letter-exchange=omnichannel.dead`, `x-dead-letter-strategy=at-least-once` and
  `x-overflow=reject-publish` (which at-least-once dead-lettering requires).
- exchange `omnichannel.dead`: topic, durable; queue `omnichannel.dead`: durable quorum queue
  bound with `#`. A message lands there after `limit + 1` failed deliveries (RabbitMQ counts
  the first delivery apart from the limit), or at once if its body cannot be parsed. Its
  original routing key is kept, and RabbitMQ adds `x-death` / `x-first-death-queue` headers
  (reason `delivery_limit` or `rejected`).

Other systems may bind their own queues to `omnichannel.routed`, e.g. `opd.#` for everything.

Message format (one message per `RoutedEvent`):

- body: UTF-8 JSON object, exactly `RoutedEvent.to_json()`:
  `{"schema": 1, "message_id": int, "conversation_id": int, "tracking_number": str,
  "queue": str, "rule": str|null, "channel": str, "account": str,
  "contact": {"id": int, "sender_id": str, "name": str|null}, "text": str,
  "sent_at": ISO-8601, "received_at": ISO-8601,
  "attachments": [{"content_type", "size", "url", "filename", "blob_id"}],
  "location": {"latitude", "longitude", "name", "address"}|null}`
- properties: `delivery_mode=2` (persistent), `content_type=application/json`,
  `message_id=str(event.message_id)` (the stored message's id: consumers dedupe by it, since
  delivery is at least once and a failed batch is published again), `type=omnichannel.routed`,
  `app_id=omnichannel`, `timestamp` = publish time (UTC, whole seconds).
- headers: `schema-version` (int, = `EVENT_SCHEMA_VERSION`; also `schema` in the body). On a
  redelivery the quorum queue adds `x-delivery-count` (failed deliveries so far).

Delivery: a consumer's handler runs per event, up to `prefetch` at once; the event is acked when
the handler returns and nacked with requeue when it raises. A delivery also fails when its
consumer stops before the ack (RabbitMQ 3.10 counts those returns too). Delivery is at least
once: consumers dedupe by `message_id`.

Publishing: publisher confirms with up to `max_in_flight` messages awaiting their confirm at once
(confirms awaited one at a time cap near 1.5k/s). `publish` returns when all are acked and raises
`BusError` (with the failed ids) if any was returned unroutable, nacked, lost with the
connection, or unconfirmed for `publish_timeout` seconds. The robust connection restores
topology and consumers after a reconnect, and `publish` waits for that, but nothing replays a
publish that failed: the caller retries the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from omnichannel.bus.base import (
    DEFAULT_DELIVERY_LIMIT,
    Bus,
    BusError,
    Handler,
    Subscription,
    check_code,
    decode_event,
    encode_event,
    routing_key,
)
from omnichannel.model import EVENT_SCHEMA_VERSION, RoutedEvent

log = structlog.get_logger(__name__)

#: AMQP `type` property of a published event.
MESSAGE_TYPE = "omnichannel.routed"

#: Arguments of the dead-letter queue.
DEAD_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}

# Placeholder result of an event whose publish has not finished.
_PENDING = "pending"

# What aio-pika raises when the broker refuses, the channel or connection is gone, or a wait
# runs out (AMQPError, OSError, RuntimeError for invalid channel state, pamqp errors).
_BROKER_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError)


class RabbitBus(Bus):
    """Bus over RabbitMQ: one connection, a publishing channel, a channel per consumer."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "omnichannel",
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        max_in_flight: int = 256,
        publish_timeout: float = 10.0,
        drain_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
        connection_name: str = "omnichannel",
    ) -> None:
        if delivery_limit < 0:
            raise ValueError("delivery_limit must be >= 0")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.url = url
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.publish_timeout = publish_timeout
        self.drain_timeout = drain_timeout
        self.reconnect_interval = reconnect_interval
        self.connection_name = connection_name
        self.exchange_name = f"{prefix}.routed"
        self.dead_exchange_name = f"{prefix}.dead"
        self.dead_queue_name = f"{prefix}.dead"
        self.max_in_flight = max_in_flight
        # One limit for the whole bus, so concurrent `publish` calls share it.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._lock = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._topology: AbstractRobustChannel | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._codes: set[str] = set()
        self._subscriptions: set[_RabbitSubscription] = set()
        self._closed = False

    def queue_name(self, code: str) -> str:
        """Name of the queue of a code: `<prefix>.opd.<code>`."""
        return f"{self.prefix}.opd.{code}"

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments every OPD queue is declared with (RabbitMQ refuses to change them later)."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_exchange_name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    @property
    def queue_codes(self) -> frozenset[str]:
        """The codes declared so far."""
        return frozenset(self._codes)

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The underlying robust connection, once started."""
        return self._connection

    async def start(self, queue_codes: Sequence[str]) -> None:
        """Connect (once) and declare the exchanges and the queues of codes not yet declared."""
        for code in queue_codes:
            check_code(code)
        async with self._lock:
            self._check_open()
            topology = await self._connect()
            new_codes = [code for code in dict.fromkeys(queue_codes) if code not in self._codes]
            first = self._exchange is None
            if not first and not new_codes:
                return
            try:
                # The broker closes the channel of a refused declaration (e.g. a queue that
                # exists with other arguments): try everything on a throwaway channel first so
                # the long-lived topology channel never sees a refusal.
                await self._probe(new_codes, first)
                if first:
                    dead_exchange = await topology.declare_exchange(
                        self.dead_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                    dead_queue = await topology.declare_queue(
                        self.dead_queue_name, durable=True, arguments=DEAD_QUEUE_ARGUMENTS
                    )
                    await dead_queue.bind(dead_exchange, "#")
                    exchange = await topology.declare_exchange(
                        self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                    assert self._publisher is not None
                    # The same exchange seen from the publishing channel.
                    self._exchange = await self._publisher.get_exchange(exchange.name, ensure=False)
                for code in new_codes:
                    # Declared on the robust channel, they are declared again after a reconnect.
                    queue = await topology.declare_queue(
                        self.queue_name(code), durable=True, arguments=self.queue_arguments()
                    )
                    await queue.bind(self.exchange_name, routing_key(code))
                    self._codes.add(code)
            except _BROKER_ERRORS as exc:
                raise BusError(f"cannot declare RabbitMQ topology: {exc!r}") from exc
        log.info("bus.started", broker="rabbitmq", prefix=self.prefix, queues=sorted(self._codes))

    async def _probe(self, codes: Sequence[str], exchanges: bool) -> None:
        """Declare on a plain short-lived channel; raises what the broker refuses."""
        connection = self._connection
        transport = connection.transport if connection is not None else None
        if transport is None:
            raise BusError("not connected to RabbitMQ")
        channel = await transport.connection.channel(publisher_confirms=False)
        try:
            if exchanges:
                for name in (self.dead_exchange_name, self.exchange_name):
                    await channel.exchange_declare(name, exchange_type="topic", durable=True)
                await channel.queue_declare(
                    self.dead_queue_name, durable=True, arguments=DEAD_QUEUE_ARGUMENTS
                )
            for code in codes:
                await channel.queue_declare(
                    self.queue_name(code), durable=True, arguments=self.queue_arguments()
                )
        finally:
            if not channel.is_closed:
                await channel.close()

    async def publish(self, events: Sequence[RoutedEvent]) -> None:
        """Publish all events with many confirms outstanding; wait for every one of them.

        Up to `max_in_flight` messages (shared by concurrent calls) await their confirm at once.
        While the connection is being restored, publishing waits for it; if no confirm arrives
        for `publish_timeout` seconds, the events still unconfirmed count as failed.
        """
        self._check_open()
        if not events:
            return
        exchange = self._exchange
        publisher = self._publisher
        if exchange is None or publisher is None:
            raise BusError("bus not started: call start() first", [e.message_id for e in events])
        # Encoding errors are bugs, not broker trouble: raise them before publishing anything.
        bodies = [encode_event(event) for event in events]
        now = datetime.now(UTC)
        results: list[str | None] = [_PENDING] * len(events)
        indexes = iter(range(len(events)))
        loop = asyncio.get_running_loop()
        timeout = self.publish_timeout

        async def worker(deadline: asyncio.Timeout) -> None:
            # A few hundred workers draining one iterator rather than a task per event: the
            # same concurrency for far less scheduling work.
            for i in indexes:
                event = events[i]
                async with self._in_flight:
                    results[i] = await self._publish_one(
                        publisher, exchange, self._message(event, bodies[i], now), event
                    )
                # Progress pushes the deadline back, so it bounds silence, not batch size.
                when = deadline.when()
                if when is not None and when - loop.time() < timeout / 2:
                    deadline.reschedule(loop.time() + timeout)

        workers = min(len(events), self.max_in_flight)
        try:
            async with asyncio.timeout(timeout) as deadline:
                await asyncio.gather(*(worker(deadline) for _ in range(workers)))
        except TimeoutError:
            stalled = f"no confirm within {timeout}s"
            results = [stalled if r is _PENDING else r for r in results]

        failures = [
            (event.message_id, reason)
            for event, reason in zip(events, results, strict=True)
            if reason is not None
        ]
        if failures:
            reasons = sorted({reason for _, reason in failures})
            log.warning(
                "bus.publish_failed", failed=len(failures), total=len(events), reasons=reasons
            )
            raise BusError(
                f"{len(failures)} of {len(events)} events not confirmed: {'; '.join(reasons)}",
                [message_id for message_id, _ in failures],
            )

    async def _publish_one(
        self,
        publisher: AbstractRobustChannel,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        event: RoutedEvent,
    ) -> str | None:
        """Publish one message; None once confirmed, else why it was not."""
        key = event.routing_key
        try:
            if publisher.is_closed:
                # The connection is being restored: wait for it rather than fail at once.
                await publisher.ready()
            result = await exchange.publish(message, key, mandatory=True)
        except PublishError as exc:
            reply = getattr(exc.frame, "reply_text", "returned")
            return f"unroutable ({reply}, routing key {key!r})"
        except DeliveryError as exc:
            return f"nacked by the broker ({exc})"
        except Exception as exc:
            # Whatever stopped the confirm (aiormq fails pending confirms with a bare Exception
            # when the connection drops), the event is not known to be stored.
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(result, aiormq.spec.Basic.Ack):
            return None
        return f"unexpected confirm {result!r}"

    def _message(self, event: RoutedEvent, body: bytes, now: datetime) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event.message_id),
            type=MESSAGE_TYPE,
            app_id="omnichannel",
            timestamp=now,
            headers={"schema-version": EVENT_SCHEMA_VERSION},
        )

    async def consume(
        self, queue_code: str, handler: Handler, *, prefetch: int = 100
    ) -> Subscription:
        """Consume a declared queue on a channel of its own with `prefetch` unacked at most."""
        self._check_open()
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if queue_code not in self._codes:
            raise BusError(f"queue {queue_code!r} is not declared; call start() first")
        connection = self._connection
        assert connection is not None
        channel: AbstractRobustChannel | None = None
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            # Not passive: a passive declare that fails closes the channel, and declaring with
            # the same arguments is a cheap no-op that also checks them.
            queue = await channel.declare_queue(
                self.queue_name(queue_code), durable=True, arguments=self.queue_arguments()
            )
            subscription = _RabbitSubscription(self, queue_code, channel, queue, handler)
            await subscription.start()
        except _BROKER_ERRORS as exc:
            if channel is not None:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()
            raise BusError(f"cannot consume {queue_code!r}: {exc!r}") from exc
        self._subscriptions.add(subscription)
        return subscription

    async def ping(self) -> bool:
        """A round trip to the broker on the topology channel, within 5 s."""
        connection, topology = self._connection, self._topology
        if self._closed or connection is None or topology is None or connection.is_closed:
            return False
        try:
            async with asyncio.timeout(5):
                channel = await topology.get_underlay_channel()
                # basic.qos is a harmless request that needs an answer from the broker.
                await channel.basic_qos(prefetch_count=0)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Cancel subscriptions (letting handlers finish), then close the connection."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
        await asyncio.gather(*(s.cancel() for s in list(self._subscriptions)))
        if self._connection is not None:
            await self._connection.close()
        self._exchange = None
        log.info("bus.closed", broker="rabbitmq", prefix=self.prefix)

    async def _connect(self) -> AbstractRobustChannel:
        if self._topology is not None:
            return self._topology
        try:
            connection = await aio_pika.connect_robust(
                self.url,
                reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": self.connection_name},
            )
        except _BROKER_ERRORS as exc:
            raise BusError(f"cannot connect to RabbitMQ: {exc!r}") from exc
        try:
            topology = await connection.channel(publisher_confirms=False)
            # Returns raise PublishError in the publishing task, so `mandatory` means something.
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except _BROKER_ERRORS as exc:
            await connection.close()
            raise BusError(f"cannot open RabbitMQ channels: {exc!r}") from exc
        self._connection, self._topology, self._publisher = connection, topology, publisher
        return topology

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("bus is closed")


class _RabbitSubscription(Subscription):
    def __init__(
        self,
        bus: RabbitBus,
        code: str,
        channel: AbstractRobustChannel,
        queue: AbstractQueue,
        handler: Handler,
    ) -> None:
        self._bus = bus
        self._code = code
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._cancelled = False

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_event(message.body)
        except (ValueError, KeyError, TypeError) as exc:
            # Redelivering cannot fix a malformed body: straight to the dead-letter queue.
            log.error(
                "bus.malformed_message",
                queue=self._code,
                amqp_message_id=message.message_id,
                error=repr(exc),
            )
            await _settle(message.reject(requeue=False))
            return
        try:
            await self._handler(event)
        except Exception as exc:
            failures = _delivery_count(message) + 1
            log.warning(
                "bus.handler_failed",
                queue=self._code,
                message_id=event.message_id,
                failures=failures,
                dead_lettered=failures > self._bus.delivery_limit,
                error=repr(exc),
            )
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        try:
            if self._tag is not None and not self._channel.is_closed:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await self._queue.cancel(self._tag)
            if self._handlers:
                # Handlers in progress may still ack. Those that overrun are cancelled; their
                # messages, unacked, return to the queue when the channel closes.
                _, overrun = await asyncio.wait(
                    set(self._handlers), timeout=self._bus.drain_timeout
                )
                for task in overrun:
                    task.cancel()
                if overrun:
                    await asyncio.wait(overrun)
            with contextlib.suppress(*_BROKER_ERRORS):
                await self._channel.close()
        finally:
            self._bus._subscriptions.discard(self)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


async def _settle(settling: Any) -> None:
    """Ack or nack; if the channel is gone, the broker redelivers the message anyway."""
    try:
        await settling
    except _BROKER_ERRORS as exc:
        log.warning("bus.settle_failed", error=repr(exc))
