"""Database tables (sqlmodel); only the `store` package touches them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from omnichannel.model import ACTIVE_STATUSES

#: SQL condition of the conversations that new messages from their contact still join.
ACTIVE_CONDITION = sa.text(
    "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATUSES)) + ")"
)

metadata = SQLModel.metadata
metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=sa.DateTime(timezone=True), **kw)


class Contact(SQLModel, table=True):
    """A citizen, known by one identity per channel."""

    id: int | None = Field(default=None, primary_key=True)
    name: str | None = Field(default=None, max_length=200)
    #: E.164; a new channel identity with this number joins the contact.
    phone: str | None = Field(default=None, max_length=32, index=True)
    #: Lower-cased; a new channel identity with this address joins the contact.
    email: str | None = Field(default=None, max_length=254, index=True)
    created_at: datetime = _ts(default_factory=utcnow)


class ContactIdentity(SQLModel, table=True):
    """How one channel addresses a contact (phone number, chat id, e-mail, JID...)."""

    __tablename__ = "contact_identity"
    # The discriminating column leads, so a batch lookup is an index probe per address
    # rather than a scan of the whole channel.
    __table_args__ = (sa.UniqueConstraint("address", "channel"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    channel: str = Field(max_length=32)
    address: str = Field(max_length=320)


class Conversation(SQLModel, table=True):
    """A thread of messages between one contact and the OPD handling it."""

    __table_args__ = (
        # The database itself refuses a second active conversation of a contact on one
        # channel account, however many workers race to open one.
        sa.Index(
            "uq_conversation_active",
            "contact_id",
            "channel",
            "account",
            unique=True,
            sqlite_where=ACTIVE_CONDITION,
            postgresql_where=ACTIVE_CONDITION,
        ),
        sa.Index("ix_conversation_queue_status", "queue", "status", "last_message_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    channel: str = Field(max_length=32)
    account: str = Field(max_length=200)
    status: str = Field(default="new", max_length=16)
    queue: str | None = Field(default=None, max_length=64)
    rule: str | None = Field(default=None, max_length=200)
    route_reason: str | None = Field(default=None)
    assigned_agent: str | None = Field(default=None, max_length=200)
    tracking_number: str | None = Field(default=None, max_length=40, unique=True)
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    last_message_at: datetime = _ts(default_factory=utcnow)


class Message(SQLModel, table=True):
    """One inbound or outbound message, with the provider's raw payload kept for audit."""

    __table_args__ = (
        # A provider's repeated delivery of one message is stored once. The id leads: a
        # channel's every message shares the other two columns.
        sa.UniqueConstraint("external_id", "channel", "account"),
        sa.Index("ix_message_conversation_order", "conversation_id", "sent_at", "id"),
        sa.Index(
            "ix_message_unpublished",
            "id",
            sqlite_where=sa.text("published_at IS NULL AND direction = 'inbound'"),
            postgresql_where=sa.text("published_at IS NULL AND direction = 'inbound'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    direction: str = Field(max_length=8)
    channel: str = Field(max_length=32)
    account: str = Field(max_length=200)
    external_id: str | None = Field(default=None, max_length=200)
    sender_id: str | None = Field(default=None, max_length=320)
    sender_name: str | None = Field(default=None, max_length=200)
    author: str | None = Field(default=None, max_length=200)
    text: str = Field(default="")
    attachments: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    location: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    raw: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    #: When the citizen (or agent) sent it, by the provider's clock; orders the thread.
    sent_at: datetime = _ts(default_factory=utcnow)
    received_at: datetime = _ts(default_factory=utcnow)
    #: Routing snapshot published with the message.
    queue: str | None = Field(default=None, max_length=64)
    rule: str | None = Field(default=None, max_length=200)
    #: Set once the routed event is confirmed by the bus (transactional outbox).
    published_at: datetime | None = _ts(default=None)
    delivery_status: str | None = Field(default=None, max_length=16)
    delivery_error: str | None = Field(default=None)
    delivery_attempts: int = Field(default=0)
    #: While a worker sends, no other may claim the message before this time has passed.
    delivery_lease_until: datetime | None = _ts(default=None)
    #: When the delivery status last changed (our send or the provider's receipt).
    delivery_updated_at: datetime | None = _ts(default=None)
    #: When the citizen last edited it; `edits` keeps the earlier versions, oldest first.
    edited_at: datetime | None = _ts(default=None)
    edits: list[dict[str, Any]] | None = Field(default=None, sa_type=sa.JSON)


class DeliveryReceipt(SQLModel, table=True):
    """A provider's status callback for an outbound message, kept even before the send is
    recorded (a receipt can overtake the provider's answer to the send itself)."""

    __tablename__ = "delivery_receipt"
    # A provider repeating a callback is recorded once.
    __table_args__ = (sa.UniqueConstraint("external_id", "channel", "account", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    account: str = Field(max_length=200)
    external_id: str = Field(max_length=200)
    status: str = Field(max_length=16)
    error: str | None = Field(default=None)
    #: When the provider says it happened.
    occurred_at: datetime = _ts()
    received_at: datetime = _ts(default_factory=utcnow)


class AttachmentFetch(SQLModel, table=True):
    """A file a citizen sent that is still held by the provider, to download into our store.

    Written in the transaction that stores the message, so a download is never forgotten.
    """

    __tablename__ = "attachment_fetch"
    __table_args__ = (sa.UniqueConstraint("message_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id")
    #: Index of the attachment in `message.attachments`.
    position: int
    channel: str = Field(max_length=32)
    account: str = Field(max_length=200)
    #: Where the provider holds it (a URL, or a provider reference like `telegram-file:<id>`).
    url: str
    #: `pending`, `stored`, `too_large` or `failed`.
    status: str = Field(default="pending", max_length=16, index=True)
    attempts: int = Field(default=0)
    error: str | None = Field(default=None)
    updated_at: datetime = _ts(default_factory=utcnow)


def _table(model: type[SQLModel]) -> sa.Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


#: Core handles of the tables, for bulk statements that bypass the ORM.
CONTACT = _table(Contact)
CONTACT_IDENTITY = _table(ContactIdentity)
CONVERSATION = _table(Conversation)
MESSAGE = _table(Message)
DELIVERY_RECEIPT = _table(DeliveryReceipt)
ATTACHMENT_FETCH = _table(AttachmentFetch)
