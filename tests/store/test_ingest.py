"""Store suite (runs on SQLite and PostgreSQL): idempotent ingest, conversations, ordering."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from omnichannel.model import (
    TRIAGE,
    Attachment,
    ConversationStatus,
    InboundMessage,
    Location,
    RouteDecision,
    Sender,
)
from omnichannel.store import outbound, outbox, queries
from omnichannel.store.database import Database
from omnichannel.store.ingest import Ingestor, Stored

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def keyword_router(message: InboundMessage) -> RouteDecision:
    """A tiny stand-in router: 'sampah' goes to dlhp, 'jalan' to dinas-pupr, else triage."""
    text = message.text.lower()
    if "sampah" in text:
        return RouteDecision("dlhp", "sampah", "matched sampah")
    if "jalan" in text:
        return RouteDecision("dinas-pupr", "jalan", "matched jalan")
    return RouteDecision(TRIAGE, None, "no rule matched")


def msg(external_id: str, text: str = "sampah menumpuk", sender: str = "6281234567890",
        sent_at: datetime | None = T0, account: str = "default", **kw: object) -> InboundMessage:
    return InboundMessage(channel="api", account=account, external_id=external_id,
                          sender=Sender(id=sender, name="Ibu Rina"), text=text, sent_at=sent_at,
                          raw={"id": external_id}, **kw)  # type: ignore[arg-type]


async def ingest(db: Database, *messages: InboundMessage) -> list[Stored]:
    async with db.ingest.begin() as conn:
        return await Ingestor(keyword_router, "AMB").ingest(conn, list(messages))


async def count(db: Database, table: str) -> int:
    async with db.api.connect() as conn:
        return int((await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_first_message_opens_a_routed_conversation(db: Database) -> None:
    [stored] = await ingest(db, msg("m1", attachments=(Attachment("image/jpeg", 10, "http://x/a.jpg"),),
                                    location=Location(-3.69, 128.18)))
    assert not stored.duplicate
    assert re.fullmatch(r"AMB-\d{4}-\d{6}", stored.tracking_number)
    assert stored.tracking_number.endswith(f"{stored.conversation_id:06d}")
    assert stored.event is not None and stored.event.queue == "dlhp"
    assert stored.event.rule == "sampah"
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, stored.conversation_id)
    assert conv is not None
    assert conv["queue"] == "dlhp" and conv["status"] == "new"
    assert conv["tracking_number"] == stored.tracking_number
    [m] = conv["messages"]
    assert m["text"] == "sampah menumpuk" and m["direction"] == "inbound"
    assert m["attachments"][0]["url"] == "http://x/a.jpg"
    assert m["location"]["latitude"] == pytest.approx(-3.69)
    assert datetime.fromisoformat(m["sent_at"]) == T0


async def test_repeated_delivery_is_stored_once(db: Database) -> None:
    first, again_in_batch = await ingest(db, msg("dup"), msg("dup"))
    [again_later] = await ingest(db, msg("dup", text="changed text"))
    assert not first.duplicate
    assert again_in_batch.duplicate and again_later.duplicate
    assert again_later.message_id == first.message_id == again_in_batch.message_id
    assert again_later.event is None
    assert await count(db, "message") == 1


async def test_same_external_id_on_other_account_is_another_message(db: Database) -> None:
    a, b = await ingest(db, msg("same", account="form-a"), msg("same", account="form-b"))
    assert a.message_id != b.message_id and not b.duplicate


async def test_messages_join_the_active_conversation_until_it_is_resolved(db: Database) -> None:
    [a] = await ingest(db, msg("a"))
    [b] = await ingest(db, msg("b", sent_at=T0 + timedelta(minutes=1)))
    assert a.conversation_id == b.conversation_id
    async with db.api.begin() as conn:
        assert await queries.set_status(conn, a.conversation_id, ConversationStatus.RESOLVED)
    [c] = await ingest(db, msg("c", sent_at=T0 + timedelta(minutes=2)))
    assert c.conversation_id != a.conversation_id
    assert c.tracking_number != a.tracking_number
    # Reopening the old one now would give the contact two active conversations.
    async with db.api.begin() as conn:
        with pytest.raises(queries.ConflictError):
            await queries.set_status(conn, a.conversation_id, ConversationStatus.OPEN)


async def test_database_refuses_a_second_active_conversation(db: Database) -> None:
    [a] = await ingest(db, msg("a"))
    with pytest.raises(sa.exc.IntegrityError):
        async with db.api.begin() as conn:
            await conn.execute(sa.text(
                "INSERT INTO conversation (contact_id, channel, account, status, created_at,"
                " updated_at, last_message_at) SELECT contact_id, channel, account, 'open',"
                " created_at, updated_at, last_message_at FROM conversation WHERE id = :id"
            ), {"id": a.conversation_id})


async def test_concurrent_workers_never_open_two_conversations(db: Database) -> None:
    # Several workers, each in its own transaction, get one message of the same new contact.
    results = await asyncio.gather(*(
        ingest(db, msg(f"race-{i}", sent_at=T0 + timedelta(milliseconds=200 * i)))
        for i in range(6)
    ))
    conversation_ids = {r[0].conversation_id for r in results}
    assert len(conversation_ids) == 1
    assert await count(db, "conversation") == 1
    assert await count(db, "contact") == 1
    assert await count(db, "message") == 6


async def test_thread_is_in_the_citizens_order(db: Database) -> None:
    later = msg("later", text="jalan juga rusak", sent_at=T0 + timedelta(seconds=30))
    earlier = msg("earlier", text="sampah menumpuk", sent_at=T0)
    [x] = await ingest(db, later)
    [y] = await ingest(db, earlier)
    assert x.conversation_id == y.conversation_id
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, x.conversation_id)
    assert conv is not None
    assert [m["external_id"] for m in conv["messages"]] == ["earlier", "later"]


async def test_greeting_waits_in_triage_then_content_routes_the_conversation(
    db: Database,
) -> None:
    [hello] = await ingest(db, msg("h", text="halo min"))
    assert hello.event is not None and hello.event.queue == TRIAGE
    [content] = await ingest(db, msg("c", text="jalan di depan rumah rusak",
                                     sent_at=T0 + timedelta(seconds=5)))
    assert content.conversation_id == hello.conversation_id
    assert content.event is not None and content.event.queue == "dinas-pupr"
    [more] = await ingest(db, msg("s", text="sampah juga", sent_at=T0 + timedelta(seconds=9)))
    # Once routed, the conversation stays with its OPD; later messages follow it there.
    assert more.event is not None and more.event.queue == "dinas-pupr"
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, hello.conversation_id)
    assert conv is not None and conv["queue"] == "dinas-pupr" and conv["rule"] == "jalan"


async def test_contact_is_shared_across_accounts_of_one_channel(db: Database) -> None:
    a, b = await ingest(db, msg("x", account="one"), msg("y", account="two"))
    assert a.conversation_id != b.conversation_id
    assert a.event is not None and b.event is not None
    assert a.event.contact_id == b.event.contact_id
    assert await count(db, "contact") == 1


async def test_nul_bytes_are_removed_from_text(db: Database) -> None:
    [s] = await ingest(db, msg("nul", text="sampah\x00 di got"))
    assert s.event is not None and s.event.text == "sampah di got"


async def test_outbox_lists_unpublished_until_marked(db: Database) -> None:
    stored = await ingest(db, msg("o1"), msg("o2", sender="other"))
    async with db.api.connect() as conn:
        pending = await outbox.unpublished(conn, 0, 100)
    assert [e.message_id for e in pending] == sorted(s.message_id for s in stored)
    assert pending[0] == next(s.event for s in stored if s.message_id == pending[0].message_id)
    async with db.ingest.begin() as conn:
        await outbox.mark_published(conn, [pending[0].message_id])
    async with db.api.connect() as conn:
        rest = await outbox.unpublished(conn, 0, 100)
    assert [e.message_id for e in rest] == [pending[1].message_id]


async def test_large_batch_is_stored_in_one_transaction(db: Database) -> None:
    batch = [msg(f"b{i}", sender=f"citizen-{i % 50}", sent_at=T0 + timedelta(seconds=i))
             for i in range(300)]
    stored = await ingest(db, *batch)
    assert len({s.message_id for s in stored}) == 300
    assert len({s.conversation_id for s in stored}) == 50
    assert await count(db, "contact") == 50


async def test_one_citizen_on_several_channels_is_one_contact(db: Database) -> None:
    phone = "+6281234567890"

    def on(channel: str, sender: str, external_id: str) -> InboundMessage:
        return InboundMessage(channel=channel, account="default", external_id=external_id,
                              sender=Sender(id=sender, phone=phone), text="sampah",
                              sent_at=T0)

    [web] = await ingest(db, on("api", "form-user-9", "w1"))
    # Two more channels at once, in one batch, for a number the store already knows...
    wa, sms = await ingest(db, on("whatsapp", "6281234567890", "wa1"),
                           on("sms", phone, "sms1"))
    assert web.event and wa.event and sms.event
    assert web.event.contact_id == wa.event.contact_id == sms.event.contact_id
    # ...each channel keeps its own conversation, replies leave where the citizen wrote.
    assert len({web.conversation_id, wa.conversation_id, sms.conversation_id}) == 3
    assert await count(db, "contact") == 1
    assert await count(db, "contact_identity") == 3


async def test_new_phone_on_two_channels_in_one_batch_makes_one_contact(db: Database) -> None:
    def on(channel: str, external_id: str) -> InboundMessage:
        return InboundMessage(channel=channel, account="default", external_id=external_id,
                              sender=Sender(id=f"{channel}-id", phone="+6285200000001"),
                              text="jalan rusak", sent_at=T0)

    a, b = await ingest(db, on("whatsapp", "x1"), on("sms", "x2"))
    assert a.event and b.event and a.event.contact_id == b.event.contact_id
    assert await count(db, "contact") == 1


async def test_one_e_mail_address_by_mail_and_in_the_web_chat_is_one_contact(
    db: Database,
) -> None:
    def on(channel: str, sender: str, external_id: str) -> InboundMessage:
        return InboundMessage(channel=channel, account="lapor", external_id=external_id,
                              sender=Sender(id=sender, email="rina@example.id"),
                              text="sampah", sent_at=T0)

    [mail] = await ingest(db, on("email", "rina@example.id", "<m1@example.id>"))
    [chat] = await ingest(db, on("webchat", "visitor-7f3a", "visitor-7f3a:c1"))
    # A phone the store already knows wins over the address: that contact takes the sender.
    phone = "+6281234567891"
    [other] = await ingest(db, InboundMessage(
        channel="api", account="lapor", external_id="p1", sender=Sender(id="form-9", phone=phone),
        text="sampah", sent_at=T0))
    [both] = await ingest(db, InboundMessage(
        channel="sms", account="lapor", external_id="s1",
        sender=Sender(id=phone, phone=phone, email="rina@example.id"), text="sampah", sent_at=T0))
    assert mail.event and chat.event and other.event and both.event
    assert mail.event.contact_id == chat.event.contact_id != other.event.contact_id
    assert both.event.contact_id == other.event.contact_id
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, mail.conversation_id)
    assert conv is not None and conv["contact_email"] == "rina@example.id"


async def test_an_edit_replaces_the_text_and_keeps_the_earlier_version(db: Database) -> None:
    [original] = await ingest(db, msg("e1", text="sampah di pasar"))
    t1, t0 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=2)
    [edit] = await ingest(db, msg("e1", text="sampah di pasar Mardika", edited_at=t1))
    [again] = await ingest(db, msg("e1", text="sampah di pasar Mardika", edited_at=t1))
    [stale] = await ingest(db, msg("e1", text="sampah", edited_at=t0))  # arrives late
    assert original.message_id == edit.message_id == again.message_id == stale.message_id
    assert await count(db, "message") == 1
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, original.conversation_id)
    assert conv is not None
    [m] = conv["messages"]
    assert m["text"] == "sampah di pasar Mardika"
    assert datetime.fromisoformat(m["edited_at"]) == t1
    assert [e["text"] for e in m["edits"]] == ["sampah di pasar"]


async def test_an_edit_of_a_message_never_seen_is_stored_as_that_message(db: Database) -> None:
    [s] = await ingest(db, msg("unseen", text="jalan rusak", edited_at=T0))
    assert not s.duplicate and s.event is not None and s.event.text == "jalan rusak"


async def test_a_new_conversation_gets_one_queued_acknowledgement(db: Database) -> None:
    def acknowledge(message: InboundMessage, tracking: str, queue: str) -> str | None:
        return None if message.channel == "api-inline" else f"{tracking} -> {queue}"

    async def run(*messages: InboundMessage) -> list[Stored]:
        async with db.ingest.begin() as conn:
            return await Ingestor(keyword_router, "AMB", acknowledge).ingest(conn, messages)

    first, second = await run(msg("a1"), msg("a2", sent_at=T0 + timedelta(seconds=1)))
    [later] = await run(msg("a3", sent_at=T0 + timedelta(seconds=2)))
    assert first.acknowledgement_id is not None
    assert second.acknowledgement_id is None and later.acknowledgement_id is None
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, first.conversation_id)
        queued = await outbound.unsent(conn)
    assert conv is not None
    [ack] = [m for m in conv["messages"] if m["direction"] == "outbound"]
    assert ack["id"] == first.acknowledgement_id
    assert ack["text"] == f"{first.tracking_number} -> dlhp"
    assert ack["delivery_status"] == "queued" and ack["author"] == "omnichannel"
    assert queued == [(ack["id"], "api")]  # resumed by delivery after a restart
    [inline] = await run(InboundMessage(channel="api-inline", account="x", external_id="i1",
                                        sender=Sender(id="z"), text="jalan rusak"))
    assert inline.acknowledgement_id is None


async def test_a_message_naming_its_resolved_conversation_reopens_it(db: Database) -> None:
    [a] = await ingest(db, msg("a"))
    async with db.api.begin() as conn:
        assert await queries.set_status(conn, a.conversation_id, ConversationStatus.RESOLVED)
    [reply] = await ingest(db, msg("reply", text="masih belum diangkut",
                                   sent_at=T0 + timedelta(days=1),
                                   thread_hint=a.tracking_number))
    assert (reply.conversation_id, reply.tracking_number) == (a.conversation_id,
                                                              a.tracking_number)
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, a.conversation_id)
    assert conv is not None and conv["status"] == "open"
    assert conv["queue"] == "dlhp"
    assert [m["text"] for m in conv["messages"]] == ["sampah menumpuk", "masih belum diangkut"]
    assert await count(db, "conversation") == 1


async def test_a_hint_joins_the_active_conversation_rather_than_an_ended_one(
    db: Database
) -> None:
    [old] = await ingest(db, msg("old"))
    async with db.api.begin() as conn:
        assert await queries.set_status(conn, old.conversation_id, ConversationStatus.CLOSED)
    [current] = await ingest(db, msg("new", text="jalan rusak", sent_at=T0 + timedelta(hours=1)))
    assert current.conversation_id != old.conversation_id
    # Reopening the old one would break "one active conversation per contact and account".
    [reply] = await ingest(db, msg("reply", sent_at=T0 + timedelta(hours=2),
                                   thread_hint=old.tracking_number))
    assert reply.conversation_id == current.conversation_id
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, old.conversation_id)
    assert conv is not None and conv["status"] == "closed"


async def test_a_hint_naming_another_contacts_conversation_is_ignored(db: Database) -> None:
    [theirs] = await ingest(db, msg("theirs", sender="6281111111111"))
    async with db.api.begin() as conn:
        assert await queries.set_status(conn, theirs.conversation_id,
                                        ConversationStatus.RESOLVED)
    [mine] = await ingest(db, msg("mine", sender="6282222222222",
                                  thread_hint=theirs.tracking_number))
    [other_account] = await ingest(db, msg("elsewhere", sender="6281111111111",
                                           account="other", thread_hint=theirs.tracking_number))
    assert mine.conversation_id != theirs.conversation_id
    assert other_account.conversation_id != theirs.conversation_id
    async with db.api.connect() as conn:
        conv = await queries.get_conversation(conn, theirs.conversation_id)
    assert conv is not None and conv["status"] == "resolved"
    assert len(conv["messages"]) == 1


async def test_messages_of_one_batch_naming_a_resolved_conversation_all_join_it(
    db: Database
) -> None:
    [a] = await ingest(db, msg("a"))
    async with db.api.begin() as conn:
        assert await queries.set_status(conn, a.conversation_id, ConversationStatus.RESOLVED)
    stored = await ingest(db, msg("r1", sent_at=T0 + timedelta(days=1)),
                          msg("r2", sent_at=T0 + timedelta(days=1, minutes=1),
                              thread_hint=a.tracking_number))
    assert {s.conversation_id for s in stored} == {a.conversation_id}
    assert await count(db, "conversation") == 1
