"""The bus contract, run over the in-process bus and over RabbitMQ."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from omnichannel.bus import BusError
from omnichannel.model import RoutedEvent
from tests.bus.conftest import DELIVERY_LIMIT, DRAIN_TIMEOUT, Collector, Harness, make_event

A, B, C = "dinas-pupr", "perkim", "triage"


async def test_round_trip_preserves_every_field(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    full = make_event(A)
    sparse = make_event(A, rule=None, sender_name=None, text="", attachments=(), location=None)
    collector = Collector()
    subscription = await bus.consume(A, collector)
    await bus.publish([full, sparse])
    received = await collector.wait_for(2)
    await subscription.cancel()

    by_id = {e.message_id: e for e in received}
    assert by_id[full.message_id] == full
    assert by_id[sparse.message_id] == sparse
    # Equality of aware datetimes ignores the offset: check it survives too.
    assert by_id[full.message_id].received_at.utcoffset() == full.received_at.utcoffset()
    assert by_id[full.message_id] is not full


async def test_events_reach_only_their_own_queue(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A, B, C])
    collectors = {code: Collector() for code in (A, B, C)}
    subscriptions = [await bus.consume(code, collectors[code]) for code in (A, B, C)]
    events = {code: [make_event(code) for _ in range(5)] for code in (A, B)}
    await bus.publish([e for batch in events.values() for e in batch])

    for code in (A, B):
        received = await collectors[code].wait_for(5)
        assert sorted(e.message_id for e in received) == sorted(e.message_id for e in events[code])
        assert all(e.queue == code for e in received)
    await asyncio.sleep(0.3)
    assert collectors[C].events == []
    assert len(collectors[A].events) == len(collectors[B].events) == 5
    for subscription in subscriptions:
        await subscription.cancel()


async def test_start_is_idempotent_and_adds_codes(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    waiting = make_event(A)
    await bus.publish([waiting])
    await bus.start([A])
    await bus.start([A, A, B])  # a rules reload adding a code
    other = harness.another()
    await other.start([B, A])  # another process declaring the same topology

    late = make_event(B)
    await bus.publish([late])
    await other.publish([make_event(A)])

    seen_a, seen_b = Collector(), Collector()
    sub_a = await bus.consume(A, seen_a)
    sub_b = await bus.consume(B, seen_b)
    assert {e.message_id for e in await seen_a.wait_for(2)} >= {waiting.message_id}
    assert [e.message_id for e in await seen_b.wait_for(1)] == [late.message_id]
    await sub_a.cancel()
    await sub_b.cancel()


async def test_invalid_codes_are_refused(harness: Harness) -> None:
    for code in ["", "a.b", "opd#", "*", "with space", "x" * 101]:
        with pytest.raises(ValueError):
            await harness.bus.start([code])


async def test_unroutable_event_raises_and_routable_ones_are_delivered(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    good, stray = make_event(A), make_event("no-such-opd")
    collector = Collector()
    subscription = await bus.consume(A, collector)

    with pytest.raises(BusError) as caught:
        await bus.publish([good, stray])
    assert caught.value.failed == (stray.message_id,)
    assert [e.message_id for e in await collector.wait_for(1)] == [good.message_id]
    await subscription.cancel()


async def test_publish_before_start_raises(harness: Harness) -> None:
    with pytest.raises(BusError):
        await harness.bus.publish([make_event(A)])


async def test_consume_of_undeclared_queue_raises(harness: Harness) -> None:
    await harness.bus.start([A])
    with pytest.raises(BusError):
        await harness.bus.consume(B, Collector())


async def test_failing_handler_is_retried_then_dead_lettered(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    poison, fine, flaky = make_event(A), make_event(A), make_event(A)
    attempts: dict[int, int] = {}
    handled: list[int] = []

    async def handler(event: RoutedEvent) -> None:
        attempts[event.message_id] = attempts.get(event.message_id, 0) + 1
        if event.message_id == poison.message_id:
            raise RuntimeError("cannot handle this one")
        if event.message_id == flaky.message_id and attempts[event.message_id] == 1:
            raise ConnectionError("transient")
        handled.append(event.message_id)

    subscription = await bus.consume(A, handler)
    await bus.publish([poison, fine, flaky])
    dead = await harness.dead(1)
    await asyncio.sleep(0.3)  # nothing more may arrive
    await subscription.cancel()

    assert dead == [poison]
    assert attempts[poison.message_id] == DELIVERY_LIMIT + 1
    assert sorted(handled) == sorted([fine.message_id, flaky.message_id])
    assert attempts[flaky.message_id] == 2


async def test_many_events_are_all_confirmed_and_consumed_exactly_once(harness: Harness) -> None:
    bus = harness.bus
    codes = [A, B, C]
    await bus.start(codes)
    collectors = {code: Collector() for code in codes}
    subscriptions = [await bus.consume(code, collectors[code], prefetch=200) for code in codes]
    cycle = itertools.cycle(codes)
    events = [make_event(next(cycle)) for _ in range(2000)]

    await bus.publish(events[:1000])  # one large batch
    await asyncio.gather(*(bus.publish(events[i : i + 250]) for i in range(1000, 2000, 250)))

    for code in codes:
        expected = sum(1 for e in events if e.queue == code)
        await collectors[code].wait_for(expected, seconds=30)
    await asyncio.sleep(0.3)
    for subscription in subscriptions:
        await subscription.cancel()

    counts: Counter[int] = Counter()
    for collector in collectors.values():
        counts.update(collector.ids())
    assert len(counts) == 2000
    assert set(counts.values()) == {1}
    assert counts.keys() == {e.message_id for e in events}


async def test_prefetch_bounds_concurrent_handlers(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    running = peak = done = 0
    finished = asyncio.Event()

    async def slow(event: RoutedEvent) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done += 1
        if done == 30:
            finished.set()

    subscription = await bus.consume(A, slow, prefetch=5)
    await bus.publish([make_event(A) for _ in range(30)])
    async with asyncio.timeout(15):
        await finished.wait()
    await subscription.cancel()
    assert 1 < peak <= 5


async def test_cancelled_subscription_leaves_events_for_the_next_consumer(
    harness: Harness,
) -> None:
    bus = harness.bus
    await bus.start([A])
    first = Collector()
    subscription = await bus.consume(A, first)
    early = make_event(A)
    await bus.publish([early])
    await first.wait_for(1)
    await subscription.cancel()
    await subscription.cancel()  # idempotent

    later = make_event(A)
    await bus.publish([later])
    await asyncio.sleep(0.2)
    assert [e.message_id for e in first.events] == [early.message_id]

    second = Collector()
    subscription = await bus.consume(A, second)
    assert [e.message_id for e in await second.wait_for(1)] == [later.message_id]
    await subscription.cancel()


async def test_cancel_waits_for_handlers_in_progress(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(event: RoutedEvent) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    subscription = await bus.consume(A, slow)
    await bus.publish([make_event(A)])
    async with asyncio.timeout(10):
        await started.wait()
    await subscription.cancel()
    assert finished.is_set()

    # It was acknowledged: a new consumer gets nothing.
    again = Collector()
    subscription = await bus.consume(A, again)
    await asyncio.sleep(0.3)
    await subscription.cancel()
    assert again.events == []


async def test_handler_overrunning_cancel_is_stopped_and_its_event_redelivered(
    harness: Harness,
) -> None:
    bus = harness.bus
    await bus.start([A])
    started = asyncio.Event()
    stopped: list[str] = []

    async def stuck(event: RoutedEvent) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    subscription = await bus.consume(A, stuck)
    event = make_event(A)
    await bus.publish([event])
    async with asyncio.timeout(10):
        await started.wait()
    async with asyncio.timeout(DRAIN_TIMEOUT + 5):
        await subscription.cancel()
    assert stopped == ["cancelled"]

    again = Collector()
    subscription = await bus.consume(A, again)
    assert [e.message_id for e in await again.wait_for(1)] == [event.message_id]
    await subscription.cancel()


async def test_ping_and_close(harness: Harness) -> None:
    bus = harness.bus
    await bus.start([A])
    assert await bus.ping() is True
    subscription = await bus.consume(A, Collector())
    await bus.close()
    await bus.close()  # idempotent
    assert await bus.ping() is False
    await subscription.cancel()
    with pytest.raises(BusError):
        await bus.publish([make_event(A)])


async def test_empty_publish_is_a_no_op(harness: Harness) -> None:
    await harness.bus.start([A])
    await harness.bus.publish([])
