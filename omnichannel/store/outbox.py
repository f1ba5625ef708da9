"""The transactional outbox: stored inbound messages whose routed event is not yet confirmed."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from omnichannel.model import Attachment, Location, RoutedEvent
from omnichannel.store.ingest import as_utc
from omnichannel.store.tables import CONVERSATION, MESSAGE, utcnow

_conversation = CONVERSATION
_message = MESSAGE


async def unpublished(conn: AsyncConnection, after_id: int, limit: int) -> list[RoutedEvent]:
    """Events of inbound messages not yet confirmed by the bus, oldest first, after `after_id`."""
    m, c = _message.c, _conversation.c
    rows = await conn.execute(
        sa.select(
            m.id, m.conversation_id, c.tracking_number, m.queue, m.rule, m.channel, m.account,
            c.contact_id, m.sender_id, m.sender_name, m.text, m.sent_at, m.received_at,
            m.attachments, m.location,
        )
        .join(_conversation, c.id == m.conversation_id)
        .where(m.published_at.is_(None), m.direction == "inbound", m.id > after_id)
        .order_by(m.id)
        .limit(limit)
    )
    return [
        RoutedEvent(
            message_id=r.id, conversation_id=r.conversation_id,
            tracking_number=r.tracking_number, queue=r.queue, rule=r.rule, channel=r.channel,
            account=r.account, contact_id=r.contact_id, sender_id=r.sender_id,
            sender_name=r.sender_name, text=r.text, sent_at=as_utc(r.sent_at),
            received_at=as_utc(r.received_at),
            attachments=tuple(Attachment(**a) for a in r.attachments or ()),
            location=Location(**r.location) if r.location else None,
        )
        for r in rows
    ]


async def mark_published(conn: AsyncConnection, message_ids: Sequence[int]) -> None:
    """Record that the bus confirmed the events of `message_ids`."""
    await conn.execute(
        sa.update(_message).where(_message.c.id.in_(list(message_ids))).values(
            published_at=utcnow()
        )
    )


async def pending_queues(conn: AsyncConnection) -> set[str]:
    """Queue codes of events still to publish (a queue may since have left the rules)."""
    m = _message.c
    rows = await conn.execute(
        sa.select(m.queue).distinct()
        .where(m.published_at.is_(None), m.direction == "inbound", m.queue.is_not(None))
    )
    return {r[0] for r in rows}
