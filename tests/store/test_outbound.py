"""Outbound replies in the store: claims, order within a conversation, receipts and retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from omnichannel.model import (
    ConversationStatus,
    DeliveryStatus,
    InboundMessage,
    RouteDecision,
    Sender,
    StatusUpdate,
)
from omnichannel.store import outbound, queries
from omnichannel.store.database import Database
from omnichannel.store.ingest import Ingestor
from omnichannel.store.tables import MESSAGE

LEASE = timedelta(seconds=30)
T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def _router(message: InboundMessage) -> RouteDecision:
    return RouteDecision(queue="dlhp", rule="test", reason="test")


async def conversation(db: Database) -> int:
    """A conversation opened by one citizen message on the `wa` channel."""
    async with db.write() as conn:
        [stored] = await Ingestor(_router, "AMB").ingest(conn, [InboundMessage(
            channel="wa", account="main", external_id="in-1", sender=Sender(id="6281"),
            text="Sampah menumpuk", sent_at=T0,
        )])
    return stored.conversation_id


async def reply(db: Database, conversation_id: int, text: str) -> int:
    async with db.write(db.api) as conn:
        row = await outbound.add_outbound(conn, conversation_id, channel="wa", account="main",
                                          text=text, author="agent")
    message_id: int = row["id"]
    return message_id


async def claim(db: Database, message_id: int,
                lease: timedelta = LEASE) -> dict[str, Any] | None:
    async with db.write(db.api) as conn:
        return await outbound.claim(conn, message_id, lease)


async def sent(db: Database, message_id: int, external_id: str | None = None) -> None:
    async with db.write(db.api) as conn:
        await outbound.record_delivery(conn, message_id, status=DeliveryStatus.SENT,
                                       attempts=1, external_id=external_id)


async def message(db: Database, message_id: int) -> dict[str, Any]:
    async with db.api.connect() as conn:
        found = await outbound.outbound_message(conn, message_id)
    assert found is not None
    return found


async def test_only_one_of_many_racing_workers_claims_a_reply(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Petugas menuju lokasi")
    claims = await asyncio.gather(*(claim(db, message_id) for _ in range(8)))
    assert sum(c is not None for c in claims) == 1
    async with db.api.connect() as conn:
        # Held by a live worker: not stalled, so the sweep leaves it alone.
        assert await outbound.unsent(conn, stalled_after=timedelta(0)) == []
        assert await outbound.unsent(conn) == [(message_id, "wa")]


async def test_a_claim_whose_worker_died_lapses(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    assert await claim(db, message_id, timedelta(seconds=-1)) is not None
    async with db.api.connect() as conn:
        # The lease is over: the worker died mid-send, and the sweep offers the reply again.
        assert await outbound.unsent(conn, stalled_after=timedelta(hours=1)) == [
            (message_id, "wa")]
    assert await claim(db, message_id) is not None
    assert await claim(db, message_id) is None
    await sent(db, message_id)
    async with db.api.connect() as conn:
        assert await outbound.unsent(conn) == []


async def test_replies_of_a_conversation_are_claimed_in_order(db: Database) -> None:
    conv = await conversation(db)
    first, second = await reply(db, conv, "satu"), await reply(db, conv, "dua")
    assert await claim(db, second) is None
    async with db.api.connect() as conn:
        assert await outbound.next_unsent(conn, conv) == (first, "wa")
        assert await outbound.unsent(conn) == [(first, "wa")]  # one per conversation
    assert await claim(db, first) is not None
    async with db.write(db.api) as conn:
        await outbound.release(conn, first)  # its worker stops: back to the queue
    assert await claim(db, second) is None
    assert await claim(db, first) is not None
    await sent(db, first)
    async with db.api.connect() as conn:
        assert await outbound.next_unsent(conn, conv) == (second, "wa")
    assert await claim(db, second) is not None


async def test_receipts_advance_a_reply_and_never_move_it_back(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    await claim(db, message_id)
    await sent(db, message_id, external_id="wamid.1")

    def receipt(status: DeliveryStatus, error: str | None = None) -> StatusUpdate:
        return StatusUpdate(channel="wa", account="main", external_id="wamid.1",
                            status=status, at=T0, error=error)

    async with db.write() as conn:
        assert await outbound.record_receipts(conn, [receipt(DeliveryStatus.READ)]) == 1
        # Out of order, and repeated: a late `delivered` and `sent` change nothing.
        late = [receipt(DeliveryStatus.DELIVERED), receipt(DeliveryStatus.SENT),
                receipt(DeliveryStatus.READ)]
        assert await outbound.record_receipts(conn, late) == 0
    assert (await message(db, message_id))["delivery_status"] == "read"


async def test_a_failed_receipt_shows_the_providers_error(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    await sent(db, message_id, external_id="SM1")
    async with db.write() as conn:
        await outbound.record_receipts(conn, [StatusUpdate(
            channel="wa", account="main", external_id="SM1", status=DeliveryStatus.FAILED,
            at=T0, error="30003: Unreachable destination handset")])
    found = await message(db, message_id)
    assert found["delivery_status"] == "failed"
    assert found["delivery_error"] == "30003: Unreachable destination handset"


async def test_a_receipt_that_overtakes_the_send_is_applied_when_the_send_is_recorded(
    db: Database,
) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    await claim(db, message_id)
    async with db.write() as conn:
        early = StatusUpdate(channel="wa", account="main", external_id="wamid.2",
                             status=DeliveryStatus.DELIVERED, at=T0)
        assert await outbound.record_receipts(conn, [early]) == 0
    await sent(db, message_id, external_id="wamid.2")
    assert (await message(db, message_id))["delivery_status"] == "delivered"


async def test_a_receipt_committing_while_the_send_is_recorded_is_not_lost(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    await claim(db, message_id)
    async with db.write() as conn:
        early = StatusUpdate(channel="wa", account="main", external_id="wamid.3",
                             status=DeliveryStatus.DELIVERED, at=T0)
        await outbound.record_receipts(conn, [early])
        # The send's result is recorded while the receipt's transaction is still open: it
        # must not read the receipts before they are committed and then miss them.
        recording = asyncio.create_task(sent(db, message_id, external_id="wamid.3"))
        await asyncio.sleep(0.3)
    await recording
    assert (await message(db, message_id))["delivery_status"] == "delivered"


async def test_receipts_of_another_account_or_of_inbound_messages_change_nothing(
    db: Database,
) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    await sent(db, message_id, external_id="x-1")
    async with db.write() as conn:
        other = [StatusUpdate(channel="wa", account="second-number", external_id="x-1",
                              status=DeliveryStatus.READ, at=T0),
                 StatusUpdate(channel="wa", account="main", external_id="in-1",
                              status=DeliveryStatus.READ, at=T0)]
        assert await outbound.record_receipts(conn, other) == 0
    assert (await message(db, message_id))["delivery_status"] == "sent"


async def test_only_a_failed_reply_can_be_retried(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    async with db.write(db.api) as conn:
        with pytest.raises(outbound.RetryRefused, match="queued"):
            await outbound.retry(conn, message_id)
        await outbound.record_delivery(conn, message_id, status=DeliveryStatus.FAILED,
                                       attempts=5, error="HTTP 500")
        assert await outbound.retry(conn, message_id) is True
        assert await outbound.retry(conn, 10**9) is False
        with pytest.raises(outbound.RetryRefused, match="inbound"):
            await outbound.retry(conn, 1)
    found = await message(db, message_id)
    assert (found["delivery_status"], found["delivery_attempts"]) == ("queued", 0)
    async with db.api.connect() as conn:
        assert await outbound.unsent(conn) == [(message_id, "wa")]
        # Just queued again by the agent: not stalled.
        assert await outbound.unsent(conn, stalled_after=timedelta(seconds=30)) == []
        target = await queries.conversation_channel(conn, found["conversation_id"])
    assert target.last_inbound_at is not None


async def test_a_thread_holds_both_directions_of_every_conversation_of_an_address(
    db: Database,
) -> None:
    conv = await conversation(db)
    reply_id = await reply(db, conv, "Petugas menuju lokasi")
    async with db.write(db.api) as conn:
        await queries.set_status(conn, conv, ConversationStatus.RESOLVED)
    async with db.write() as conn:
        [later] = await Ingestor(_router, "AMB").ingest(conn, [InboundMessage(
            channel="wa", account="main", external_id="in-2", sender=Sender(id="6281"),
            text="Sampah datang lagi", sent_at=T0 + timedelta(days=2))])
    assert later.conversation_id != conv
    async with db.api.connect() as conn:
        whole = await queries.thread(conn, channel="wa", account="main", address="6281")
        since = await queries.thread(conn, channel="wa", account="main", address="6281",
                                     after_id=reply_id)
        other = await queries.thread(conn, channel="wa", account="second", address="6281")
    assert [(m["direction"], m["text"]) for m in whole] == [
        ("inbound", "Sampah menumpuk"), ("outbound", "Petugas menuju lokasi"),
        ("inbound", "Sampah datang lagi")]
    assert [m["text"] for m in since] == ["Sampah datang lagi"]
    assert other == []


async def test_a_queued_reply_untouched_for_long_is_offered_again(db: Database) -> None:
    message_id = await reply(db, await conversation(db), "Halo")
    async with db.api.connect() as conn:
        assert await outbound.unsent(conn, stalled_after=timedelta(minutes=1)) == []
    async with db.write(db.api) as conn:
        await conn.execute(sa.update(MESSAGE).where(MESSAGE.c.id == message_id).values(
            delivery_updated_at=datetime.now(UTC) - timedelta(minutes=2)))
    async with db.api.connect() as conn:
        assert await outbound.unsent(conn, stalled_after=timedelta(minutes=1)) == [
            (message_id, "wa")]
