"""The `api` channel: trusted systems post JSON messages to `/webhooks/api`."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    ChannelDisabled,
    PayloadError,
    SignatureError,
    WebhookRequest,
)
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.http import bearer_problem, decode_json, json_response
from omnichannel.model import Attachment, InboundMessage, Location, Sender
from omnichannel.phones import normalise_phone
from omnichannel.store.ingest import Stored

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
        if value is None or not value.strip():
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


class ApiAdapter(Adapter):
    """Bearer-token JSON in; agents' replies out as JSON POSTs to a callback URL."""

    name = CHANNEL
    capabilities = Capabilities(max_text_length=20000, media=True, acknowledges_inline=True)

    def __init__(
        self, *, token: SecretStr | None, callback_url: str | None,
        session: aiohttp.ClientSession | None, phone_region: str = "ID",
    ) -> None:
        self._token = token
        self._callback_url = callback_url
        self._session = session
        self._phone_region = phone_region

    def verify(self, request: WebhookRequest) -> None:
        """The request must carry the configured bearer token (compared in constant time)."""
        if self._token is None:
            raise ChannelDisabled("the api channel is disabled: no token is configured")
        problem = bearer_problem(request.headers, self._token)
        if problem is not None:
            raise SignatureError(problem, status=401)

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """One message per request, validated field by field."""
        try:
            payload = decode_json(request.body)
        except ValueError as exc:
            raise PayloadError(str(exc), status=400) from exc
        try:
            return [parse(payload, self._phone_region)]
        except ValidationError as exc:
            raise PayloadError("invalid message", detail=describe_errors(exc)) from exc

    def acknowledge(self, request: WebhookRequest, stored: Sequence[Stored]) -> web.Response:
        """201 with the tracking number; 200 when the external id was stored before."""
        [one] = stored
        return json_response(
            {"message_id": one.message_id, "conversation_id": one.conversation_id,
             "tracking_number": one.tracking_number, "duplicate": one.duplicate},
            status=200 if one.duplicate else 201,
        )

    async def send(self, message: Outgoing) -> str | None:
        """POST the reply; 2xx is delivered, 4xx is final, anything else is retried."""
        if self._callback_url is None or self._session is None:
            raise DeliveryError("no api_callback_url is configured for the api channel",
                                retryable=False)
        body = {
            "message_id": message.message_id,
            "conversation_id": message.conversation_id,
            "tracking_number": message.tracking_number,
            "account": message.account,
            "recipient": message.recipient,
            "text": message.text,
            "attachments": [
                {"content_type": f.content_type, "filename": f.filename,
                 "content_base64": base64.b64encode(f.content).decode()}
                for f in message.files
            ],
        }
        headers = {"Idempotency-Key": f"omnichannel-{message.message_id}"}
        try:
            async with self._session.post(self._callback_url, json=body,
                                          headers=headers) as resp:
                if resp.status < 300:
                    return None
                detail = f"callback answered HTTP {resp.status}"
                raise DeliveryError(detail, retryable=resp.status >= 500 or resp.status == 429)
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"callback unreachable: {exc}", retryable=True) from exc
        except TimeoutError as exc:
            raise DeliveryError("callback did not answer in time", retryable=True) from exc

