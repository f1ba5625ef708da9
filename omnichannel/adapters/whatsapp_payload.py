"""Meta's WhatsApp Cloud API webhook notifications read into messages and receipts (pure).

A notification is `{"object": "whatsapp_business_account", "entry": [{"changes": [{"field":
"messages", "value": {...}}]}]}`; each `value` belongs to one business phone number
(`metadata.phone_number_id`) and carries citizens' `messages`, the `contacts` who sent them
and `statuses` of the messages we sent. The envelope is validated strictly (a wrong shape is a
422 that says where); a message whose own content is not what its `type` promises is still
stored, with its payload kept, because Meta retries a refused webhook for days.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from omnichannel.adapters.base import PayloadError
from omnichannel.http import decode_json
from omnichannel.model import (
    Attachment,
    DeliveryStatus,
    InboundMessage,
    Location,
    Sender,
    StatusUpdate,
)
from omnichannel.phones import normalise_phone

log = structlog.get_logger(__name__)

CHANNEL = "whatsapp"
#: `Attachment.url` of a file Meta holds: `whatsapp-media:<media id>` (ids expire after 7 days).
MEDIA_PREFIX = "whatsapp-media:"

_MEDIA_TYPES = {"image": "image/jpeg", "document": "application/octet-stream",
                "audio": "audio/ogg", "video": "video/mp4", "sticker": "image/webp"}
_STATUSES = {"sent": DeliveryStatus.SENT, "delivered": DeliveryStatus.DELIVERED,
             "read": DeliveryStatus.READ, "failed": DeliveryStatus.FAILED}


class _ErrorData(BaseModel):
    details: str | None = None


class GraphError(BaseModel):
    """An error as Meta reports it, in a status, a webhook or a Graph API answer."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: _ErrorData | None = None

    def describe(self) -> str:
        """`<code>: <title or message> (<details>)`, what an agent needs to see."""
        what = self.title or self.message or "error"
        details = self.error_data.details if self.error_data else None
        text = f"{self.code}: {what}" if self.code is not None else what
        return f"{text} ({details})" if details and details != what else text


class _Metadata(BaseModel):
    phone_number_id: str = Field(min_length=1)


class _Profile(BaseModel):
    name: str | None = None


class _Contact(BaseModel):
    wa_id: str | None = None
    #: Business-scoped user id (BSUID): present since 2026, the only id of a citizen who
    #: adopted a username and whose phone number Meta withholds.
    user_id: str | None = None
    profile: _Profile | None = None


class _Message(BaseModel):
    id: str = Field(min_length=1)
    sender: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    timestamp: int = Field(ge=0, lt=2**40)
    type: str = Field(min_length=1)

    @model_validator(mode="after")
    def _has_sender(self) -> _Message:
        if not (self.sender or self.from_user_id):
            raise ValueError("a message needs `from` or `from_user_id`")
        return self


class _Status(BaseModel):
    id: str = Field(min_length=1)
    status: str
    timestamp: int = Field(ge=0, lt=2**40)
    errors: list[GraphError] = Field(default_factory=list)


class _Value(BaseModel):
    metadata: _Metadata
    contacts: list[_Contact] = Field(default_factory=list)
    messages: list[_Message] = Field(default_factory=list)
    statuses: list[_Status] = Field(default_factory=list)
    errors: list[GraphError] = Field(default_factory=list)


class _Change(BaseModel):
    field: str
    value: dict[str, Any]


class _Entry(BaseModel):
    changes: list[_Change] = Field(default_factory=list)


class _Notification(BaseModel):
    object: Literal["whatsapp_business_account"]
    entry: list[_Entry]


# The content of each message type, as Meta documents it; unknown fields are ignored.
class _Text(BaseModel):
    body: str


class _Media(BaseModel):
    id: str = Field(min_length=1)
    mime_type: str | None = None
    caption: str | None = None
    filename: str | None = None


class _Place(BaseModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = None
    address: str | None = None


class _CardName(BaseModel):
    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class _CardPhone(BaseModel):
    phone: str | None = None
    wa_id: str | None = None


class _Card(BaseModel):
    name: _CardName | None = None
    phones: list[_CardPhone] = Field(default_factory=list)


_CARDS = TypeAdapter(list[_Card])


class _Reply(BaseModel):
    title: str
    description: str | None = None


class _Interactive(BaseModel):
    type: str
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _Button(BaseModel):
    text: str


class _Reaction(BaseModel):
    #: Absent when the citizen removed their reaction.
    emoji: str | None = None


class _System(BaseModel):
    body: str | None = None


class _Unsupported(BaseModel):
    type: str | None = None


@dataclass(frozen=True, slots=True)
class _Content:
    text: str
    attachments: tuple[Attachment, ...] = ()
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """What one webhook request carries: citizens' messages and receipts of ours."""

    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)


def read(body: bytes, accounts: Mapping[str, str]) -> Notification:
    """Messages and receipts of a notification; `accounts` maps phone_number_id to account.

    Raises `PayloadError` (400 when the body is not JSON, 422 when it is not a notification).
    """
    try:
        data = decode_json(body)
    except ValueError as exc:
        raise PayloadError(str(exc), status=400) from exc
    try:
        notification = _Notification.model_validate(data)
        values = [
            (_Value.model_validate(change.value), change.value)
            for entry in notification.entry for change in entry.changes
            if change.field == "messages"
        ]
    except ValidationError as exc:
        raise PayloadError(
            "not a WhatsApp Cloud API notification of the messages field",
            detail=[{"field": ".".join(str(p) for p in e["loc"]) or "(body)",
                     "problem": e["msg"]} for e in exc.errors()],
        ) from exc
    result = Notification()
    for value, raw in values:
        account = _account(value.metadata.phone_number_id, accounts)
        for error in value.errors:
            log.warning("whatsapp_webhook_error", account=account, error=error.describe())
        for message, raw_message in zip(value.messages, raw.get("messages", []), strict=True):
            result.messages.append(_message(account, value, raw, message, raw_message))
        result.statuses.extend(_statuses(account, value.statuses))
    return result


def _account(phone_number_id: str, accounts: Mapping[str, str]) -> str:
    account = accounts.get(phone_number_id)
    if account is None:
        # Refusing would make Meta retry for days and then drop it: keep it, under its id.
        log.warning("whatsapp_unknown_phone_number", phone_number_id=phone_number_id)
        return phone_number_id
    return account


def _message(account: str, value: _Value, raw: dict[str, Any], message: _Message,
             raw_message: dict[str, Any]) -> InboundMessage:
    contact_at = next(
        (i for i, c in enumerate(value.contacts)
         if (message.sender and c.wa_id == message.sender)
         or (message.from_user_id and c.user_id == message.from_user_id)),
        None,
    )
    contact = value.contacts[contact_at] if contact_at is not None else None
    sender_id = message.sender or message.from_user_id
    assert sender_id is not None, "checked by _Message"
    content = _content(message.type, raw_message)
    return InboundMessage(
        channel=CHANNEL, account=account, external_id=message.id,
        sender=Sender(
            id=sender_id,
            name=contact.profile.name if contact and contact.profile else None,
            phone=normalise_phone("+" + message.sender) if message.sender else None,
        ),
        text=content.text, sent_at=datetime.fromtimestamp(message.timestamp, UTC),
        attachments=content.attachments, location=content.location,
        raw={"metadata": raw["metadata"],
             "contact": raw["contacts"][contact_at] if contact_at is not None else None,
             "message": raw_message},
    )


def _content(kind: str, raw_message: dict[str, Any]) -> _Content:
    """The text, files and place a message carries, by its type."""
    payload = raw_message.get(kind)
    try:
        match kind:
            case "text":
                return _Content(_Text.model_validate(payload).body)
            case "image" | "document" | "audio" | "video" | "sticker":
                media = _Media.model_validate(payload)
                return _Content(media.caption or "", (Attachment(
                    content_type=media.mime_type or _MEDIA_TYPES[kind],
                    url=MEDIA_PREFIX + media.id, filename=media.filename),))
            case "location":
                place = _Place.model_validate(payload)
                return _Content("", location=Location(
                    latitude=place.latitude, longitude=place.longitude, name=place.name,
                    address=place.address))
            case "contacts":
                cards = _CARDS.validate_python(payload)
                return _Content("\n".join(_card_text(c) for c in cards))
            case "interactive":
                interactive = _Interactive.model_validate(payload)
                reply = interactive.button_reply or interactive.list_reply
                if reply is not None:
                    return _Content(" - ".join(filter(None, (reply.title, reply.description))))
                return _unknown(f"interactive {interactive.type}")
            case "button":
                return _Content(_Button.model_validate(payload).text)
            case "reaction":
                emoji = _Reaction.model_validate(payload).emoji
                return _Content(emoji or "[reaksi dihapus]")
            case "system":
                return _Content(f"[{_System.model_validate(payload).body or 'system'}]")
            case "unsupported":
                unsupported = _Unsupported.model_validate(payload or {})
                return _unknown(unsupported.type or kind)
    except ValidationError as exc:
        log.warning("whatsapp_message_unreadable", type=kind, error=str(exc))
    return _unknown(kind)


def _unknown(kind: str) -> _Content:
    # Stored all the same, the payload in `raw`: an agent sees something came and what.
    return _Content(f"[pesan WhatsApp jenis {kind} tidak dapat ditampilkan]")


def _card_text(card: _Card) -> str:
    name = card.name
    label = (name.formatted_name or " ".join(filter(None, (name.first_name, name.last_name)))
             if name else "")
    phones = [p.phone or (f"+{p.wa_id}" if p.wa_id else "") for p in card.phones]
    return " ".join(filter(None, ("Kontak:", label, ", ".join(filter(None, phones)))))


def _statuses(account: str, statuses: list[_Status]) -> list[StatusUpdate]:
    updates = []
    for status in statuses:
        known = _STATUSES.get(status.status)
        if known is None:
            # e.g. `deleted`, or `played` for voice messages: nothing a delivery state shows.
            log.info("whatsapp_status_ignored", status=status.status, external_id=status.id)
            continue
        error = None
        if known is DeliveryStatus.FAILED and status.errors:
            error = "; ".join(e.describe() for e in status.errors)
        updates.append(StatusUpdate(
            channel=CHANNEL, account=account, external_id=status.id, status=known,
            at=datetime.fromtimestamp(status.timestamp, UTC), error=error))
    return updates
