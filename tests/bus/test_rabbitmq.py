"""What only the RabbitMQ bus has: broker topology, wire format, reconnection."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from omnichannel.bus import BusError, MemoryBus, RabbitBus, make_bus
from omnichannel.model import EVENT_SCHEMA_VERSION, RoutedEvent
from tests.bus.conftest import (
    BROKER_URL,
    DELIVERY_LIMIT,
    Collector,
    drain_queue,
    make_event,
    make_rabbit_bus,
)

A, B = "dinas-pupr", "perkim"
RABBITMQCTL = shutil.which("rabbitmqctl")


def rabbitmqctl(*args: str) -> Any:
    """Run rabbitmqctl with JSON output; skip the test if it cannot talk to the node."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl not on PATH")
    done = subprocess.run(
        [RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl failed: {done.stderr.strip()[:200]}")
    return json.loads(done.stdout) if "--formatter" in args else done.stdout


def test_make_bus_picks_the_implementation() -> None:
    assert isinstance(make_bus(None), MemoryBus)
    assert isinstance(make_bus(""), MemoryBus)
    bus = make_bus("amqp://guest:guest@127.0.0.1:5672/")
    assert isinstance(bus, RabbitBus)
    assert bus.exchange_name == "omnichannel.routed"
    assert bus.queue_name("triage") == "omnichannel.opd.triage"
    assert bus.dead_queue_name == "omnichannel.dead"


async def test_unreachable_broker_is_a_bus_error() -> None:
    bus = RabbitBus("amqp://guest:guest@127.0.0.1:1/")
    with pytest.raises(BusError):
        await bus.start([A])
    assert await bus.ping() is False
    await bus.close()


async def test_queues_are_durable_quorum_queues_with_dead_lettering(rabbit: RabbitBus) -> None:
    await rabbit.start([A, B])
    connection = await aio_pika.connect(BROKER_URL)
    try:
        # Redeclaring with the same arguments succeeds only if the broker holds exactly these.
        channel = await connection.channel()
        for code in (A, B):
            await channel.declare_queue(
                rabbit.queue_name(code), durable=True, arguments=rabbit.queue_arguments()
            )
        await channel.declare_queue(
            rabbit.dead_queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.declare_exchange(rabbit.exchange_name, "topic", durable=True)
        await channel.declare_exchange(rabbit.dead_exchange_name, "topic", durable=True)
        # And any other declaration is refused.
        refused: list[tuple[str, dict[str, Any]]] = [
            (rabbit.queue_name(A), {"durable": False, "arguments": rabbit.queue_arguments()}),
            (
                rabbit.queue_name(A),
                {"durable": True, "arguments": {"x-queue-type": "classic"}},
            ),
        ]
        for name, options in refused:
            channel = await connection.channel()
            with pytest.raises(ChannelPreconditionFailed):
                await channel.declare_queue(name, **options)
    finally:
        await connection.close()

    assert rabbit.queue_arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": rabbit.dead_exchange_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if RABBITMQCTL is not None:
        queues = {
            q["name"]: q
            for q in rabbitmqctl("list_queues", "--formatter", "json", "name", "type", "durable")
        }
        for name in (rabbit.queue_name(A), rabbit.queue_name(B), rabbit.dead_queue_name):
            assert queues[name]["type"] == "quorum"
            assert queues[name]["durable"] is True


async def test_published_message_is_persistent_json_with_message_id(rabbit: RabbitBus) -> None:
    await rabbit.start([A])
    event = make_event(A)
    await rabbit.publish([event])
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(rabbit.queue_name(A), passive=True)
        async with asyncio.timeout(10):
            while (message := await queue.get(fail=False)) is None:
                await asyncio.sleep(0.05)
        await message.ack()
    finally:
        await connection.close()

    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == str(event.message_id)
    assert message.content_type == "application/json"
    assert message.type == "omnichannel.routed"
    assert message.app_id == "omnichannel"
    assert message.timestamp is not None
    assert message.routing_key == "opd.dinas-pupr"
    assert message.exchange == rabbit.exchange_name
    assert message.headers["schema-version"] == EVENT_SCHEMA_VERSION
    assert json.loads(message.body) == event.to_json()
    assert RoutedEvent.from_json(json.loads(message.body)) == event


async def test_malformed_message_goes_straight_to_the_dead_letter_queue(rabbit: RabbitBus) -> None:
    await rabbit.start([A])
    calls = Collector()
    subscription = await rabbit.consume(A, calls)
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(rabbit.exchange_name)
        await exchange.publish(aio_pika.Message(b"{not json", message_id="x"), "opd.dinas-pupr")
        good = make_event(A)
        await rabbit.publish([good])
        await calls.wait_for(1)
        dead_queue = await channel.declare_queue(rabbit.dead_queue_name, passive=True)
        async with asyncio.timeout(10):
            while (dead := await dead_queue.get(fail=False)) is None:
                await asyncio.sleep(0.05)
        await dead.ack()
    finally:
        await connection.close()
    await subscription.cancel()
    assert [e.message_id for e in calls.events] == [good.message_id]
    assert dead.body == b"{not json"
    assert dead.headers["x-first-death-reason"] == "rejected"


async def test_dead_letters_keep_routing_key_and_death_reason(rabbit: RabbitBus) -> None:
    await rabbit.start([A])

    async def fail(event: RoutedEvent) -> None:
        raise RuntimeError("poison")

    subscription = await rabbit.consume(A, fail)
    event = make_event(A)
    await rabbit.publish([event])
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        dead_queue = await channel.declare_queue(rabbit.dead_queue_name, passive=True)
        async with asyncio.timeout(15):
            while (dead := await dead_queue.get(fail=False)) is None:
                await asyncio.sleep(0.05)
        await dead.ack()
    finally:
        await connection.close()
    await subscription.cancel()
    assert dead.routing_key == event.routing_key
    assert dead.message_id == str(event.message_id)
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert dead.headers["x-first-death-queue"] == rabbit.queue_name(A)


async def publish_until_confirmed(bus: RabbitBus, events: Sequence[RoutedEvent]) -> int:
    """Publish as a caller must: retry the batch on BusError. Returns the number of attempts."""
    for attempt in range(1, 21):
        try:
            await bus.publish(events)
        except BusError:
            await asyncio.sleep(0.5)
            continue
        return attempt
    raise AssertionError("publish never recovered")


async def drop_connection(bus: RabbitBus, how: str) -> None:
    """Close the bus's AMQP connection under it, from the client or from the broker."""
    if how == "broker":
        listing = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
        marker = f'{{"connection_name","{bus.connection_name}"}}'
        pids = [line.split("\t")[0] for line in listing.splitlines() if marker in line]
        assert len(pids) == 1, listing
        rabbitmqctl("close_connection", pids[0], "test: simulated broker-side drop")
    else:
        connection = bus.connection
        assert connection is not None and connection.transport is not None
        await connection.transport.connection.close(ConnectionError("test: simulated drop"))


@pytest.mark.parametrize("how", ["client", "broker"])
async def test_publish_and_consume_recover_after_the_connection_drops(how: str) -> None:
    if not BROKER_URL:
        pytest.skip("needs OMNICHANNEL_TEST_BROKER_URL")
    import uuid

    from tests.bus.conftest import delete_topology

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    bus = make_rabbit_bus(prefix, reconnect_interval=0.2, publish_timeout=5)
    try:
        await bus.start([A])
        collector = Collector()
        subscription = await bus.consume(A, collector)
        first = make_event(A)
        await bus.publish([first])
        await collector.wait_for(1)

        # Drop the connection while a large batch is in flight.
        batch = [make_event(A) for _ in range(2000)]
        publishing = asyncio.create_task(bus.publish(batch))
        await asyncio.sleep(0.02)
        await drop_connection(bus, how)
        try:
            await publishing
        except BusError as exc:
            assert exc.failed  # the caller learns which events to retry
        attempts = await publish_until_confirmed(bus, batch)
        assert attempts >= 1

        after = [make_event(A) for _ in range(10)]
        await publish_until_confirmed(bus, after)
        wanted = {e.message_id for e in [first, *batch, *after]}
        async with asyncio.timeout(30):
            while not wanted <= set(collector.ids()):
                await asyncio.sleep(0.05)
        # At least once: a batch published twice may arrive twice, never less than once.
        assert set(collector.ids()) == wanted
        assert await bus.ping() is True
        await subscription.cancel()
    finally:
        await bus.close()
        await delete_topology(prefix, [A])


async def test_ping_detects_a_lost_connection(rabbit: RabbitBus) -> None:
    await rabbit.start([A])
    assert await rabbit.ping() is True
    connection = rabbit.connection
    assert connection is not None
    await connection.close()
    assert await rabbit.ping() is False


async def test_events_in_the_dead_letter_queue_survive_a_redeclare(rabbit: RabbitBus) -> None:
    await rabbit.start([A])

    async def fail(event: RoutedEvent) -> None:
        raise RuntimeError("poison")

    subscription = await rabbit.consume(A, fail)
    event = make_event(A)
    await rabbit.publish([event])
    await asyncio.sleep(0.5)
    await subscription.cancel()
    await rabbit.start([A, B])  # a rules reload must not purge anything
    assert await drain_queue(rabbit.dead_queue_name, 1, 10) == [event]


async def test_conflicting_queue_is_a_bus_error_and_the_bus_stays_usable(
    rabbit: RabbitBus,
) -> None:
    await rabbit.start([A])
    clash = "legacy"
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        # A queue someone declared by hand with other arguments: RabbitMQ refuses to redeclare.
        await channel.declare_queue(rabbit.queue_name(clash), durable=True)
        with pytest.raises(BusError, match="PRECONDITION_FAILED"):
            await rabbit.start([clash])
        assert clash not in rabbit.queue_codes

        await rabbit.start([A, B])
        collector = Collector()
        subscription = await rabbit.consume(B, collector)
        event = make_event(B)
        await rabbit.publish([event])
        assert [e.message_id for e in await collector.wait_for(1)] == [event.message_id]
        await subscription.cancel()
        assert await rabbit.ping() is True
    finally:
        channel = await connection.channel()
        await channel.queue_delete(rabbit.queue_name(clash))
        await connection.close()
