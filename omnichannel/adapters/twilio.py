"""Twilio: SMS and WhatsApp in through one signed form webhook, out through its Messages API.

One adapter serves every configured account. Twilio signs each webhook with the account's auth
token over the exact URL it called and every form field (blank ones included), so the form is
kept whole and validated with twilio's own `RequestValidator`. A conversation's account is our
number the citizen wrote to, so a reply leaves from the same number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import structlog
from aiohttp import web
from multidict import MultiDict
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from yarl import URL

from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    ChannelDisabled,
    Download,
    FetchError,
    PayloadError,
    SignatureError,
    TooLarge,
    WebhookRequest,
)
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import (
    Attachment,
    DeliveryStatus,
    InboundMessage,
    Location,
    Sender,
    StatusUpdate,
)
from omnichannel.phones import normalise_phone
from omnichannel.settings import TwilioAccount
from omnichannel.store.ingest import Stored

log = structlog.get_logger(__name__)

SMS, WHATSAPP = "sms", "whatsapp"
CHANNELS = frozenset({SMS, WHATSAPP})
#: Twilio's channel address prefix of WhatsApp senders and recipients.
WA_PREFIX = "whatsapp:"
SIGNATURE_HEADER = "X-Twilio-Signature"
#: Twilio's limit on a message body, in characters, on SMS and WhatsApp alike.
MAX_BODY = 1600
#: An empty answer, so Twilio sends nothing itself; replies go through the API.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
_MAX_REDIRECTS = 3

#: Callback statuses we record; queued, accepted, sending and scheduled say nothing new.
_STATUSES = {
    "sent": DeliveryStatus.SENT, "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ, "failed": DeliveryStatus.FAILED,
    "undelivered": DeliveryStatus.FAILED,
}
#: What the commonest delivery error codes mean (https://www.twilio.com/docs/api/errors/<code>),
#: as status callbacks carry the code and often no message.
ERROR_MEANINGS = {
    "30003": "unreachable destination handset",
    "30004": "message blocked by the recipient or carrier",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error from the carrier",
    "21610": "the recipient has unsubscribed (STOP)",
    "63016": "outside the WhatsApp 24-hour window: only an approved template can be sent",
}
_ACCOUNT_IN_URL = re.compile(r"/Accounts/(AC[0-9a-fA-F]{32})/")

# twilio logs every request and response at INFO; our own lines say what matters.
_HTTP_LOG = logging.getLogger("omnichannel.twilio.http")
_HTTP_LOG.setLevel(logging.WARNING)


class TwilioAdapter(Adapter):
    """Every configured Twilio account's webhook (messages and status callbacks) and sender."""

    name = "twilio"
    # Twilio carries MMS and WhatsApp media, but only from a public MediaUrl, which the engine
    # does not offer yet: `media` is off so the agent API refuses files at once (422) instead
    # of accepting a reply that could only fail. Citizens' media comes in all the same.
    capabilities = Capabilities(max_text_length=MAX_BODY, media=False)
    whatsapp_capabilities = Capabilities(max_text_length=MAX_BODY, media=False,
                                         reply_window=timedelta(hours=24), templates=True)

    def __init__(
        self, accounts: list[TwilioAccount], *, session: aiohttp.ClientSession,
        api_url: str = "https://api.twilio.com", timeout_s: float = 10.0,
        phone_region: str = "ID", public_url: str | None = None,
    ) -> None:
        self._by_sid = {a.account_sid: a for a in accounts}
        self._by_number = {n: a for a in accounts for n in a.numbers}
        #: Numbers of configured messaging services, learned from validly signed inbound
        #: messages (kept in memory: list them in `numbers` to serve them after a restart).
        self._learned: dict[str, TwilioAccount] = {}
        self._session = session
        self._api_url = api_url.rstrip("/")
        self._api_origin = URL(self._api_url).origin()
        self._timeout_s = timeout_s
        self._phone_region = phone_region
        # Receipts come back to our own webhook, signed over this very URL.
        self._status_callback = f"{public_url.rstrip('/')}/webhooks/twilio" if public_url else None
        # Made at the first send, inside the running loop (its aiohttp session needs one).
        self._http: AsyncTwilioHttpClient | None = None
        self._clients: dict[str, Client] = {}
        #: Parts of a long reply already sent (first SID, count), so a retry resumes after them
        #: instead of sending them twice.
        self._progress: dict[int, tuple[str, int]] = {}

    # -- inbound -------------------------------------------------------------------------

    def verify(self, request: WebhookRequest) -> None:
        """`X-Twilio-Signature` must be the form's signature by its account's auth token."""
        if not self._by_sid:
            raise ChannelDisabled("the twilio channel is disabled: no account is configured")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise SignatureError(f"missing {SIGNATURE_HEADER} header")
        form = _form(request)
        account = self._by_sid.get(form.get("AccountSid", ""))
        if account is None:
            raise SignatureError("AccountSid is not a configured Twilio account")
        validator = RequestValidator(account.auth_token.get_secret_value())
        # Only the account is checked, never the number: a validly signed webhook to a number
        # not listed (or one of a messaging service) still carries a citizen's message.
        if not validator.validate(request.url, form, signature):
            raise SignatureError(f"wrong {SIGNATURE_HEADER} (is public_url the URL Twilio calls?)")

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """The citizen's message of an inbound webhook; a status callback carries none."""
        form = _form(request)
        if not _is_inbound(form):
            return []
        sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
        sender, to = form.get("From", ""), form.get("To", "")
        if not (sid and sender and to):
            raise PayloadError("not a Twilio message: MessageSid, From and To are required",
                               status=400)
        account = self._address(to)
        self._learn(account, form)
        return [InboundMessage(
            channel=_channel(sender), account=account, external_id=sid,
            # The address as Twilio gave it ("whatsapp:+62..."): replies are sent to it.
            sender=Sender(id=sender, name=form.get("ProfileName") or None,
                          phone=normalise_phone(sender, self._phone_region)),
            text=form.get("Body", ""),
            # Twilio's webhooks carry no timestamp: the engine's arrival time stands in.
            sent_at=None,
            attachments=_attachments(form), location=_location(form), raw=dict(form.items()),
        )]

    def statuses(self, request: WebhookRequest) -> list[StatusUpdate]:
        """The delivery receipt of a status callback about one of our outbound messages."""
        form = _form(request)
        status = _STATUSES.get(form.get("MessageStatus", "").lower())
        sid = form.get("MessageSid") or form.get("SmsSid")
        ours = form.get("From", "")
        if status is None or not sid or not ours:
            return []
        error = None
        if status is DeliveryStatus.FAILED:
            code = form.get("ErrorCode", "")
            meaning = (form.get("ErrorMessage") or ERROR_MEANINGS.get(code)
                       or f"see https://www.twilio.com/docs/api/errors/{code}")
            error = (f"{code}: {meaning}" if code
                     else f"Twilio reports the message {form['MessageStatus']}")
        # Callbacks carry no timestamp either: the time of arrival is the best we know.
        return [StatusUpdate(channel=_channel(ours), account=self._address(ours),
                             external_id=sid, status=status, at=datetime.now(UTC), error=error)]

    def acknowledge(self, request: WebhookRequest, stored: Sequence[Stored]) -> web.Response:
        """Empty TwiML: Twilio sends nothing back itself, and retries nothing."""
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    # -- routing -------------------------------------------------------------------------

    def carries(self) -> frozenset[str]:
        """SMS and WhatsApp: the adapter is named after neither."""
        return CHANNELS

    def serves(self, channel: str, account: str) -> bool:
        """SMS and WhatsApp conversations on one of our numbers."""
        return channel in CHANNELS and self._account_of(account) is not None

    def capabilities_of(self, channel: str) -> Capabilities:
        """WhatsApp has a 24-hour reply window and templates; SMS neither."""
        return self.whatsapp_capabilities if channel == WHATSAPP else self.capabilities

    def _address(self, value: str) -> str:
        """Our number of an address (`whatsapp:+62...`) in E.164; a short code stays as it is."""
        bare = value[len(WA_PREFIX):] if value.lower().startswith(WA_PREFIX) else value
        return normalise_phone(bare, self._phone_region) or bare

    def _account_of(self, number: str) -> TwilioAccount | None:
        number = self._address(number)
        return self._by_number.get(number) or self._learned.get(number)

    def _learn(self, number: str, form: MultiDict[str]) -> None:
        """Remember that a number receiving through one of an account's services is ours."""
        account = self._by_sid.get(form.get("AccountSid", ""))
        if account is None or self._account_of(number) is not None:
            return
        if form.get("MessagingServiceSid") in account.messaging_service_sids:
            self._learned[number] = account
        else:
            log.warning("twilio_number_not_listed", number=number,
                        account_sid=account.account_sid,
                        hint="add it to numbers, or its service to messaging_service_sids, "
                             "so replies can leave from it")

    # -- outbound ------------------------------------------------------------------------

    async def send(self, message: Outgoing) -> str | None:
        """One Messages API call per part of the text (or the template); the first part's SID."""
        if message.channel not in CHANNELS:
            raise DeliveryError(f"twilio carries sms and whatsapp, not {message.channel!r}",
                                retryable=False)
        account = self._account_of(message.account)
        if account is None:
            raise DeliveryError(f"{message.account} is not a number of a configured Twilio "
                                "account", retryable=False)
        if message.files:
            # Twilio downloads media from a public MediaUrl; the engine serves its files to
            # agents only, so sending them would need a public, unguessable URL first.
            raise DeliveryError("files cannot be sent through Twilio yet: send the text alone",
                                retryable=False)
        prefix = WA_PREFIX if message.channel == WHATSAPP else ""
        fields: dict[str, Any] = {
            "from_": prefix + self._address(message.account),
            "to": prefix + self._address(message.recipient) if prefix else message.recipient,
        }
        if self._status_callback:
            fields["status_callback"] = self._status_callback
        client = self._client(account)
        if message.template is not None:
            if message.channel != WHATSAPP:
                raise DeliveryError("templates are sent on WhatsApp only", retryable=False)
            fields["content_sid"] = message.template.name
            if message.template.parameters:
                fields["content_variables"] = json.dumps(
                    {str(i): value for i, value in enumerate(message.template.parameters, 1)})
            return await self._create(client, fields)
        parts = split_text(message.text, MAX_BODY)
        if not parts:
            raise DeliveryError("the message is empty", retryable=False)
        first, done = self._progress.get(message.message_id, ("", 0))
        try:
            for index in range(done, len(parts)):
                sid = await self._create(client, {**fields, "body": parts[index]})
                first = first or sid
                self._progress[message.message_id] = (first, index + 1)
        except DeliveryError as exc:
            if not exc.retryable:
                self._progress.pop(message.message_id, None)
            raise
        self._progress.pop(message.message_id, None)
        # Receipts are tracked by the first part's SID only; later parts' callbacks match no
        # message and are kept in the receipt table alone.
        return first

    async def _create(self, client: Client, fields: dict[str, Any]) -> str:
        """One `messages.create`, bounded here: AsyncTwilioHttpClient ignores its timeout."""
        try:
            async with asyncio.timeout(self._timeout_s):
                created = await client.messages.create_async(**fields)
        except (TwilioRestException, TwilioServiceException) as exc:
            # 5xx and 429 may pass; another 4xx (21211 bad number, 63016 outside the WhatsApp
            # window...) will not.
            status = int(exc.status)
            what = exc.msg if isinstance(exc, TwilioRestException) else exc.detail or exc.title
            meaning = ERROR_MEANINGS.get(str(exc.code))
            raise DeliveryError(
                f"Twilio refused the message (HTTP {status}): error {exc.code}: {what}"
                + (f" ({meaning})" if meaning else ""),
                retryable=status >= 500 or status == 429) from exc
        except TimeoutError as exc:
            raise DeliveryError(f"Twilio did not answer within {self._timeout_s:g} s",
                                retryable=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"Twilio unreachable: {exc!r}", retryable=True) from exc
        return str(created.sid)

    def _client(self, account: TwilioAccount) -> Client:
        client = self._clients.get(account.account_sid)
        if client is None:
            if self._http is None:
                self._http = AsyncTwilioHttpClient(logger=_HTTP_LOG)
            client = Client(account.account_sid, account.auth_token.get_secret_value(),
                            http_client=self._http)
            # Region and edge settings rewrite only twilio.com hosts; this moves the API itself.
            client.api.base_url = self._api_url
            self._clients[account.account_sid] = client
        return client

    async def fetch(self, account: str, url: str, *, max_bytes: int) -> Download:
        """GET a MediaUrl with the account's credentials, following Twilio's redirect to its CDN.

        Credentials go to the configured API host only, never to the redirect's other host.
        """
        target = URL(url)
        if target.origin() != self._api_origin:
            raise FetchError(f"{target.host} is not Twilio's API host", retryable=False)
        match = _ACCOUNT_IN_URL.search(target.path)
        owner = (self._by_sid.get(match.group(1)) if match else None) or self._account_of(account)
        if owner is None:
            raise FetchError("no configured Twilio account owns this media", retryable=False)
        secret = f"{owner.account_sid}:{owner.auth_token.get_secret_value()}"
        auth = {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                headers = auth if target.origin() == self._api_origin else {}
                async with self._session.get(target, headers=headers,
                                             allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = target.join(URL(resp.headers["Location"]))
                        if target.scheme not in ("http", "https"):
                            raise FetchError("Twilio redirected off the web", retryable=False)
                        continue
                    if resp.status >= 400:
                        raise FetchError(f"Twilio media: HTTP {resp.status}",
                                         retryable=resp.status >= 500 or resp.status == 429)
                    return await _read(resp, max_bytes)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FetchError(f"Twilio media unreachable: {exc!r}", retryable=True) from exc
        raise FetchError("too many redirects", retryable=False)

    async def close(self) -> None:
        """Close the HTTP session of the Twilio clients."""
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._clients.clear()


def split_text(text: str, limit: int) -> list[str]:
    """`text` in parts of at most `limit` characters, cut between words where there are any."""
    return textwrap.wrap(text, width=limit, expand_tabs=False, replace_whitespace=False,
                         break_on_hyphens=False, break_long_words=True)


def _form(request: WebhookRequest) -> MultiDict[str]:
    """The form body with blank fields kept: Twilio signs them too (`ToCity=`)."""
    return MultiDict(parse_qsl(request.body.decode("utf-8", errors="replace"),
                               keep_blank_values=True))


def _is_inbound(form: MultiDict[str]) -> bool:
    if form.get("SmsStatus", "").lower() == "received":
        return True
    return "MessageStatus" not in form and ("Body" in form or "NumMedia" in form)


def _channel(address: str) -> str:
    return WHATSAPP if address.lower().startswith(WA_PREFIX) else SMS


def _attachments(form: MultiDict[str]) -> tuple[Attachment, ...]:
    try:
        count = int(form.get("NumMedia", "0") or 0)
    except ValueError:
        count = 0
    # Trust the fields over the count: a media item present is kept whatever NumMedia says.
    count = max(count, sum(1 for key in form if key.startswith("MediaUrl")))
    return tuple(
        Attachment(content_type=form.get(f"MediaContentType{i}") or "application/octet-stream",
                   url=form[f"MediaUrl{i}"])
        for i in range(count) if form.get(f"MediaUrl{i}")
    )


def _location(form: MultiDict[str]) -> Location | None:
    try:
        latitude, longitude = float(form["Latitude"]), float(form["Longitude"])
    except (KeyError, ValueError):
        # A message with an unreadable location is still a message: keep it without one.
        return None
    return Location(latitude=latitude, longitude=longitude,
                    name=form.get("Label") or None, address=form.get("Address") or None)


async def _read(resp: aiohttp.ClientResponse, max_bytes: int) -> Download:
    """The body, refused as soon as it is known to pass `max_bytes`."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise TooLarge(f"the file has {resp.content_length} bytes; at most {max_bytes} are kept")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(f"the file passes {max_bytes} bytes")
    disposition = resp.content_disposition
    return Download(bytes(body), content_type=resp.content_type or None,
                    filename=disposition.filename if disposition else None)
