"""Fixtures running the bus contract suite over the in-process bus and over RabbitMQ."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aio_pika
import pytest

from omnichannel.bus import Bus, MemoryBus, RabbitBus, decode_event
from omnichannel.model import Attachment, Location, RoutedEvent

BROKER_URL = os.environ.get("OMNICHANNEL_TEST_BROKER_URL", "")
NO_BROKER = (
    "RabbitMQ bus tests need OMNICHANNEL_TEST_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672/)"
)

#: Small, so that poison-message tests finish quickly.
DELIVERY_LIMIT = 2
#: How long `Subscription.cancel` lets handlers finish in tests.
DRAIN_TIMEOUT = 1.0

WIT = timezone(timedelta(hours=9), "WIT")
_ids = itertools.count(1_000_001)


def make_event(
    queue: str = "dinas-pupr", message_id: int | None = None, **changes: Any
) -> RoutedEvent:
    """A routed event with every field filled, non-ASCII text and two kinds of attachment."""
    mid = next(_ids) if message_id is None else message_id
    sent = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
    values: dict[str, Any] = {
        "message_id": mid,
        "conversation_id": mid // 3,
        "tracking_number": f"AMB-2026-{mid:08d}",
        "queue": queue,
        "rule": "jalan-rusak",
        "channel": "whatsapp",
        "account": "+62911000111",
        "contact_id": 77,
        "sender_id": "6281234567890",
        "sender_name": "Nona Ambon 🌺",
        "text": 'Jalan berlubang di depan Gereja Maranatha — tolong "segera"\n',
        "sent_at": sent,
        "received_at": sent.astimezone(WIT) + timedelta(seconds=2),
        "attachments": (
            Attachment("image/jpeg", 123456, "https://lookaside.example/abc", "foto.jpg", None),
            Attachment("application/pdf", None, None, None, "blob-42"),
        ),
        "location": Location(-3.6954, 128.1814, "Gereja Maranatha", "Jl. Raya Pattimura"),
    }
    values.update(changes)
    return RoutedEvent(**values)


@dataclass
class Collector:
    """A handler recording every event, with a way to wait until enough arrived."""

    events: list[RoutedEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, event: RoutedEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def ids(self) -> Counter[int]:
        return Counter(e.message_id for e in self.events)

    async def wait_for(self, count: int, seconds: float = 15.0) -> list[RoutedEvent]:
        async with asyncio.timeout(seconds):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events


@dataclass
class Harness:
    """A bus under test and the implementation-specific ways to look behind it."""

    kind: str
    bus: Bus
    make: Callable[[], Bus]
    read_dead: Callable[[int, float], Awaitable[list[RoutedEvent]]]
    others: list[Bus] = field(default_factory=list)

    def another(self) -> Bus:
        """Another bus on the same queues (RabbitMQ: another connection; in process: the same)."""
        other = self.make()
        if other is not self.bus:
            self.others.append(other)
        return other

    async def dead(self, count: int, seconds: float = 15.0) -> list[RoutedEvent]:
        """Wait until `count` events were dead-lettered and return them all."""
        return await self.read_dead(count, seconds)


@pytest.fixture(params=["memory", "rabbitmq"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = MemoryBus(delivery_limit=DELIVERY_LIMIT, drain_timeout=DRAIN_TIMEOUT)

        async def memory_dead(count: int, seconds: float) -> list[RoutedEvent]:
            async with asyncio.timeout(seconds):
                # The dead-letter list is a plain list: poll it.
                while len(memory.dead_letters) < count:
                    await asyncio.sleep(0.01)
            return [d.event for d in memory.dead_letters]

        yield Harness("memory", memory, lambda: memory, memory_dead)
        await memory.close()
        return

    if not BROKER_URL:
        pytest.skip(NO_BROKER)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    bus = make_rabbit_bus(prefix)
    dead_box: list[RoutedEvent] = []

    async def rabbit_dead(count: int, seconds: float) -> list[RoutedEvent]:
        dead_box.extend(await drain_queue(f"{prefix}.dead", count - len(dead_box), seconds))
        return list(dead_box)

    h = Harness("rabbitmq", bus, lambda: make_rabbit_bus(prefix), rabbit_dead)
    try:
        yield h
    finally:
        buses: list[Bus] = [bus, *h.others]
        codes = set().union(*(b.queue_codes for b in buses if isinstance(b, RabbitBus)))
        for b in buses:
            await b.close()
        await delete_topology(prefix, codes)


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBus]:
    """A RabbitMQ bus on throwaway exchanges and queues, deleted afterwards."""
    if not BROKER_URL:
        pytest.skip(NO_BROKER)
    bus = make_rabbit_bus(f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield bus
    finally:
        codes = set(bus.queue_codes)
        await bus.close()
        await delete_topology(bus.prefix, codes)


def make_rabbit_bus(prefix: str, **kwargs: Any) -> RabbitBus:
    """A RabbitMQ bus for tests: own prefix, small delivery limit, named connection."""
    options: dict[str, Any] = {
        "prefix": prefix,
        "delivery_limit": DELIVERY_LIMIT,
        "drain_timeout": DRAIN_TIMEOUT,
        "connection_name": f"omnichannel-{prefix}",
    }
    options.update(kwargs)
    return RabbitBus(BROKER_URL, **options)


async def drain_queue(name: str, count: int, seconds: float) -> list[RoutedEvent]:
    """Take (and ack) `count` events from a queue with basic.get, waiting up to `seconds`."""
    events: list[RoutedEvent] = []
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        async with asyncio.timeout(seconds):
            while len(events) < count:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                events.append(decode_event(message.body))
                await message.ack()
    finally:
        await connection.close()
    return events


async def delete_topology(prefix: str, codes: Iterable[str]) -> None:
    """Delete the exchanges and queues a test bus with `prefix` declared."""
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        for name in [*(f"{prefix}.opd.{code}" for code in codes), f"{prefix}.dead"]:
            await channel.queue_delete(name)
        for exchange in (f"{prefix}.routed", f"{prefix}.dead"):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()
