"""Reads and writes behind the agent API and outbound delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from omnichannel.model import ConversationStatus, Direction
from omnichannel.store.ingest import as_utc
from omnichannel.store.tables import CONTACT, CONTACT_IDENTITY, CONVERSATION, MESSAGE, utcnow

_contact = CONTACT
_conversation = CONVERSATION
_message = MESSAGE
_identity = CONTACT_IDENTITY


class ConflictError(Exception):
    """The change would break an invariant, such as two active conversations of one contact."""


def json_row(row: sa.RowMapping, drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A row as JSON-ready data, timestamps in ISO 8601 UTC, without the `drop` columns."""
    return {
        k: (as_utc(v).isoformat() if isinstance(v, datetime) else v)
        for k, v in row.items()
        if k not in drop
    }


async def list_conversations(
    conn: AsyncConnection,
    *,
    queue: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Conversations newest first, optionally of one queue and status, paged by id."""
    c = _conversation.c
    query = (
        sa.select(_conversation, _contact.c.name.label("contact_name"))
        .join(_contact, _contact.c.id == c.contact_id)
        .order_by(c.id.desc())
        .limit(limit)
    )
    if queue is not None:
        query = query.where(c.queue == queue)
    if status is not None:
        query = query.where(c.status == status)
    if before_id is not None:
        query = query.where(c.id < before_id)
    return [json_row(r._mapping) for r in await conn.execute(query)]


async def get_conversation(conn: AsyncConnection, conversation_id: int) -> dict[str, Any] | None:
    """One conversation with its contact and messages in the citizen's order."""
    c = _conversation.c
    row = (
        await conn.execute(
            sa.select(_conversation, _contact.c.name.label("contact_name"),
                      _contact.c.phone.label("contact_phone"),
                      _contact.c.email.label("contact_email"))
            .join(_contact, _contact.c.id == c.contact_id)
            .where(c.id == conversation_id)
        )
    ).first()
    if row is None:
        return None
    result = json_row(row._mapping)
    messages = await conn.execute(
        sa.select(_message)
        .where(_message.c.conversation_id == conversation_id)
        .order_by(_message.c.sent_at, _message.c.id)
    )
    result["messages"] = [json_row(m._mapping, frozenset({"raw"})) for m in messages]
    return result


async def conversation_channel(conn: AsyncConnection, conversation_id: int) -> Any:
    """Channel, account, the contact's address on it and when they last wrote, for a reply."""
    c = _conversation.c
    return (
        await conn.execute(
            sa.select(c.id, c.channel, c.account, c.status, c.tracking_number,
                      _message.c.sender_id, _message.c.sent_at.label("last_inbound_at"))
            .join(_message, _message.c.conversation_id == c.id)
            .where(c.id == conversation_id, _message.c.direction == Direction.INBOUND.value)
            # By the provider's clock: a message delivered late must not move the reply
            # window back to when it was written.
            .order_by(_message.c.sent_at.desc(), _message.c.id.desc())
            .limit(1)
        )
    ).first()


async def set_status(
    conn: AsyncConnection, conversation_id: int, status: ConversationStatus
) -> bool:
    """Change a conversation's status; False when it does not exist."""
    try:
        result = await conn.execute(
            sa.update(_conversation)
            .where(_conversation.c.id == conversation_id)
            .values(status=status.value, updated_at=utcnow())
        )
    except sa.exc.IntegrityError as exc:
        raise ConflictError(
            "the contact already has another active conversation on this channel"
        ) from exc
    return bool(result.rowcount)



async def thread(
    conn: AsyncConnection, *, channel: str, account: str, address: str, after_id: int = 0,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Messages to and from one address on a channel account, oldest first, after `after_id`.

    What a channel that shows the citizen their own history (the web chat) reads back: every
    conversation of that identity, so a returning visitor sees earlier ones too.
    """
    m = _message.c
    identity = _identity.c
    conversations = (
        sa.select(_conversation.c.id)
        .join(_identity, _identity.c.contact_id == _conversation.c.contact_id)
        .where(identity.channel == channel, identity.address == address,
               _conversation.c.channel == channel, _conversation.c.account == account)
    )
    rows = await conn.execute(
        sa.select(m.id, m.conversation_id, m.direction, m.external_id, m.text, m.attachments,
                  m.author, m.sent_at, m.delivery_status)
        .where(m.conversation_id.in_(conversations), m.id > after_id)
        .order_by(m.id).limit(limit)
    )
    return [json_row(r._mapping) for r in rows]


async def citizen_messages(
    conn: AsyncConnection, conversation_id: int, *, limit: int = 5
) -> list[dict[str, Any]]:
    """A conversation's latest inbound messages, newest first, with provider ids and raw records."""
    m = _message.c
    rows = await conn.execute(
        sa.select(m.id, m.external_id, m.raw, m.sent_at)
        .where(m.conversation_id == conversation_id, m.direction == "inbound")
        .order_by(m.sent_at.desc(), m.id.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]
