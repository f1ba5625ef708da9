"""Outbound messages: agents' replies queued, claimed by a sender, and their delivery states."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from omnichannel.model import ConversationStatus, DeliveryStatus, Direction, StatusUpdate, Template
from omnichannel.store.ingest import insert_for
from omnichannel.store.queries import json_row
from omnichannel.store.tables import CONVERSATION, DELIVERY_RECEIPT, MESSAGE, utcnow

_conversation = CONVERSATION
_message = MESSAGE
_receipt = DELIVERY_RECEIPT

#: How far along a delivery is; a receipt never moves a message back (providers send them
#: out of order, and `delivered` may never come when a message is read at once).
_RANK = {
    DeliveryStatus.QUEUED: 0, DeliveryStatus.SENDING: 0, DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2, DeliveryStatus.READ: 3, DeliveryStatus.FAILED: 3,
}
_UNSENT = (DeliveryStatus.QUEUED.value, DeliveryStatus.SENDING.value)
_rank_of_current = sa.case(
    *((_message.c.delivery_status == s.value, r) for s, r in _RANK.items()), else_=0
)


async def add_outbound(
    conn: AsyncConnection, conversation_id: int, *, channel: str, account: str, text: str,
    author: str, template: Template | None = None,
    attachments: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Store an agent's reply as queued for delivery; a new conversation becomes open."""
    now = utcnow()
    row = (
        await conn.execute(
            sa.insert(_message)
            .values(
                conversation_id=conversation_id, direction=Direction.OUTBOUND.value,
                channel=channel, account=account, author=author, text=text,
                attachments=list(attachments),
                raw={"template": template.to_json()} if template else None,
                sent_at=now, received_at=now, delivery_status=DeliveryStatus.QUEUED.value,
                delivery_updated_at=now,
            )
            .returning(_message)
        )
    ).one()
    await conn.execute(
        sa.update(_conversation)
        .where(_conversation.c.id == conversation_id)
        .values(
            updated_at=now,
            status=sa.case(
                (_conversation.c.status == ConversationStatus.NEW.value,
                 ConversationStatus.OPEN.value),
                else_=_conversation.c.status,
            ),
        )
    )
    return json_row(row._mapping, frozenset({"raw", "delivery_lease_until"}))


def _claim_statement() -> sa.Update:
    """The claim as one conditional UPDATE, built once (an alias is costly to build per call)."""
    m = _message.c
    earlier = _message.alias("earlier")
    now = sa.bindparam("now", type_=MESSAGE.c.delivery_updated_at.type)
    return (
        sa.update(_message)
        .where(
            m.id == sa.bindparam("message_id"), m.direction == Direction.OUTBOUND.value,
            sa.or_(m.delivery_status == DeliveryStatus.QUEUED.value,
                   sa.and_(m.delivery_status == DeliveryStatus.SENDING.value,
                           m.delivery_lease_until < now)),
            # An earlier reply of the conversation still unsent goes first.
            ~sa.exists().where(
                earlier.c.conversation_id == m.conversation_id, earlier.c.id < m.id,
                earlier.c.direction == Direction.OUTBOUND.value,
                earlier.c.delivery_status.in_(_UNSENT),
            ),
        )
        .values(delivery_status=DeliveryStatus.SENDING.value,
                delivery_lease_until=sa.bindparam("lease_until"), delivery_updated_at=now)
        .returning(m.id, m.conversation_id, m.channel, m.account, m.text, m.raw,
                   m.attachments, m.delivery_attempts, m.author)
    )


_CLAIM = _claim_statement()


async def claim(conn: AsyncConnection, message_id: int, lease: timedelta) -> dict[str, Any] | None:
    """Take a queued message (or one whose sender died mid-send) for sending; None if taken.

    Only one sender wins, however many workers and redeliveries race for the message. A reply
    also waits while an earlier one of its conversation is unsent, so the citizen reads them
    in the order they were written.
    """
    now = utcnow()
    row = (await conn.execute(
        _CLAIM, {"message_id": message_id, "now": now, "lease_until": now + lease}
    )).first()
    return dict(row._mapping) if row else None


async def first_unsent_of_conversation(conn: AsyncConnection, message_id: int) -> int | None:
    """The earliest unsent reply of the conversation `message_id` belongs to, if any."""
    m = _message.c
    mine = _message.alias("mine")
    first: int | None = (await conn.execute(
        sa.select(sa.func.min(m.id))
        .where(m.conversation_id == sa.select(mine.c.conversation_id)
               .where(mine.c.id == message_id).scalar_subquery(),
               m.direction == Direction.OUTBOUND.value, m.delivery_status.in_(_UNSENT))
    )).scalar()
    return first


async def next_unsent(conn: AsyncConnection, conversation_id: int) -> tuple[int, str] | None:
    """Id and channel of a conversation's earliest reply not yet sent, if any."""
    m = _message.c
    row = (await conn.execute(
        sa.select(m.id, m.channel)
        .where(m.conversation_id == conversation_id, m.direction == Direction.OUTBOUND.value,
               m.delivery_status.in_(_UNSENT))
        .order_by(m.id).limit(1)
    )).first()
    return (row.id, row.channel) if row else None


async def release(conn: AsyncConnection, message_id: int) -> None:
    """Hand a claimed message back to the queue (its sender is stopping)."""
    await conn.execute(
        sa.update(_message)
        .where(_message.c.id == message_id,
               _message.c.delivery_status == DeliveryStatus.SENDING.value)
        .values(delivery_status=DeliveryStatus.QUEUED.value, delivery_lease_until=None)
    )


async def extend(conn: AsyncConnection, message_id: int, *, attempts: int, error: str,
                 lease: timedelta) -> None:
    """Record a failed attempt that will be retried, keeping the message claimed."""
    now = utcnow()
    await conn.execute(
        sa.update(_message).where(_message.c.id == message_id)
        .values(delivery_attempts=attempts, delivery_error=error,
                delivery_lease_until=now + lease, delivery_updated_at=now)
    )


async def record_delivery(
    conn: AsyncConnection, message_id: int, *, status: DeliveryStatus, attempts: int,
    error: str | None = None, external_id: str | None = None,
) -> None:
    """Record the outcome of sending an outbound message, and receipts that came before it."""
    values: dict[str, Any] = {
        "delivery_status": status.value, "delivery_attempts": attempts, "delivery_error": error,
        "delivery_lease_until": None, "delivery_updated_at": utcnow(),
    }
    if external_id is not None:
        values["external_id"] = external_id
        await _serialise_provider_ids(conn, [external_id])
    row = (
        await conn.execute(
            sa.update(_message).where(_message.c.id == message_id).values(**values)
            .returning(_message.c.channel, _message.c.account)
        )
    ).first()
    if external_id is None or row is None:
        return
    # A provider's receipt can arrive before its answer to the send: apply the ones waiting.
    rows = await conn.execute(
        sa.select(_receipt.c.status, _receipt.c.error, _receipt.c.occurred_at).where(
            _receipt.c.external_id == external_id, _receipt.c.channel == row.channel,
            _receipt.c.account == row.account,
        )
    )
    waiting = [StatusUpdate(channel=row.channel, account=row.account, external_id=external_id,
                            status=DeliveryStatus(r.status), at=r.occurred_at, error=r.error)
               for r in rows]
    for update in sorted(waiting, key=lambda u: _RANK[u.status]):
        await _advance(conn, update)


async def record_receipts(conn: AsyncConnection, updates: Sequence[StatusUpdate]) -> int:
    """Keep providers' receipts and advance their messages' states; returns messages advanced."""
    if not updates:
        return 0
    await _serialise_provider_ids(conn, [u.external_id for u in updates])
    now = utcnow()
    await conn.execute(
        insert_for(conn, _receipt).on_conflict_do_nothing(),
        [{"channel": u.channel, "account": u.account, "external_id": u.external_id,
          "status": u.status.value, "error": u.error, "occurred_at": u.at, "received_at": now}
         for u in updates],
    )
    advanced = 0
    for update in updates:
        advanced += await _advance(conn, update)
    return advanced


async def _serialise_provider_ids(conn: AsyncConnection, external_ids: Sequence[str]) -> None:
    """On PostgreSQL, one transaction at a time records a send or receipts of a provider id.

    Under READ COMMITTED a receipt committed while a send's result is being recorded would be
    seen by neither: the receipt finds no message with the id yet, and the send read the
    waiting receipts before it committed. A transaction-scoped advisory lock per id orders
    them (taken in sorted order, so two transactions cannot wait for each other); SQLite has
    one writer at a time already.
    """
    if conn.dialect.name != "postgresql":
        return
    for external_id in sorted(set(external_ids)):
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
            sa.func.hashtextextended(external_id, 0))))


async def _advance(conn: AsyncConnection, update: StatusUpdate) -> int:
    m = _message.c
    values: dict[str, Any] = {"delivery_status": update.status.value,
                              "delivery_updated_at": utcnow()}
    if update.status is DeliveryStatus.FAILED:
        values["delivery_error"] = update.error or "the provider reports the message failed"
    result = await conn.execute(
        sa.update(_message)
        .where(m.external_id == update.external_id, m.channel == update.channel,
               m.account == update.account, m.direction == Direction.OUTBOUND.value,
               _rank_of_current < _RANK[update.status])
        .values(**values)
    )
    return int(result.rowcount)


class RetryRefused(Exception):
    """Only a failed outbound message can be sent again."""


async def retry(conn: AsyncConnection, message_id: int) -> bool:
    """Queue a failed outbound message again; False when it does not exist."""
    m = _message.c
    row = (await conn.execute(
        sa.select(m.direction, m.delivery_status).where(m.id == message_id)
    )).first()
    if row is None:
        return False
    if row.direction != Direction.OUTBOUND.value or row.delivery_status != DeliveryStatus.FAILED:
        raise RetryRefused(f"message {message_id} is {row.delivery_status or row.direction}; "
                           "only a failed reply can be retried")
    await conn.execute(
        sa.update(_message).where(m.id == message_id)
        .values(delivery_status=DeliveryStatus.QUEUED.value, delivery_attempts=0,
                delivery_updated_at=utcnow())
    )
    return True


async def unsent(
    conn: AsyncConnection, *, stalled_after: timedelta | None = None
) -> list[tuple[int, str]]:
    """Id and channel of each conversation's earliest unsent reply, oldest first.

    With `stalled_after`, only those no one is working on: queued and untouched for that
    long (their work item was lost), or claimed by a worker whose claim lapsed.
    """
    m = _message.c
    firsts = (
        sa.select(sa.func.min(m.id))
        .where(m.direction == Direction.OUTBOUND.value, m.delivery_status.in_(_UNSENT))
        .group_by(m.conversation_id)
    )
    query = sa.select(m.id, m.channel).where(m.id.in_(firsts)).order_by(m.id)
    if stalled_after is not None:
        now = utcnow()
        query = query.where(sa.or_(
            sa.and_(m.delivery_status == DeliveryStatus.QUEUED.value,
                    # Replies queued by ingest (acknowledgements) carry only their arrival.
                    sa.func.coalesce(m.delivery_updated_at, m.received_at)
                    < now - stalled_after),
            sa.and_(m.delivery_status == DeliveryStatus.SENDING.value,
                    m.delivery_lease_until < now),
        ))
    return [(r.id, r.channel) for r in await conn.execute(query)]


async def outbound_message(conn: AsyncConnection, message_id: int) -> dict[str, Any] | None:
    """One outbound message with what is needed to deliver it."""
    row = (await conn.execute(sa.select(_message).where(_message.c.id == message_id))).first()
    return json_row(row._mapping) if row else None
