"""The outbox relay: nothing stored is lost when the bus fails, overflows or the engine restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlalchemy as sa

from omnichannel.bus import BusError, MemoryBus
from omnichannel.model import InboundMessage, RouteDecision, RoutedEvent, Sender
from omnichannel.pipeline import IngestPipeline, Publisher
from omnichannel.store.database import Database, create_database
from omnichannel.store.ingest import Ingestor


class FlakyBus(MemoryBus):
    """The in-process bus, refusing every publish while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    async def publish(self, events: Sequence[RoutedEvent]) -> None:
        if self.down:
            self.refused += 1
            raise BusError("broker unreachable", [e.message_id for e in events])
        await super().publish(events)


def message(i: int) -> InboundMessage:
    return InboundMessage(channel="api", account="default", external_id=f"p{i}",
                          sender=Sender(id=f"citizen-{i}"), text="sampah menumpuk")


async def received(bus: MemoryBus, n: int) -> set[int]:
    seen: set[int] = set()
    done = asyncio.Event()

    async def handler(event: RoutedEvent) -> None:
        seen.add(event.message_id)
        if len(seen) >= n:
            done.set()

    subscription = await bus.consume("dlhp", handler)
    await asyncio.wait_for(done.wait(), 10)
    await subscription.cancel()
    return seen


async def unpublished(db: Database) -> int:
    async with db.api.connect() as conn:
        return int((await conn.execute(sa.text(
            "SELECT count(*) FROM message WHERE published_at IS NULL"))).scalar_one())


def engine_parts(db: Database, bus: MemoryBus, **publisher: int) -> tuple[
        IngestPipeline, Publisher]:
    relay = Publisher(db, bus, retry_max_s=0.05, **publisher)
    ingest = IngestPipeline(db, Ingestor(lambda m: RouteDecision("dlhp", "r", "why"), "AMB"),
                            relay, batch_size=8, workers=1)
    return ingest, relay


async def test_events_wait_out_a_bus_outage_beyond_the_backlog(db: Database) -> None:
    bus = FlakyBus()
    await bus.start(["dlhp"])
    ingest, relay = engine_parts(db, bus, max_backlog=5, batch_size=3)
    await relay.start()
    await ingest.start()
    bus.down = True
    stored = await asyncio.gather(*(ingest.submit(message(i)) for i in range(30)))
    await asyncio.sleep(0.2)
    assert bus.refused > 0
    assert await unpublished(db) == 30
    bus.down = False
    seen = await received(bus, 30)
    await asyncio.wait_for(relay.drain(), 10)
    assert {s.message_id for s in stored} <= seen
    assert await unpublished(db) == 0
    await ingest.stop()
    await relay.stop()


async def test_a_restarted_relay_publishes_what_was_stored_before(db: Database) -> None:
    bus = FlakyBus()
    await bus.start(["dlhp"])
    ingest, relay = engine_parts(db, bus)
    await relay.start()
    await ingest.start()
    bus.down = True
    stored = await asyncio.gather(*(ingest.submit(message(i)) for i in range(12)))
    await ingest.stop()
    await relay.stop(grace_s=0.1)  # the "crash": nothing confirmed
    assert await unpublished(db) == 12

    bus.down = False
    _, fresh = engine_parts(db, bus)
    await fresh.start()
    seen = await received(bus, 12)
    await asyncio.wait_for(fresh.drain(), 10)
    assert {s.message_id for s in stored} <= seen
    assert await unpublished(db) == 0
    await fresh.stop()


async def test_events_of_a_queue_gone_from_the_rules_are_still_published(
    database_url: str,
) -> None:
    from omnichannel.app import Engine
    from omnichannel.router import load_rules
    from omnichannel.settings import Settings
    from tests.conftest import REPO

    db = create_database(database_url)
    async with db.write() as conn:
        await Ingestor(lambda m: RouteDecision("retired-opd", "old", "why"), "AMB").ingest(
            conn, [message(1), message(2)])
    await db.dispose()
    rules = load_rules(REPO / "config" / "routing.yaml")
    assert "retired-opd" not in rules.opds
    engine = Engine(Settings(database_url=database_url, broker_url=None), rules)
    await engine.start()
    try:
        await asyncio.wait_for(engine.publisher.drain(), 10)
        assert await unpublished(engine.db) == 0
    finally:
        await engine.stop()
