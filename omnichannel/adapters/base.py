"""The narrow contract every channel adapter fulfils: verify, parse, send, close.

Verifying and parsing are pure functions of a `WebhookRequest` (headers, query and raw body),
so they are tested without a server; only `send` does I/O. The engine mounts a webhook
adapter's routes under `/webhooks/<name>` and does the rest: body limits, storing each parsed
message durably before answering, metrics and logs.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from aiohttp import web

from omnichannel.blobs import BlobStore
from omnichannel.delivery import Outgoing
from omnichannel.http import json_response
from omnichannel.model import InboundMessage, StatusUpdate
from omnichannel.store.ingest import Stored


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can carry, so replies are shaped before they are sent."""

    max_text_length: int
    media: bool
    #: The webhook's own answer already tells the sender the tracking number, so no
    #: automatic acknowledgement is sent through the channel.
    acknowledges_inline: bool = False
    #: How long after the citizen's last message free text may still be sent (WhatsApp's
    #: customer-service window); later, only an approved template goes out.
    reply_window: timedelta | None = None
    #: Whether approved templates can be sent (`Outgoing.template`).
    templates: bool = False


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A provider's request as plain data: what verification and parsing look at."""

    method: str
    #: The URL the provider called, as it signed it (behind a proxy: the public URL).
    url: str
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)


class SignatureError(Exception):
    """The request is not proven to come from the provider; nothing of it is stored."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class ChannelDisabled(Exception):
    """The channel has no credentials configured, so it takes nothing."""


class PayloadError(Exception):
    """The body is well signed but not a message the channel understands."""

    def __init__(self, message: str, *, status: int = 422,
                 detail: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.detail = list(detail)


@dataclass(frozen=True, slots=True)
class Download:
    """A file fetched from the provider."""

    content: bytes
    content_type: str | None = None
    filename: str | None = None


class FetchError(Exception):
    """A file could not be fetched; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class TooLarge(FetchError):
    """The file is larger than the provider lets us download, or than we keep."""

    def __init__(self, message: str, *, limit_bytes: int | None = None) -> None:
        super().__init__(message, retryable=False)
        #: The provider's own download limit, when it is what the file exceeds.
        self.limit_bytes = limit_bytes


@dataclass(frozen=True, slots=True)
class EngineAccess:
    """What an adapter that runs its own server or connection may ask of the engine."""

    #: Store a citizen's message durably (group-committed); returns once it is on disk.
    submit: Callable[[InboundMessage], Awaitable[Stored]]
    #: Record providers' delivery receipts.
    record_receipts: Callable[[list[StatusUpdate]], Awaitable[object]]
    #: Messages to and from one address on a channel account after a message id, oldest
    #: first: `thread(channel, account, address, after_id)`.
    thread: Callable[[str, str, str, int], Awaitable[list[dict[str, Any]]]]
    #: The content-addressed file store: files that arrive inside a message (an e-mail's
    #: attachments, a widget's upload) are put here before the message is submitted, and the
    #: message's `Attachment.blob_id` names them.
    blobs: BlobStore
    #: A conversation's latest citizen messages, newest first, with their provider ids and
    #: raw records (what an e-mail reply needs to thread): `citizen_messages(conversation_id)`.
    citizen_messages: Callable[[int], Awaitable[list[dict[str, Any]]]] | None = None


class Adapter(abc.ABC):
    """One channel account: verifies and parses what arrives, sends what leaves."""

    #: Channel name: the webhook path `/webhooks/<name>` and `InboundMessage.channel`.
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: HTTP methods the provider uses on the webhook (a GET handshake, for some).
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})
    #: Whether messages arrive on `/webhooks/<name>`; False for a channel that receives them
    #: over a server or connection of its own (`start`).
    webhook: ClassVar[bool] = True
    #: How a channel without a webhook receives messages, told to whoever calls its webhook.
    receives_over: ClassVar[str] = "its own connection or server"

    @abc.abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise `SignatureError` unless the request provably comes from the provider."""

    @abc.abstractmethod
    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """The messages a verified request carries; raise `PayloadError` if it is malformed."""

    def statuses(self, request: WebhookRequest) -> list[StatusUpdate]:
        """Delivery receipts for our outbound messages that a verified request carries."""
        return []

    def carries(self) -> frozenset[str]:
        """The channels of the messages this adapter takes and sends.

        Most adapters carry their own channel only; one provider may carry several (Twilio
        carries both SMS and WhatsApp).
        """
        return frozenset({self.name})

    def serves(self, channel: str, account: str) -> bool:
        """Whether replies in conversations of `channel` and `account` leave through here."""
        return channel in self.carries()

    def bound_queue(self, account: str) -> str | None:
        """The OPD an account belongs to (a department's own chat widget), rules or not."""
        return None

    def capabilities_of(self, channel: str) -> Capabilities:
        """What `channel` can carry through this adapter."""
        return self.capabilities

    def acknowledge(self, request: WebhookRequest, stored: Sequence[Stored]) -> web.Response:
        """The answer the provider expects once every message of `request` is stored."""
        return json_response({"stored": [s.message_id for s in stored]})

    @abc.abstractmethod
    async def send(self, message: Outgoing) -> str | None:
        """Hand a reply to the provider; returns its id for the message, if it gives one.

        Raises `omnichannel.delivery.DeliveryError`, saying whether a retry may help.
        """

    async def fetch(self, account: str, url: str, *, max_bytes: int) -> Download:
        """Download an attachment the provider holds (`Attachment.url` as `parse` set it).

        Raises `TooLarge` past `max_bytes` (or the provider's own limit) and `FetchError`
        otherwise; never reads more than `max_bytes` into memory.
        """
        raise FetchError(f"the {self.name} channel keeps no files to fetch", retryable=False)

    async def start(self, engine: EngineAccess) -> None:  # noqa: B027 - webhooks need nothing
        """Begin taking messages on a server or connection of the adapter's own (SMTP, XMPP).

        Called once the engine's stages run; a connection that drops is re-established with
        `omnichannel.adapters.connection.reconnecting`, not given up.
        """

    async def close(self) -> None:  # noqa: B027 - most adapters hold nothing to release
        """Release connections the adapter holds."""
