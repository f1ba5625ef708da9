"""WhatsApp Cloud API (Meta): signed webhooks in, Graph API messages and media out.

One Meta app serves every configured business phone number: its app secret signs every
webhook (`X-Hub-Signature-256`), and `metadata.phone_number_id` in the body names the number
(our account) a message was sent to. Replies go to `/<version>/<phone_number_id>/messages`
with that number's access token, through the HTTP session the engine shares.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel, SecretStr, ValidationError

from omnichannel.adapters import whatsapp_payload as payload
from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    ChannelDisabled,
    Download,
    FetchError,
    SignatureError,
    TooLarge,
    WebhookRequest,
)
from omnichannel.adapters.whatsapp_payload import CHANNEL, MEDIA_PREFIX, GraphError
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import InboundMessage, StatusUpdate
from omnichannel.settings import WhatsAppAccount
from omnichannel.store.ingest import Stored

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
#: Meta's throttling codes: the same request succeeds once the rate has dropped.
THROTTLED = frozenset({4, 80007, 130429, 131048, 131056})
#: Meta's own passing failures ("temporary downtime", "something went wrong", "service
#: unavailable"), which its error-code reference says to retry.
TRANSIENT = frozenset({1, 2, 131000, 131016, 133004})
#: The citizen last wrote more than 24 hours ago: only an approved template may be sent.
REENGAGEMENT = 131047
_PHONE = re.compile(r"\+?[0-9]+")
_MEDIA_ID = re.compile(r"[0-9A-Za-z_-]+")


class _Sent(BaseModel):
    id: str


class _SendAnswer(BaseModel):
    messages: list[_Sent]


class _MediaInfo(BaseModel):
    url: str
    mime_type: str | None = None
    file_size: int | None = None


class WhatsAppAdapter(Adapter):
    """Every configured business phone number's webhook, sender and media downloader."""

    name = CHANNEL
    methods = frozenset({"GET", "POST"})
    capabilities = Capabilities(max_text_length=4096, media=True,
                                reply_window=timedelta(hours=24), templates=True)

    def __init__(
        self, accounts: Sequence[WhatsAppAccount], *, app_secret: SecretStr | None,
        verify_token: SecretStr | None, session: aiohttp.ClientSession,
        api_url: str = "https://graph.facebook.com", api_version: str = "v26.0",
        timeout_s: float = 10.0, download_timeout_s: float = 120.0,
    ) -> None:
        self._accounts = {a.account: a for a in accounts}
        self._by_number = {a.phone_number_id: a.account for a in accounts}
        if len(self._accounts) != len(accounts) or len(self._by_number) != len(accounts):
            raise ValueError("WhatsApp account names and phone_number_ids must be unique")
        self._app_secret = app_secret
        self._verify_token = verify_token
        self._session = session
        self._base = f"{api_url.rstrip('/')}/{api_version}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A large video takes longer than an API call; a stalled one still ends.
        self._download_timeout = aiohttp.ClientTimeout(total=download_timeout_s,
                                                       sock_read=timeout_s)
        # parse() and statuses() see the same request one after the other: read it once.
        self._last: tuple[bytes, payload.Notification] | None = None

    def verify(self, request: WebhookRequest) -> None:
        """GET: Meta's subscription handshake; POST: the app secret's signature of the body."""
        if self._app_secret is None or not self._accounts:
            raise ChannelDisabled(
                "the whatsapp channel is disabled: no app secret or phone number is configured")
        if request.method == "GET":
            self._verify_subscription(request)
            return
        header = CIMultiDict(request.headers).get(SIGNATURE_HEADER)
        if header is None:
            raise SignatureError(f"missing {SIGNATURE_HEADER} header")
        scheme, _, given = header.partition("=")
        if scheme != "sha256" or not given:
            raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected sha256=<hex digest>")
        # Over the raw bytes, before any parsing: a re-serialised body would not match.
        expected = hmac.new(self._app_secret.get_secret_value().encode(), request.body,
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise SignatureError(f"wrong {SIGNATURE_HEADER}")

    def _verify_subscription(self, request: WebhookRequest) -> None:
        if self._verify_token is None:
            raise SignatureError("no whatsapp_verify_token is configured for the handshake")
        if request.query.get("hub.mode") != "subscribe":
            raise SignatureError("hub.mode must be subscribe")
        given = request.query.get("hub.verify_token", "").encode()
        if not hmac.compare_digest(given, self._verify_token.get_secret_value().encode()):
            raise SignatureError("wrong hub.verify_token")

    def _read(self, request: WebhookRequest) -> payload.Notification:
        if self._last is None or self._last[0] is not request.body:
            self._last = (request.body, payload.read(request.body, self._by_number))
        return self._last[1]

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """Every citizen message of every entry and change; the handshake carries none."""
        return [] if request.method == "GET" else self._read(request).messages

    def statuses(self, request: WebhookRequest) -> list[StatusUpdate]:
        """Sent, delivered, read and failed receipts of our messages."""
        return [] if request.method == "GET" else self._read(request).statuses

    def serves(self, channel: str, account: str) -> bool:
        """Replies leave through the phone number the citizen wrote to, if it is ours."""
        return channel == CHANNEL and account in self._accounts

    def acknowledge(self, request: WebhookRequest, stored: Sequence[Stored]) -> web.Response:
        """The handshake's challenge as plain text; 200 once a notification is stored."""
        if request.method == "GET":
            return web.Response(text=request.query.get("hub.challenge", ""),
                                content_type="text/plain")
        return super().acknowledge(request, stored)

    async def send(self, message: Outgoing) -> str | None:
        """Text, or an approved template, to the citizen; returns Meta's message id (wamid)."""
        account = self._account(message.account, DeliveryError)
        url = f"{self._base}/{account.phone_number_id}/messages"
        try:
            async with self._session.post(url, data=orjson.dumps(message_body(message)),
                                          headers=_auth(account, json=True),
                                          timeout=self._timeout) as resp:
                answer = await _json(resp)
                if resp.status >= 300:
                    raise _delivery_error(resp.status, answer)
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"Graph API unreachable: {exc}", retryable=True) from exc
        except TimeoutError as exc:
            raise DeliveryError("Graph API did not answer in time", retryable=True) from exc
        try:
            return _SendAnswer.model_validate(answer).messages[0].id
        except (ValidationError, IndexError):
            # Accepted all the same: sending again would reach the citizen twice.
            log.warning("whatsapp_send_without_id", message_id=message.message_id)
            return None

    async def fetch(self, account: str, url: str, *, max_bytes: int) -> Download:
        """A file of a citizen's message: its URL from the media endpoint, then its bytes."""
        media_id = url.removeprefix(MEDIA_PREFIX)
        if not url.startswith(MEDIA_PREFIX) or not _MEDIA_ID.fullmatch(media_id):
            raise FetchError(f"not a WhatsApp media reference: {url!r}", retryable=False)
        owner = self._account(account, FetchError)
        try:
            async with self._session.get(f"{self._base}/{media_id}", headers=_auth(owner),
                                         timeout=self._timeout) as resp:
                answer = await _json(resp)
                if resp.status >= 300:
                    error = _graph_error(answer)
                    raise FetchError(f"media {media_id}: HTTP {resp.status}: {error.describe()}",
                                     retryable=_retryable(resp.status, error.code))
            try:
                info = _MediaInfo.model_validate(answer)
            except ValidationError as exc:
                raise FetchError(f"media {media_id}: unexpected answer {exc}",
                                 retryable=True) from exc
            if info.file_size is not None and info.file_size > max_bytes:
                raise TooLarge(f"media {media_id} has {info.file_size} bytes, "
                               f"over the limit of {max_bytes}")
            return await self._download(owner, media_id, info, max_bytes)
        except aiohttp.ClientError as exc:
            raise FetchError(f"media {media_id}: Graph API unreachable: {exc}",
                             retryable=True) from exc
        except TimeoutError as exc:
            raise FetchError(f"media {media_id}: no answer in time", retryable=True) from exc

    async def _download(self, owner: WhatsAppAccount, media_id: str, info: _MediaInfo,
                        max_bytes: int) -> Download:
        async with self._session.get(info.url, headers=_auth(owner),
                                     timeout=self._download_timeout) as resp:
            if resp.status >= 300:
                # The URL lives for minutes only: a new one from a new fetch may work.
                raise FetchError(f"media {media_id}: download answered HTTP {resp.status}",
                                 retryable=resp.status >= 500 or resp.status in (403, 404, 429))
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise TooLarge(f"media {media_id} has {resp.content_length} bytes, "
                               f"over the limit of {max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"media {media_id} exceeds the limit of {max_bytes} bytes")
                chunks.append(chunk)
            return Download(content=b"".join(chunks),
                            content_type=info.mime_type or resp.content_type)

    def _account(self, account: str, error: type[DeliveryError] | type[FetchError]
                 ) -> WhatsAppAccount:
        found = self._accounts.get(account)
        if found is None:
            raise error(f"no WhatsApp phone number is configured for {account!r}",
                        retryable=False)
        return found


def message_body(message: Outgoing) -> dict[str, Any]:
    """The Graph API's JSON for a reply: free text, or a template with body parameters."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    # A citizen whose phone number Meta withholds is reached by their business-scoped id.
    body["to" if _PHONE.fullmatch(message.recipient) else "recipient"] = message.recipient
    template = message.template
    if template is None:
        body |= {"type": "text", "text": {"preview_url": False, "body": message.text}}
        return body
    spec: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.parameters:
        spec["components"] = [{"type": "body", "parameters": [
            {"type": "text", "text": p} for p in template.parameters]}]
    return body | {"type": "template", "template": spec}


def _auth(account: WhatsAppAccount, *, json: bool = False) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {account.access_token.get_secret_value()}"}
    if json:
        headers["Content-Type"] = "application/json"
    return headers


async def _json(resp: aiohttp.ClientResponse) -> Any:
    """The answer's JSON (Graph answers are small), or {} when it is not JSON."""
    try:
        return orjson.loads(await resp.content.read(1024 * 1024))
    except orjson.JSONDecodeError:
        return {}


def _graph_error(answer: Any) -> GraphError:
    try:
        return GraphError.model_validate(answer.get("error") if isinstance(answer, dict) else {})
    except ValidationError:
        return GraphError()


def _retryable(status: int, code: int | None) -> bool:
    return status >= 500 or status == 429 or code in THROTTLED or code in TRANSIENT


def _delivery_error(status: int, answer: Any) -> DeliveryError:
    error = _graph_error(answer)
    text = f"WhatsApp refused the message (HTTP {status}): {error.describe()}"
    if error.code == REENGAGEMENT:
        text += "; the 24-hour window has closed, only an approved template can be sent"
    return DeliveryError(text, retryable=_retryable(status, error.code))
