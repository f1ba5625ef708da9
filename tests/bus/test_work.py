"""Work queues of the outbound stage, in process and on RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from omnichannel.bus.rabbitmq import RabbitBus
from omnichannel.bus.work import LocalWorkQueues, RabbitWorkQueues, WorkQueues, make_work_queues
from omnichannel.model import TRIAGE
from tests.bus.conftest import BROKER_URL, delete_topology, make_rabbit_bus


@pytest.fixture(params=["memory", "rabbitmq"])
async def queues(request: pytest.FixtureRequest) -> AsyncIterator[WorkQueues]:
    """Work queues of one kind; RabbitMQ ones on a throwaway bus, their queues deleted after."""
    if request.param == "memory":
        local = LocalWorkQueues()
        yield local
        await local.close()
        return
    if not BROKER_URL:
        pytest.skip("RabbitMQ not configured: set OMNICHANNEL_TEST_BROKER_URL")
    bus = make_rabbit_bus(f"test-{uuid.uuid4().hex[:12]}")
    await bus.start([TRIAGE])
    rabbit = RabbitWorkQueues(bus, prefetch=4)
    try:
        yield rabbit
    finally:
        await rabbit.close()
        await bus.close()
        await delete_work_queues(bus.prefix)
        await delete_topology(bus.prefix, [TRIAGE])


async def delete_work_queues(prefix: str) -> None:
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        for name in ("sms", "telegram", "later"):
            await channel.queue_delete(f"{prefix}.outbound.{name}")


class Recorder:
    """A handler that records items; it fails items listed in `fail` once each."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.fail: set[int] = set()
        self.block = asyncio.Event()
        self.block.set()

    async def __call__(self, item: int) -> None:
        await self.block.wait()
        if item in self.fail:
            self.fail.discard(item)
            raise RuntimeError(f"item {item} fails once")
        self.items.append(item)

    async def wait_for(self, count: int) -> list[int]:
        async with asyncio.timeout(15):
            while len(self.items) < count:
                await asyncio.sleep(0.02)
        return self.items


async def test_every_item_reaches_the_handler(queues: WorkQueues) -> None:
    recorder = Recorder()
    await queues.start(["sms", "telegram"], recorder)
    for item in range(1, 21):
        await queues.put("sms" if item % 2 else "telegram", item)
    assert sorted(await recorder.wait_for(20)) == list(range(1, 21))


async def test_a_queue_not_named_at_start_is_declared_when_first_used(
    queues: WorkQueues,
) -> None:
    recorder = Recorder()
    await queues.start(["sms"], recorder)
    await queues.put("later", 7)
    assert await recorder.wait_for(1) == [7]


async def test_rabbitmq_redelivers_a_failed_item_and_one_left_by_a_stopped_worker(
    rabbit: RabbitBus,
) -> None:
    await rabbit.start([TRIAGE])
    first, second = RabbitWorkQueues(rabbit), RabbitWorkQueues(rabbit)
    stuck = Recorder()
    stuck.block.clear()  # takes items and never finishes them
    try:
        await first.start(["sms"], stuck)
        await first.put("sms", 1)
        await asyncio.sleep(0.3)
        await first.close()  # stops mid-item: the item goes back to the queue

        recorder = Recorder()
        recorder.fail = {2}
        await second.start(["sms"], recorder)
        await second.put("sms", 2)
        assert sorted(await recorder.wait_for(2)) == [1, 2]
        assert stuck.items == []
    finally:
        await second.close()
        await delete_work_queues(rabbit.prefix)


def test_the_kind_follows_the_bus() -> None:
    assert isinstance(make_work_queues(object()), LocalWorkQueues)
    assert isinstance(make_work_queues(RabbitBus("amqp://127.0.0.1:1/")), RabbitWorkQueues)
