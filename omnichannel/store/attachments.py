"""Files citizens sent that the provider still holds: queued with the message, then fetched."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from omnichannel.store.tables import ATTACHMENT_FETCH, MESSAGE, utcnow

_fetch = ATTACHMENT_FETCH
_message = MESSAGE


class FetchStatus(enum.StrEnum):
    """Where a provider-held file stands; also shown on the message's attachment."""

    PENDING = "pending"
    STORED = "stored"
    #: Over the provider's download limit or ours: recorded, and the citizen is told.
    TOO_LARGE = "too_large"
    FAILED = "failed"


async def queue_fetches(conn: AsyncConnection, messages: Iterable[tuple[int, Any]]) -> set[int]:
    """Queue the provider-held files of newly stored messages; returns the ids with some.

    `messages` pairs a message id with its `InboundMessage`.
    """
    rows = [
        {"message_id": message_id, "position": position, "channel": m.channel,
         "account": m.account, "url": a.url, "status": FetchStatus.PENDING.value,
         "attempts": 0, "updated_at": utcnow()}
        for message_id, m in messages
        for position, a in enumerate(m.attachments)
        if a.url and a.blob_id is None
    ]
    if rows:
        await conn.execute(sa.insert(_fetch), rows)
    return {r["message_id"] for r in rows}


async def pending_messages(conn: AsyncConnection) -> list[int]:
    """Messages with files still to fetch, oldest first (resumed at start-up)."""
    rows = await conn.execute(
        sa.select(_fetch.c.message_id).distinct()
        .where(_fetch.c.status == FetchStatus.PENDING.value).order_by(_fetch.c.message_id)
    )
    return [r.message_id for r in rows]


async def pending_fetches(conn: AsyncConnection, message_id: int) -> list[dict[str, Any]]:
    """The files of one message still to fetch."""
    rows = await conn.execute(
        sa.select(_fetch).where(_fetch.c.message_id == message_id,
                                _fetch.c.status == FetchStatus.PENDING.value)
        .order_by(_fetch.c.position)
    )
    return [dict(r._mapping) for r in rows]


async def record_fetch(
    conn: AsyncConnection, fetch: dict[str, Any], status: FetchStatus, *, attempts: int,
    error: str | None = None, blob_id: str | None = None, size: int | None = None,
    content_type: str | None = None,
) -> None:
    """Record how a fetch went, on the fetch and on the message's attachment agents see."""
    await conn.execute(
        sa.update(_fetch).where(_fetch.c.id == fetch["id"])
        .values(status=status.value, attempts=attempts, error=error, updated_at=utcnow())
    )
    if status is FetchStatus.PENDING:
        return
    # Read, change one entry, write back: a message's attachments are a small JSON list that
    # only this fetch changes after the message is stored.
    current = (await conn.execute(
        sa.select(_message.c.attachments).where(_message.c.id == fetch["message_id"])
    )).scalar_one()
    attachments = [dict(a) for a in current or []]
    entry = attachments[fetch["position"]]
    entry["status"] = status.value
    if error is not None:
        entry["error"] = error
    if blob_id is not None:
        entry.update(blob_id=blob_id, size=size)
        entry["content_type"] = entry.get("content_type") or content_type
    await conn.execute(sa.update(_message).where(_message.c.id == fetch["message_id"])
                       .values(attachments=attachments))
