"""The `api` channel: trusted systems post JSON messages to `/webhooks/api`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from omnichannel.model import Attachment, InboundMessage, Location, Sender
from omnichannel.phones import normalise_phone

CHANNEL = "api"


class ApiAttachment(BaseModel):
    """A file the posting system holds at `url`."""

    model_config = ConfigDict(extra="forbid")

    content_type: str = Field(min_length=1, max_length=200, examples=["image/jpeg"])
    url: str = Field(min_length=1, max_length=2000)
    size: int | None = Field(default=None, ge=0)
    filename: str | None = Field(default=None, max_length=255)


class ApiLocation(BaseModel):
    """A point the citizen reported from."""

    model_config = ConfigDict(extra="forbid")

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=200)
    address: str | None = Field(default=None, max_length=500)


class ApiMessage(BaseModel):
    """One message posted by a trusted system (an app, an offline-complaint form, a gateway)."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(
        min_length=1, max_length=200,
        description="The posting system's own id; a repeated id is stored once.",
    )
    sender_id: str = Field(min_length=1, max_length=320, description="Stable id of the citizen.")
    sender_name: str | None = Field(default=None, max_length=200)
    sender_phone: str | None = Field(default=None, max_length=32)
    text: str = Field(default="", max_length=20000)
    account: str = Field(
        default="default", min_length=1, max_length=200,
        description="Which of the posting system's sources it came through (a form, a desk).",
    )
    sent_at: datetime | None = Field(
        default=None, description="When the citizen wrote it (ISO 8601); defaults to now."
    )
    attachments: list[ApiAttachment] = Field(default_factory=list, max_length=20)
    location: ApiLocation | None = None

    @field_validator("sender_phone")
    @classmethod
    def _phone_as_e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        region = (info.context or {}).get("region", "ID")
        phone = normalise_phone(value, region)
        if phone is None:
            raise ValueError(f"{value!r} is not a valid phone number")
        return phone

    @model_validator(mode="after")
    def _has_content(self) -> ApiMessage:
        if not self.text.strip() and not self.attachments and self.location is None:
            raise ValueError("a message needs text, an attachment or a location")
        return self


def parse(payload: Any, phone_region: str = "ID") -> InboundMessage:
    """Validate a decoded JSON body into a normalised message (raises `ValidationError`).

    `phone_region` is the country assumed for phone numbers written without one.
    """
    msg = ApiMessage.model_validate(payload, context={"region": phone_region})
    sent_at = msg.sent_at
    if sent_at is not None:
        sent_at = sent_at.replace(tzinfo=UTC) if sent_at.tzinfo is None else sent_at
    return InboundMessage(
        channel=CHANNEL,
        account=msg.account,
        external_id=msg.external_id,
        sender=Sender(id=msg.sender_id, name=msg.sender_name, phone=msg.sender_phone),
        text=msg.text,
        sent_at=sent_at.astimezone(UTC) if sent_at else None,
        attachments=tuple(
            Attachment(content_type=a.content_type, url=a.url, size=a.size, filename=a.filename)
            for a in msg.attachments
        ),
        location=Location(**msg.location.model_dump()) if msg.location else None,
        raw=payload,
    )


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """The validation errors as `{field, problem}` pairs a client can act on."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
        for err in exc.errors()
    ]
