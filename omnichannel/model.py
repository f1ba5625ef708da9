"""Normalised domain types shared by adapters, store, router and bus; pure, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Version of the JSON event published on `omnichannel.routed`; bump on incompatible change.
EVENT_SCHEMA_VERSION = 1

#: Queue code for conversations no rule claims yet; a human dispatches them.
TRIAGE = "triage"


class ConversationStatus(enum.StrEnum):
    """Life cycle of a conversation; `resolved` and `closed` end it."""

    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


#: Statuses in which new messages from the contact still join the conversation.
ACTIVE_STATUSES = frozenset(
    {ConversationStatus.NEW, ConversationStatus.OPEN, ConversationStatus.PENDING}
)


class Direction(enum.StrEnum):
    """Whether a message came from the citizen or went to the citizen."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class DeliveryStatus(enum.StrEnum):
    """Delivery state of an outbound message."""

    QUEUED = "queued"
    #: A worker has claimed it and is handing it to the provider.
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file carried by a message: either a URL at the provider or a stored blob."""

    content_type: str
    size: int | None = None
    url: str | None = None
    filename: str | None = None
    blob_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, as stored and published."""
        return {
            "content_type": self.content_type,
            "size": self.size,
            "url": self.url,
            "filename": self.filename,
            "blob_id": self.blob_id,
        }


@dataclass(frozen=True, slots=True)
class Location:
    """A geographic point a citizen shared."""

    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, as stored and published."""
        return {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "name": self.name,
            "address": self.address,
        }


@dataclass(frozen=True, slots=True)
class Sender:
    """Who wrote an inbound message, as the channel knows them."""

    id: str
    name: str | None = None
    phone: str | None = None
    #: Lower-cased; like the phone, it joins a new channel identity to a known contact.
    email: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One citizen message, normalised from any channel."""

    channel: str
    account: str
    external_id: str
    sender: Sender
    text: str = ""
    sent_at: datetime | None = None
    attachments: tuple[Attachment, ...] = ()
    location: Location | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    #: Set when the citizen edited a message already sent: this is its new version, with the
    #: same external id, and replaces the stored text (the earlier versions are kept).
    edited_at: datetime | None = None
    #: A tracking number the message names (an e-mail reply's subject): the message joins
    #: that conversation when it is the same contact's on the same channel account.
    thread_hint: str | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A provider's word on one of our outbound messages, found by the id it gave us."""

    channel: str
    account: str
    #: The provider's id of the outbound message, as `send` returned it.
    external_id: str
    status: DeliveryStatus
    #: When it happened, by the provider's clock.
    at: datetime
    #: The provider's code and description when the status is `failed`.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Template:
    """A message template the provider approved in advance (WhatsApp outside its reply window)."""

    #: The template's name (Meta) or content SID (Twilio).
    name: str
    language: str = "id"
    #: Values of the body's numbered placeholders, in order.
    parameters: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, as stored with the outbound message."""
        return {"name": self.name, "language": self.language,
                "parameters": list(self.parameters)}


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where the router sends a message, which rule decided, and why."""

    queue: str
    rule: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """What is published on `omnichannel.routed` for every inbound message of a routed conversation.

    The JSON form (`to_json`) is a public contract for other systems binding to the exchange.
    """

    message_id: int
    conversation_id: int
    tracking_number: str
    queue: str
    rule: str | None
    channel: str
    account: str
    contact_id: int
    sender_id: str
    sender_name: str | None
    text: str
    sent_at: datetime
    received_at: datetime
    attachments: tuple[Attachment, ...] = ()
    location: Location | None = None

    @property
    def routing_key(self) -> str:
        """Topic routing key of the event: `opd.<queue code>`."""
        return f"opd.{self.queue}"

    def to_json(self) -> dict[str, Any]:
        """The published JSON object (schema version `EVENT_SCHEMA_VERSION`)."""
        return {
            "schema": EVENT_SCHEMA_VERSION,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "tracking_number": self.tracking_number,
            "queue": self.queue,
            "rule": self.rule,
            "channel": self.channel,
            "account": self.account,
            "contact": {
                "id": self.contact_id, "sender_id": self.sender_id, "name": self.sender_name,
            },
            "text": self.text,
            "sent_at": self.sent_at.isoformat(),
            "received_at": self.received_at.isoformat(),
            "attachments": [a.to_json() for a in self.attachments],
            "location": self.location.to_json() if self.location else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoutedEvent:
        """Parse an event published by `to_json`."""
        loc = data.get("location")
        return cls(
            message_id=int(data["message_id"]),
            conversation_id=int(data["conversation_id"]),
            tracking_number=data["tracking_number"],
            queue=data["queue"],
            rule=data.get("rule"),
            channel=data["channel"],
            account=data["account"],
            contact_id=int(data["contact"]["id"]),
            sender_id=data["contact"]["sender_id"],
            sender_name=data["contact"].get("name"),
            text=data.get("text", ""),
            sent_at=datetime.fromisoformat(data["sent_at"]),
            received_at=datetime.fromisoformat(data["received_at"]),
            attachments=tuple(Attachment(**a) for a in data.get("attachments", [])),
            location=Location(**loc) if loc else None,
        )
