"""Idempotent batch ingest: contacts, conversations and inbound messages in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnichannel.model import ACTIVE_STATUSES, TRIAGE, InboundMessage, RouteDecision, RoutedEvent
from omnichannel.store.attachments import queue_fetches
from omnichannel.store.tables import (
    ACTIVE_CONDITION,
    CONTACT,
    CONTACT_IDENTITY,
    CONVERSATION,
    MESSAGE,
    utcnow,
)

Router = Callable[[InboundMessage], RouteDecision]
#: The reply that tells a citizen their new conversation's tracking number and OPD, or None.
Acknowledger = Callable[[InboundMessage, str, str], str | None]

_contact = CONTACT
_identity = CONTACT_IDENTITY
_conversation = CONVERSATION
_message = MESSAGE

_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)

#: Rules that only an agent sets; the router never moves such a conversation again.
MANUAL_RULE_PREFIX = "manual:"


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of ingesting one message."""

    message_id: int
    conversation_id: int
    tracking_number: str
    duplicate: bool
    event: RoutedEvent | None
    #: The automatic reply queued for the citizen when this message opened a conversation.
    acknowledgement_id: int | None = None
    #: Whether files of the message wait to be fetched from the provider.
    fetches: bool = False


def tracking_number(prefix: str, conversation_id: int, created_at: datetime) -> str:
    """The citizen-facing number of a conversation, e.g. `AMB-2026-000123`."""
    return f"{prefix}-{created_at.year}-{conversation_id:06d}"


def as_utc(value: datetime) -> datetime:
    """Read a stored timestamp as UTC (SQLite returns it without a zone)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def insert_for(conn: AsyncConnection, table: sa.Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _clean(text: str) -> str:
    # PostgreSQL text refuses NUL; the raw payload keeps the original.
    return text.replace("\x00", "")


class Ingestor:
    """Writes batches of inbound messages; the caller owns the connection and transaction."""

    def __init__(
        self, router: Router, tracking_prefix: str, acknowledge: Acknowledger | None = None
    ) -> None:
        self._route = router
        self._prefix = tracking_prefix
        self._acknowledge = acknowledge

    async def ingest(
        self, conn: AsyncConnection, batch: Sequence[InboundMessage]
    ) -> list[Stored]:
        """Store `batch`, routing new and triaged conversations; returns one result per input."""
        now = utcnow()
        keys = [(m.channel, m.account, m.external_id) for m in batch]
        existing = await self._existing_messages(conn, set(keys))
        edits = [m for k, m in zip(keys, batch, strict=True)
                 if m.edited_at is not None and k in existing]
        if edits:
            await self._apply_edits(conn, edits, {k: existing[k][0] for k in keys
                                                  if k in existing})
        fresh: dict[tuple[str, str, str], InboundMessage] = {}
        for key, msg in zip(keys, batch, strict=True):
            # An edit of a message never stored (sent before the channel was set up) is
            # stored as the message it now is.
            if key not in existing and key not in fresh:
                fresh[key] = msg

        results: dict[tuple[str, str, str], Stored] = {}
        if fresh:
            results = await self._store_fresh(conn, list(fresh.values()), now)
        out: list[Stored] = []
        seen: set[tuple[str, str, str]] = set()
        for key in keys:
            if key in existing:
                message_id, conversation_id, number = existing[key]
                out.append(Stored(message_id, conversation_id, number, True, None))
            elif key in seen:
                first = results[key]
                out.append(Stored(first.message_id, first.conversation_id,
                                  first.tracking_number, True, None))
            else:
                seen.add(key)
                out.append(results[key])
        return out

    async def _queue_acknowledgements(
        self, conn: AsyncConnection, ordered: list[InboundMessage],
        contacts: dict[tuple[str, str], int], conversations: dict[Any, dict[str, Any]],
        ids: dict[tuple[str, str, str], int], now: datetime,
    ) -> dict[int, int]:
        """Queue, in this transaction, the reply to each conversation this batch opened.

        Returns message id -> reply id for the message that opened its conversation.
        """
        if self._acknowledge is None:
            return {}
        rows, opened_by = [], []
        for m in ordered:
            conv = conversations[(contacts[(m.channel, m.sender.id)], m.channel, m.account)]
            key = (m.channel, m.account, m.external_id)
            if not conv.pop("new", False) or key not in ids:
                continue  # not a new conversation, or already acknowledged in this batch
            text = self._acknowledge(m, conv["tracking_number"], conv["queue"])
            if text is None:
                continue
            opened_by.append(ids[key])
            rows.append({
                "conversation_id": conv["id"], "direction": "outbound", "channel": m.channel,
                "account": m.account, "author": "omnichannel", "text": text,
                "attachments": [], "sent_at": now, "received_at": now,
                "delivery_status": "queued",
            })
        if not rows:
            return {}
        inserted = await conn.execute(
            sa.insert(_message).returning(_message.c.id, sort_by_parameter_order=True), rows)
        return dict(zip(opened_by, (r[0] for r in inserted), strict=True))

    async def _apply_edits(
        self, conn: AsyncConnection, edits: list[InboundMessage],
        ids: dict[tuple[str, str, str], int],
    ) -> None:
        """Replace edited messages' text, keeping earlier versions; older edits change nothing."""
        m = _message.c
        by_id = {ids[(e.channel, e.account, e.external_id)]: e for e in
                 sorted(edits, key=lambda e: e.edited_at or utcnow())}
        rows = await conn.execute(
            sa.select(m.id, m.text, m.edited_at, m.sent_at, m.edits).where(m.id.in_(by_id))
        )
        updates = []
        for row in rows:
            edit = by_id[row.id]
            assert edit.edited_at is not None
            if row.edited_at is not None and as_utc(row.edited_at) >= edit.edited_at:
                continue  # a repeated or out-of-date edit
            since = as_utc(row.edited_at or row.sent_at).isoformat()
            history = [*(row.edits or []), {"text": row.text, "since": since}]
            updates.append({"mid": row.id, "text": _clean(edit.text),
                            "edited_at": edit.edited_at, "edits": history})
        if updates:
            await conn.execute(
                sa.update(_message).where(m.id == sa.bindparam("mid")).values(
                    text=sa.bindparam("text"), edited_at=sa.bindparam("edited_at"),
                    edits=sa.bindparam("edits"),
                ),
                updates,
            )

    async def _existing_messages(
        self, conn: AsyncConnection, keys: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], tuple[int, int, str]]:
        if not keys:
            return {}
        rows = await conn.execute(
            sa.select(
                _message.c.channel, _message.c.account, _message.c.external_id,
                _message.c.id, _message.c.conversation_id, _conversation.c.tracking_number,
            )
            .join(_conversation, _conversation.c.id == _message.c.conversation_id)
            .where(_message.c.external_id.in_({k[2] for k in keys}))
            .where(sa.tuple_(_message.c.channel, _message.c.account,
                             _message.c.external_id).in_(list(keys)))
        )
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}

    async def _contacts(
        self, conn: AsyncConnection, batch: Sequence[InboundMessage]
    ) -> dict[tuple[str, str], int]:
        """Map each (channel, sender id) to its contact, creating contacts as needed.

        A sender new on a channel whose phone number (E.164) or e-mail address a contact
        already has joins that contact: the citizen on WhatsApp and on SMS, or by e-mail and in
        the web chat, is one person with one history.
        """
        first: dict[tuple[str, str], InboundMessage] = {}
        for m in batch:
            first.setdefault((m.channel, m.sender.id), m)
        found = await self._select_identities(conn, set(first))
        missing = [k for k in first if k not in found]
        if not missing:
            return found

        # One owner per new identity: an existing contact with its phone (else its e-mail
        # address), else a new contact shared by every new identity of the batch with the same
        # phone (else address).
        owner: dict[tuple[str, str], int] = {}
        for column in (_contact.c.phone, _contact.c.email):
            values = {v for k in missing if k not in owner
                      and (v := getattr(first[k].sender, column.name))}
            if not values:
                continue
            known = await conn.execute(
                sa.select(column, sa.func.min(_contact.c.id))
                .where(column.in_(values)).group_by(column)
            )
            by_value = {r[0]: r[1] for r in known}
            owner.update({k: by_value[v] for k in missing if k not in owner
                          and (v := getattr(first[k].sender, column.name)) in by_value})
        groups: dict[object, list[tuple[str, str]]] = {}
        for k in missing:
            if k not in owner:
                sender = first[k].sender
                groups.setdefault(sender.phone or sender.email or k, []).append(k)
        new_ids: list[int] = []
        if groups:
            created = await conn.execute(
                sa.insert(_contact).returning(_contact.c.id, sort_by_parameter_order=True),
                [{"name": first[keys[0]].sender.name, "phone": first[keys[0]].sender.phone,
                  "email": first[keys[0]].sender.email, "created_at": utcnow()}
                 for keys in groups.values()],
            )
            new_ids = [r[0] for r in created]
            for keys, cid in zip(groups.values(), new_ids, strict=True):
                owner.update(dict.fromkeys(keys, cid))

        rows = await conn.execute(
            insert_for(conn, _identity).on_conflict_do_nothing().returning(
                _identity.c.channel, _identity.c.address, _identity.c.contact_id
            ),
            [{"contact_id": owner[k], "channel": k[0], "address": k[1]} for k in missing],
        )
        inserted = {(r[0], r[1]): r[2] for r in rows}
        found.update(inserted)
        lost = [k for k in missing if k not in inserted]
        if lost:
            # Another worker registered these identities first: use its contacts and drop
            # the ones made here in vain.
            found.update(await self._select_identities(conn, set(lost)))
            orphan = set(new_ids) - set(inserted.values())
            if orphan:
                await conn.execute(sa.delete(_contact).where(_contact.c.id.in_(orphan)))
        return found

    async def _select_identities(
        self, conn: AsyncConnection, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        rows = await conn.execute(
            sa.select(_identity.c.channel, _identity.c.address, _identity.c.contact_id)
            .where(_identity.c.address.in_({k[1] for k in keys}))
            .where(sa.tuple_(_identity.c.channel, _identity.c.address).in_(list(keys)))
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def _active_conversations(
        self, conn: AsyncConnection, keys: set[tuple[int, str, str]]
    ) -> dict[tuple[int, str, str], dict[str, Any]]:
        c = _conversation.c
        rows = await conn.execute(
            sa.select(c.id, c.contact_id, c.channel, c.account, c.queue, c.rule,
                      c.tracking_number, c.created_at)
            .where(c.contact_id.in_({k[0] for k in keys}))
            .where(sa.tuple_(c.contact_id, c.channel, c.account).in_(list(keys)))
            .where(ACTIVE_CONDITION)
        )
        return {(r.contact_id, r.channel, r.account): dict(r._mapping) for r in rows}

    async def _reopen(
        self, conn: AsyncConnection, hints: dict[tuple[int, str, str], list[str]],
        now: datetime,
    ) -> dict[tuple[int, str, str], dict[str, Any]]:
        """Reopen the ended conversations that messages without an active one name.

        A hint counts only for a conversation of the same contact on the same channel account,
        so a stranger cannot write into someone else's case by its number.
        """
        c = _conversation.c
        rows = await conn.execute(
            sa.select(c.id, c.contact_id, c.channel, c.account, c.queue, c.rule,
                      c.tracking_number, c.created_at)
            .where(c.tracking_number.in_({n for numbers in hints.values() for n in numbers}))
            .where(c.status.not_in(_ACTIVE))
        )
        named = {r.tracking_number: r for r in rows}
        found: dict[tuple[int, str, str], dict[str, Any]] = {}
        for key, numbers in hints.items():
            row = next((named[n] for n in numbers if n in named
                        and (named[n].contact_id, named[n].channel, named[n].account) == key),
                       None)
            if row is None:
                continue
            try:
                # A savepoint: a racing worker may have opened an active conversation for the
                # same key, which the partial unique index then refuses to duplicate.
                async with conn.begin_nested():
                    reopened = await conn.execute(
                        sa.update(_conversation)
                        .where(c.id == row.id, c.status.not_in(_ACTIVE))
                        .values(status="open", updated_at=now)
                    )
            except sa.exc.IntegrityError:
                continue
            if reopened.rowcount == 1:
                found[key] = dict(row._mapping)
        return found

    async def _conversations(
        self, conn: AsyncConnection, keys: set[tuple[int, str, str]], now: datetime,
        hints: dict[tuple[int, str, str], list[str]] | None = None,
    ) -> dict[tuple[int, str, str], dict[str, Any]]:
        """Find each key's active conversation: the open one, else an ended one its messages
        name (reopened), else a new one."""
        found = await self._active_conversations(conn, keys)
        missing = [k for k in keys if k not in found]
        hinted = {k: hints[k] for k in missing if hints and k in hints}
        if hinted:
            found.update(await self._reopen(conn, hinted, now))
            missing = [k for k in missing if k not in found]
        if not missing:
            return found
        # The partial unique index makes a racing worker's insert do nothing here.
        rows = await conn.execute(
            insert_for(conn, _conversation).on_conflict_do_nothing().returning(
                _conversation.c.id, _conversation.c.contact_id, _conversation.c.channel,
                _conversation.c.account,
            ),
            [{"contact_id": k[0], "channel": k[1], "account": k[2], "status": "new",
              "created_at": now, "updated_at": now, "last_message_at": now} for k in missing],
        )
        for r in rows:
            # Written by the one UPDATE of every touched conversation in `_store_fresh`.
            found[(r.contact_id, r.channel, r.account)] = {
                "id": r.id, "queue": None, "rule": None, "created_at": now, "new": True,
                "tracking_number": tracking_number(self._prefix, r.id, now),
            }
        lost = {k for k in missing if k not in found}
        if lost:
            found.update(await self._active_conversations(conn, lost))
        return found

    async def _store_fresh(
        self, conn: AsyncConnection, batch: list[InboundMessage], now: datetime
    ) -> dict[tuple[str, str, str], Stored]:
        contacts = await self._contacts(conn, batch)
        conv_keys = {(contacts[(m.channel, m.sender.id)], m.channel, m.account) for m in batch}
        # Tracking numbers the messages name (an e-mail reply's), newest message first.
        hints: dict[tuple[int, str, str], list[str]] = {}
        for m in sorted(batch, key=lambda m: m.sent_at or now, reverse=True):
            if m.thread_hint:
                hints.setdefault((contacts[(m.channel, m.sender.id)], m.channel, m.account),
                                 []).append(m.thread_hint)
        conversations = await self._conversations(conn, conv_keys, now, hints)

        # The citizen's order, not the workers': route and apply messages by provider time.
        ordered = sorted(batch, key=lambda m: m.sent_at or now)
        rows: list[dict[str, Any]] = []
        routed: dict[int, str] = {}
        for m in ordered:
            contact_id = contacts[(m.channel, m.sender.id)]
            conv = conversations[(contact_id, m.channel, m.account)]
            queue, rule = conv["queue"], conv["rule"]
            if queue is None or (queue == TRIAGE and not (rule or "").startswith(
                    MANUAL_RULE_PREFIX)):
                decision = self._route(m)
                if queue is None or decision.queue != TRIAGE:
                    queue, rule = decision.queue, decision.rule
                    conv["queue"], conv["rule"] = queue, rule
                    routed[conv["id"]] = decision.reason
            rows.append({
                "conversation_id": conv["id"], "direction": "inbound",
                "channel": m.channel, "account": m.account, "external_id": m.external_id,
                "sender_id": m.sender.id, "sender_name": m.sender.name, "text": _clean(m.text),
                "attachments": [a.to_json() for a in m.attachments],
                "location": m.location.to_json() if m.location else None,
                "raw": m.raw or None, "sent_at": m.sent_at or now, "received_at": now,
                "queue": queue, "rule": rule, "edited_at": m.edited_at,
            })

        inserted = await conn.execute(
            insert_for(conn, _message).on_conflict_do_nothing().returning(
                _message.c.id, _message.c.channel, _message.c.account, _message.c.external_id
            ),
            rows,
        )
        ids = {(r.channel, r.account, r.external_id): r.id for r in inserted}
        # One statement for every touched conversation: its tracking number (new ones), its
        # last message time and, where it was (re)routed, the decision.
        touched: dict[int, dict[str, Any]] = {}
        by_id = {conv["id"]: conv for conv in conversations.values()}
        for row in rows:
            conv = by_id[row["conversation_id"]]
            entry = touched.setdefault(conv["id"], {
                "cid": conv["id"], "tn": conv["tracking_number"], "at": row["received_at"],
                "queue": conv["queue"], "rule": conv["rule"], "reason": None,
            })
            entry["at"] = max(entry["at"], row["received_at"])
        for cid, reason in routed.items():
            touched[cid]["reason"] = reason
        c = _conversation.c
        await conn.execute(
            sa.update(_conversation)
            .where(c.id == sa.bindparam("cid"))
            .values(
                tracking_number=sa.func.coalesce(c.tracking_number, sa.bindparam("tn")),
                last_message_at=sa.bindparam("at"), updated_at=sa.bindparam("at"),
                queue=sa.bindparam("queue"), rule=sa.bindparam("rule"),
                route_reason=sa.func.coalesce(sa.bindparam("reason"), c.route_reason),
            ),
            list(touched.values()),
        )

        acknowledgements = await self._queue_acknowledgements(
            conn, ordered, contacts, conversations, ids, now)
        fetching = await queue_fetches(conn, (
            (ids[key], m) for m in ordered
            if m.attachments and (key := (m.channel, m.account, m.external_id)) in ids
        ))

        results: dict[tuple[str, str, str], Stored] = {}
        lost: list[tuple[str, str, str]] = []
        for m, row in zip(ordered, rows, strict=True):
            key = (m.channel, m.account, m.external_id)
            conv = conversations[(contacts[(m.channel, m.sender.id)], m.channel, m.account)]
            if key not in ids:
                lost.append(key)
                continue
            event = RoutedEvent(
                message_id=ids[key], conversation_id=conv["id"],
                tracking_number=conv["tracking_number"], queue=row["queue"], rule=row["rule"],
                channel=m.channel, account=m.account, contact_id=contacts[(m.channel,
                                                                           m.sender.id)],
                sender_id=m.sender.id, sender_name=m.sender.name, text=row["text"],
                sent_at=row["sent_at"], received_at=now, attachments=m.attachments,
                location=m.location,
            )
            results[key] = Stored(ids[key], conv["id"], conv["tracking_number"], False, event,
                                  acknowledgements.get(ids[key]), ids[key] in fetching)
        if lost:
            # A concurrent worker stored these first: report them as the duplicates they are.
            for key, (mid, cid, number) in (
                await self._existing_messages(conn, set(lost))
            ).items():
                results[key] = Stored(mid, cid, number, True, None)
        return results
