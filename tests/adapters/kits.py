"""Per-adapter kits for the shared contract suite: how to make a genuine request, and a fake."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
from pydantic import SecretStr
from telegram import Chat, Contact, Message, PhotoSize, Update, User
from telegram import Location as TgLocation
from twilio.request_validator import RequestValidator

from omnichannel.adapters.api import ApiAdapter
from omnichannel.adapters.base import Adapter, WebhookRequest
from omnichannel.adapters.telegram import TelegramAdapter
from omnichannel.adapters.twilio import TwilioAdapter
from omnichannel.adapters.whatsapp import WhatsAppAdapter
from omnichannel.settings import TelegramBot, TwilioAccount, WhatsAppAccount

TOKEN = "contract-suite-token-0123456789"


@dataclass
class Kit:
    """Everything the contract suite needs to exercise one adapter."""

    name: str
    #: Builds the adapter, its provider API at `base_url` (a fake), sharing `session`.
    build: Callable[[str, aiohttp.ClientSession], Adapter]
    #: Genuine requests, each with the normalised fields the adapter must parse out of it.
    fixtures: list[tuple[WebhookRequest, dict[str, Any]]]
    #: The same request as a forger would send it (wrong or missing credentials).
    forgeries: Callable[[WebhookRequest], list[WebhookRequest]]
    #: Whether the credential covers the body, so a tampered body must be refused too.
    signs_body: bool
    #: Path of the provider's send API on the fake provider server.
    provider_path: str
    #: The provider's answer to a send, by HTTP status, in its own wire format.
    provider_reply: Callable[[int], dict[str, Any]]
    #: Channel, account and recipient of the reply the suite sends.
    account: str = "default"
    channel: str = ""
    recipient: str = "4242"
    #: Whether the provider answers a send with its id for the message (a receipt).
    gives_receipt: bool = True

    def __post_init__(self) -> None:
        self.channel = self.channel or self.name


def _api_request(body: dict[str, Any], token: str | None = TOKEN) -> WebhookRequest:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return WebhookRequest(method="POST", url="https://lapor.example/webhooks/api",
                          headers=headers, body=orjson.dumps(body))


def _api_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    headers = dict(request.headers)
    del headers["Authorization"]
    wrong = {**headers, "Authorization": "Bearer not-the-token-at-all-000"}
    basic = {**headers, "Authorization": "Basic " + TOKEN}
    return [replace(request, headers=headers), replace(request, headers=wrong),
            replace(request, headers=basic)]


API = Kit(
    name="api",
    build=lambda base, session: ApiAdapter(token=SecretStr(TOKEN),
                                           callback_url=base + "/callback", session=session),
    fixtures=[
        (_api_request({"external_id": "f-1", "sender_id": "c-1", "text": "Jalan rusak"}),
         {"channel": "api", "account": "default", "external_id": "f-1", "sender_id": "c-1",
          "text": "Jalan rusak"}),
        (_api_request({"external_id": "f-2", "sender_id": "c-2", "sender_phone": "0812 3456 7890",
                       "account": "offline-desk", "text": "",
                       "location": {"latitude": -3.7, "longitude": 128.2},
                       "attachments": [{"content_type": "image/jpeg",
                                        "url": "https://files.example/a.jpg", "size": 2048}]}),
         {"channel": "api", "account": "offline-desk", "external_id": "f-2", "sender_id": "c-2",
          "phone": "+6281234567890", "text": "", "latitude": -3.7, "attachments": 1}),
    ],
    forgeries=_api_forgeries,
    signs_body=False,
    provider_path="/callback",
    provider_reply=lambda status: {"ok": status < 300},
    gives_receipt=False,
)

BOT_TOKEN = "123456:contract-suite-bot-token"
BOT_SECRET = "contract_suite_webhook_secret_0123"


def _telegram_request(update: Update, secret: str | None = BOT_SECRET) -> WebhookRequest:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return WebhookRequest(method="POST", url="https://lapor.example/webhooks/telegram",
                          headers=headers, body=update.to_json().encode())


def _telegram_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    headers = dict(request.headers)
    del headers["X-Telegram-Bot-Api-Secret-Token"]
    wrong = {**headers, "X-Telegram-Bot-Api-Secret-Token": BOT_SECRET[:-1] + "X"}
    return [replace(request, headers=headers), replace(request, headers=wrong)]


def _telegram_reply(status: int) -> dict[str, Any]:
    """Bot API answers: the sent Message on success, else ok=false with an error code."""
    if status < 300:
        # Like Telegram, a new id for every message sent into the chat.
        sent = Message(message_id=next(_SENT_IDS), date=_WHEN,
                       chat=Chat(id=4242, type=Chat.PRIVATE), text="ok")
        return {"ok": True, "result": sent.to_dict()}
    return {"ok": False, "error_code": status, "description": f"error {status}"}


_WHEN = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)
_SENT_IDS = itertools.count(77)
_CITIZEN = User(id=4242, first_name="Rina", last_name="Latuconsina", is_bot=False)
_CHAT = Chat(id=4242, type=Chat.PRIVATE)

TELEGRAM = Kit(
    name="telegram",
    build=lambda base, session: TelegramAdapter(
        [TelegramBot(account="lapor_ambon_bot", token=SecretStr(BOT_TOKEN),
                     webhook_secret=SecretStr(BOT_SECRET))],
        api_url=base, timeout_s=2,
    ),
    fixtures=[
        (_telegram_request(Update(update_id=1, message=Message(
            message_id=10, date=_WHEN, chat=_CHAT, from_user=_CITIZEN,
            text="Sampah di Batu Merah seng diangkut"))),
         {"channel": "telegram", "account": "lapor_ambon_bot", "external_id": "4242:10",
          "sender_id": "4242", "text": "Sampah di Batu Merah seng diangkut"}),
        (_telegram_request(Update(update_id=2, message=Message(
            message_id=11, date=_WHEN, chat=_CHAT, from_user=_CITIZEN,
            caption="Lubang di jalan", photo=(
                PhotoSize("small-id", "s1", 90, 90, file_size=1000),
                PhotoSize("large-id", "l1", 1280, 960, file_size=200_000))))),
         {"external_id": "4242:11", "text": "Lubang di jalan", "attachments": 1}),
        (_telegram_request(Update(update_id=3, message=Message(
            message_id=12, date=_WHEN, chat=_CHAT, from_user=_CITIZEN,
            location=TgLocation(longitude=128.18, latitude=-3.69)))),
         {"external_id": "4242:12", "text": "", "latitude": -3.69}),
        (_telegram_request(Update(update_id=4, message=Message(
            message_id=13, date=_WHEN, chat=_CHAT, from_user=_CITIZEN,
            contact=Contact(phone_number="6281234567890", first_name="Rina",
                            user_id=4242)))),
         {"external_id": "4242:13", "phone": "+6281234567890"}),
    ],
    forgeries=_telegram_forgeries,
    signs_body=False,
    provider_path=f"/bot{BOT_TOKEN}/sendMessage",
    provider_reply=_telegram_reply,
    account="lapor_ambon_bot",
)

TWILIO_SID = "AC" + "3f0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c"
TWILIO_TOKEN = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
#: Our SMS number, our WhatsApp sender, and a number of our messaging service (not listed).
TWILIO_SMS = "+6281100000001"
TWILIO_WA = "+6281100000002"
TWILIO_SERVICE_NUMBER = "+6281100000003"
TWILIO_SERVICE = "MG" + "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
#: The citizen.
CITIZEN_PHONE = "+6281234567890"
#: The URL Twilio calls, and signs.
TWILIO_URL = "https://lapor.example/webhooks/twilio"


def twilio_account(**overrides: Any) -> TwilioAccount:
    values: dict[str, Any] = {
        "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
        "numbers": [TWILIO_SMS, "whatsapp:" + TWILIO_WA],
        "messaging_service_sids": [TWILIO_SERVICE], **overrides,
    }
    return TwilioAccount(**values)


def twilio_request(fields: list[tuple[str, str]], *, url: str = TWILIO_URL,
                   token: str | None = TWILIO_TOKEN) -> WebhookRequest:
    """A webhook as Twilio sends it: the form signed over `url` and every field, blank ones too."""
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "I-Twilio-Idempotency-Token": f"idem-{len(fields)}"}
    if token is not None:
        headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(
            url, dict(fields))
    return WebhookRequest(method="POST", url=url, headers=headers,
                          body=urlencode(fields).encode())


def twilio_inbound(sid: str, body: str, *, sender: str = CITIZEN_PHONE, to: str = TWILIO_SMS,
                   extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """An inbound SMS's form as Twilio documents it, blank geographic fields included."""
    return [
        ("ToCountry", "ID"), ("ToState", ""), ("SmsMessageSid", sid), ("NumMedia", "0"),
        ("ToCity", ""), ("FromZip", ""), ("SmsSid", sid), ("FromState", ""),
        ("SmsStatus", "received"), ("FromCity", ""), ("Body", body), ("FromCountry", "ID"),
        ("To", to), ("ToZip", ""), ("NumSegments", "1"), ("MessageSid", sid),
        ("AccountSid", TWILIO_SID), ("From", sender), ("ApiVersion", "2010-04-01"), *extra,
    ]


def twilio_whatsapp_inbound(sid: str, body: str, *, extra: Sequence[tuple[str, str]] = (),
                     num_media: int = 0, message_type: str = "text") -> list[tuple[str, str]]:
    """An inbound WhatsApp message's form: prefixed addresses, ProfileName and WaId."""
    return [
        ("SmsMessageSid", sid), ("NumMedia", str(num_media)), ("ProfileName", "Rina Latuconsina"),
        ("MessageType", message_type), ("SmsSid", sid), ("WaId", CITIZEN_PHONE[1:]),
        ("SmsStatus", "received"), ("Body", body), ("To", "whatsapp:" + TWILIO_WA),
        ("NumSegments", "1"), ("ReferralNumMedia", "0"), ("MessageSid", sid),
        ("AccountSid", TWILIO_SID), ("From", "whatsapp:" + CITIZEN_PHONE),
        ("ApiVersion", "2010-04-01"), *extra,
    ]


def twilio_status(sid: str, status: str, *, channel: str = "sms",
                  error_code: str | None = None) -> list[tuple[str, str]]:
    """A status callback about one of our outbound messages (From is our number)."""
    prefix = "whatsapp:" if channel == "whatsapp" else ""
    ours = TWILIO_WA if channel == "whatsapp" else TWILIO_SMS
    fields = [("SmsSid", sid), ("SmsStatus", status), ("MessageStatus", status),
              ("To", prefix + CITIZEN_PHONE), ("MessageSid", sid), ("AccountSid", TWILIO_SID),
              ("From", prefix + ours), ("ApiVersion", "2010-04-01")]
    if error_code is not None:
        fields.insert(0, ("ErrorCode", error_code))
    return fields


def media_url(message_sid: str, media_sid: str, base: str = "https://api.twilio.com") -> str:
    return f"{base}/2010-04-01/Accounts/{TWILIO_SID}/Messages/{message_sid}/Media/{media_sid}"


def _twilio_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    headers = dict(request.headers)
    signature = headers.pop("X-Twilio-Signature")
    wrong = {**headers, "X-Twilio-Signature": signature[:-2] + ("A=" if signature[-2] != "A"
                                                                 else "B=")}
    fields = dict(_form_pairs(request.body))
    other = {**headers, "X-Twilio-Signature": RequestValidator(
        "0" * 32).compute_signature(request.url, fields)}
    return [replace(request, headers=headers), replace(request, headers=wrong),
            replace(request, headers=other)]


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


_twilio_sids = itertools.count(1)


def _twilio_reply(status: int) -> dict[str, Any]:
    """The Messages resource as Twilio answers a create, or its error JSON."""
    if status < 300:
        sid = f"SM{next(_twilio_sids):032x}"
        return {
            "account_sid": TWILIO_SID, "api_version": "2010-04-01", "body": "ok",
            "date_created": "Sat, 28 Nov 2026 01:02:03 +0000",
            "date_sent": None, "date_updated": "Sat, 28 Nov 2026 01:02:03 +0000",
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": TWILIO_SMS, "messaging_service_sid": None, "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid,
            "status": "queued", "to": CITIZEN_PHONE,
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}"
                                          "/Media.json"},
            "uri": f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}.json",
        }
    code = {400: 21211, 403: 20003, 429: 20429}.get(status, 20500)
    return {"code": code, "message": f"Twilio error {code}",
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


_SMS_SID = "SM" + "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
_MMS_SID = "MM" + "1b2c3d4e5f60718293a4b5c6d7e8f90a"

TWILIO = Kit(
    name="twilio",
    build=lambda base, session: TwilioAdapter([twilio_account()], session=session,
                                              api_url=base, timeout_s=2),
    fixtures=[
        (twilio_request(twilio_inbound(_SMS_SID, "Sampah di Batu Merah seng diangkut")),
         {"channel": "sms", "account": TWILIO_SMS, "external_id": _SMS_SID,
          "sender_id": CITIZEN_PHONE, "phone": CITIZEN_PHONE,
          "text": "Sampah di Batu Merah seng diangkut", "attachments": 0}),
        # Through a messaging service, to a number of the service not listed in `numbers`.
        (twilio_request(twilio_inbound(
            "SM" + "2c3d4e5f60718293a4b5c6d7e8f90a1b", "Lampu jalan mati di Waihaong",
            to=TWILIO_SERVICE_NUMBER, extra=[("MessagingServiceSid", TWILIO_SERVICE)])),
         {"channel": "sms", "account": TWILIO_SERVICE_NUMBER,
          "external_id": "SM" + "2c3d4e5f60718293a4b5c6d7e8f90a1b"}),
        (twilio_request(twilio_whatsapp_inbound("SM" + "3d4e5f60718293a4b5c6d7e8f90a1b2c",
                                         "Air PDAM mati tiga hari")),
         {"channel": "whatsapp", "account": TWILIO_WA, "sender_id": "whatsapp:" + CITIZEN_PHONE,
          "phone": CITIZEN_PHONE, "text": "Air PDAM mati tiga hari"}),
        (twilio_request(twilio_whatsapp_inbound(_MMS_SID, "Lubang di jalan", num_media=2,
                                         message_type="image", extra=[
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl0", media_url(_MMS_SID, "ME" + "a" * 32)),
            ("MediaContentType1", "image/png"),
            ("MediaUrl1", media_url(_MMS_SID, "ME" + "b" * 32))])),
         {"channel": "whatsapp", "external_id": _MMS_SID, "text": "Lubang di jalan",
          "attachments": 2}),
        (twilio_request(twilio_whatsapp_inbound("SM" + "4e5f60718293a4b5c6d7e8f90a1b2c3d", "",
                                         message_type="location", extra=[
            ("Latitude", "-3.6954"), ("Longitude", "128.1814"),
            ("Address", "Jl. Pantai Mardika, Ambon"), ("Label", "Pasar Mardika")])),
         {"channel": "whatsapp", "text": "", "latitude": -3.6954}),
    ],
    forgeries=_twilio_forgeries,
    signs_body=True,
    provider_path=f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
    provider_reply=_twilio_reply,
    channel="sms",
    account=TWILIO_SMS,
    recipient=CITIZEN_PHONE,
)

WA_APP_SECRET = "contract-suite-app-secret-0123456789"
WA_VERIFY_TOKEN = "contract-suite-verify-token-0123"
WA_ACCESS_TOKEN = "EAAGcontractSuiteAccessToken0123456789"
WA_PHONE_NUMBER_ID = "106540352242922"
WA_ACCOUNT = "lapor_ambon"
WA_VERSION = "v26.0"
#: The citizen's WhatsApp id: their phone number in international form, without `+`.
WA_CITIZEN = "6281234567890"
WA_ACCOUNTS = [{"account": WA_ACCOUNT, "phone_number_id": WA_PHONE_NUMBER_ID,
                "access_token": WA_ACCESS_TOKEN}]
WA_SIGNATURE = "X-Hub-Signature-256"
#: A minute before the suite runs: within WhatsApp's 24-hour reply window whenever it runs, so
#: end-to-end replies to these messages are free text (the window tests set their own times).
WA_TIMESTAMP = str(int(time.time()) - 60)


def whatsapp_adapter(base: str, session: aiohttp.ClientSession) -> WhatsAppAdapter:
    """The adapter of one phone number, its Graph API at `base`."""
    return WhatsAppAdapter(
        [WhatsAppAccount.model_validate(a) for a in WA_ACCOUNTS],
        app_secret=SecretStr(WA_APP_SECRET), verify_token=SecretStr(WA_VERIFY_TOKEN),
        session=session, api_url=base, api_version=WA_VERSION, timeout_s=2,
    )


def whatsapp_message(wamid: str, kind: str, content: Any, *, sender: str = WA_CITIZEN,
                     timestamp: str = WA_TIMESTAMP, **extra: Any) -> dict[str, Any]:
    """A citizen's message as it appears in `value.messages[]`."""
    return {"from": sender, "id": wamid, "timestamp": timestamp, "type": kind, kind: content,
            **extra}


def whatsapp_value(messages: Sequence[dict[str, Any]] = (),
                   statuses: Sequence[dict[str, Any]] = (),
                   phone_number_id: str = WA_PHONE_NUMBER_ID,
                   contacts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One change's `value`: what one phone number received."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "6291100001111", "phone_number_id": phone_number_id},
    }
    if messages:
        value["contacts"] = contacts if contacts is not None else [
            {"profile": {"name": "Rina Latuconsina"}, "wa_id": WA_CITIZEN}]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return value


def whatsapp_body(*values: dict[str, Any]) -> dict[str, Any]:
    """A notification: one entry whose changes carry `values` (field `messages`)."""
    return {"object": "whatsapp_business_account", "entry": [
        {"id": "102290129340398",
         "changes": [{"value": value, "field": "messages"} for value in values]}]}


def whatsapp_request(body: dict[str, Any] | bytes, secret: str = WA_APP_SECRET
                     ) -> WebhookRequest:
    """A POST signed as Meta documents: HMAC-SHA256 of the raw body with the app secret."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return WebhookRequest(method="POST", url="https://lapor.example/webhooks/whatsapp",
                          headers={"Content-Type": "application/json",
                                   WA_SIGNATURE: f"sha256={signature}"},
                          body=raw)


def whatsapp_status(wamid: str, status: str, timestamp: str = WA_TIMESTAMP,
                    errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A receipt of one of our messages, as in `value.statuses[]`."""
    result: dict[str, Any] = {"id": wamid, "status": status, "timestamp": timestamp,
                              "recipient_id": WA_CITIZEN}
    if status in ("sent", "delivered", "read"):
        result["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service"}
    if errors is not None:
        result["errors"] = errors
    return result


def _whatsapp_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    headers = dict(request.headers)
    del headers[WA_SIGNATURE]
    forged = hmac.new(b"not-the-app-secret-at-all", request.body, hashlib.sha256).hexdigest()
    # The older SHA-1 header form, even correctly keyed, is not what we check.
    sha1 = hmac.new(WA_APP_SECRET.encode(), request.body, hashlib.sha1).hexdigest()
    return [replace(request, headers=headers),
            replace(request, headers={**headers, WA_SIGNATURE: f"sha256={forged}"}),
            replace(request, headers={**headers, WA_SIGNATURE: f"sha1={sha1}"}),
            replace(request, headers={**headers, WA_SIGNATURE: "sha256="})]


#: Graph API errors by HTTP status, as Meta answers them.
GRAPH_ERRORS: dict[int, dict[str, Any]] = {
    400: {"message": "(#131047) Re-engagement message", "type": "OAuthException",
          "code": 131047, "error_data": {
              "messaging_product": "whatsapp",
              "details": "Message failed to send because more than 24 hours have passed "
                         "since the customer last replied to this number."},
          "fbtrace_id": "AbC1dEf2GhI3"},
    403: {"message": "(#10) Application does not have permission for this action",
          "type": "OAuthException", "code": 10, "fbtrace_id": "AbC1dEf2GhI4"},
    429: {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
          "error_data": {"messaging_product": "whatsapp",
                         "details": "Cloud API message throughput has been reached."},
          "fbtrace_id": "AbC1dEf2GhI5"},
    500: {"message": "(#131000) Something went wrong", "type": "OAuthException",
          "code": 131000, "error_data": {"messaging_product": "whatsapp",
                                         "details": "Message failed to send due to an "
                                                    "unknown error."},
          "fbtrace_id": "AbC1dEf2GhI6"},
    503: {"message": "(#131016) Service unavailable", "type": "OAuthException",
          "code": 131016, "fbtrace_id": "AbC1dEf2GhI7"},
}
_WAMIDS = itertools.count(1)


def graph_reply(status: int) -> dict[str, Any]:
    """The Graph API's answer to a send: the new message's wamid, or the error."""
    if status < 300:
        return {"messaging_product": "whatsapp",
                "contacts": [{"input": WA_CITIZEN, "wa_id": WA_CITIZEN}],
                "messages": [{"id": f"wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABEYEk9VVD{next(_WAMIDS):05d}",
                              "message_status": "accepted"}]}
    return {"error": GRAPH_ERRORS.get(status, {"message": "(#1) An unknown error occurred",
                                               "type": "OAuthException", "code": 1})}


def wamid(n: int) -> str:
    """A citizen's message id (`wamid.` and base64, as Meta makes them)."""
    return f"wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABIYFjNFQjA{n:05d}QTFCMkMzRDRFNUY2AA=="


def _wa(n: int, kind: str, content: Any, **extra: Any) -> WebhookRequest:
    return whatsapp_request(whatsapp_body(whatsapp_value(
        [whatsapp_message(wamid(n), kind, content, **extra)])))


_WA_EXPECTED = {"channel": "whatsapp", "account": WA_ACCOUNT, "sender_id": WA_CITIZEN,
                "phone": "+6281234567890"}
_REPLY_TO = {"context": {"from": "6291100001111", "id": "wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABEYEk"
                                                      "9VVDAwMDAxAA=="}}

WHATSAPP = Kit(
    name="whatsapp",
    build=whatsapp_adapter,
    fixtures=[
        (_wa(1, "text", {"body": "Sampah di Batu Merah seng diangkut"}),
         {**_WA_EXPECTED, "external_id": wamid(1), "text": "Sampah di Batu Merah seng diangkut",
          "attachments": 0}),
        (_wa(2, "image", {"caption": "Lubang di jalan Sultan Hairun", "mime_type": "image/jpeg",
                          "sha256": "Vsx3vIWSKlvuVMJ8e4J2FMPgq8yS53u8DSdpkxhOIuY=",
                          "id": "1479537139650973"}),
         {**_WA_EXPECTED, "text": "Lubang di jalan Sultan Hairun", "attachments": 1}),
        (_wa(3, "document", {"caption": "Surat pengaduan RT 02", "filename": "pengaduan.pdf",
                             "mime_type": "application/pdf",
                             "sha256": "kMZ2c0iiTYg3tJ4sWnWzVVHQ/4a4m0TJtzVzZ8uCEa4=",
                             "id": "1003383421387256"}),
         {**_WA_EXPECTED, "text": "Surat pengaduan RT 02", "attachments": 1}),
        (_wa(4, "audio", {"mime_type": "audio/ogg; codecs=opus",
                          "sha256": "x3oPGQ0xJXUjOeIJV0MFp2sPDTTIeEgk0GXQXnBlrJ0=",
                          "id": "1006213151155555", "voice": True}),
         {**_WA_EXPECTED, "text": "", "attachments": 1}),
        (_wa(5, "video", {"caption": "Banjir di Batu Gajah", "mime_type": "video/mp4",
                          "sha256": "QcSS9y2AxUpDPY7/kdCAKnvmbvg3vG2dVWsL/yvEyqU=",
                          "id": "1214433230033339"}),
         {**_WA_EXPECTED, "text": "Banjir di Batu Gajah", "attachments": 1}),
        (_wa(6, "location", {"latitude": -3.6954, "longitude": 128.1814,
                             "name": "Pasar Mardika", "address": "Jl. Pantai Mardika, Ambon"}),
         {**_WA_EXPECTED, "text": "", "latitude": -3.6954, "attachments": 0}),
        (_wa(7, "contacts", [{"name": {"formatted_name": "Budi Santoso", "first_name": "Budi",
                                       "last_name": "Santoso"},
                              "phones": [{"phone": "+62 812-9876-5432", "wa_id": "6281298765432",
                                          "type": "CELL"}]}]),
         {**_WA_EXPECTED, "text": "Kontak: Budi Santoso +62 812-9876-5432"}),
        (_wa(8, "interactive", {"type": "button_reply",
                                "button_reply": {"id": "lapor-baru", "title": "Laporan baru"}},
             **_REPLY_TO),
         {**_WA_EXPECTED, "text": "Laporan baru"}),
        (_wa(9, "interactive", {"type": "list_reply", "list_reply": {
            "id": "kategori-sampah", "title": "Sampah",
            "description": "Sampah belum diangkut"}}, **_REPLY_TO),
         {**_WA_EXPECTED, "text": "Sampah - Sampah belum diangkut"}),
        (_wa(10, "button", {"payload": "MASIH_BERMASALAH", "text": "Masih bermasalah"},
             **_REPLY_TO),
         {**_WA_EXPECTED, "text": "Masih bermasalah"}),
    ],
    forgeries=_whatsapp_forgeries,
    signs_body=True,
    provider_path=f"/{WA_VERSION}/{WA_PHONE_NUMBER_ID}/messages",
    provider_reply=graph_reply,
    account=WA_ACCOUNT,
    recipient=WA_CITIZEN,
)

KITS = [API, TELEGRAM, WHATSAPP, TWILIO]

# E-mail: the relay's SMTP transaction, as the receiver hands it to verify and parse.
EMAIL_MAILBOX = "lapor@ambon.go.id"
EMAIL_CITIZEN = "rina.latuconsina@example.org"


def email_request(body: bytes, *, rcpt: str = EMAIL_MAILBOX, peer: str = "127.0.0.1",
                  mail_from: str = EMAIL_CITIZEN) -> WebhookRequest:
    """What the relay handed over: the envelope and the message's bytes."""
    from omnichannel.adapters.email import MAIL_FROM, PEER, RCPT_TO

    return WebhookRequest(method="SMTP", url="smtp://127.0.0.1:2525", body=body,
                          headers={PEER: peer, MAIL_FROM: mail_from, RCPT_TO: rcpt})


def email_message(message_id: str, subject: str, text: str, *, sender: str = EMAIL_CITIZEN,
                  extra: dict[str, str] | None = None, files: int = 0) -> bytes:
    """A citizen's mail as their client writes it."""
    from email.message import EmailMessage
    from email.policy import SMTP

    mail = EmailMessage(policy=SMTP)
    mail["From"] = f"Rina Latuconsina <{sender}>"
    mail["To"] = EMAIL_MAILBOX
    mail["Subject"] = subject
    mail["Date"] = "Sat, 28 Nov 2026 09:02:03 +0900"
    mail["Message-ID"] = f"<{message_id}>"
    for key, value in (extra or {}).items():
        mail[key] = value
    mail.set_content(text)
    for n in range(files):
        mail.add_attachment(b"\xff\xd8\xff photo %d" % n, maintype="image", subtype="jpeg",
                            filename=f"foto-{n}.jpg")
    return mail.as_bytes()


def _email_adapter(_base: str, _session: aiohttp.ClientSession) -> Adapter:
    from omnichannel.adapters.email import EmailAdapter
    from omnichannel.settings import EmailMailbox

    return EmailAdapter([EmailMailbox(address=EMAIL_MAILBOX, account="lapor")],
                        relay_networks=["127.0.0.0/8", "::1/128"], timeout_s=2)


def _email_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    from omnichannel.adapters.email import PEER, RCPT_TO

    return [replace(request, headers={**request.headers, RCPT_TO: "someone@ambon.go.id"}),
            replace(request, headers={**request.headers, PEER: "203.0.113.9"})]


EMAIL = Kit(
    name="email",
    build=_email_adapter,
    fixtures=[
        (email_request(email_message("k1@example.org", "Sampah di Batu Merah",
                                     "Sudah tiga hari seng diangkut.")),
         {"channel": "email", "account": "lapor", "external_id": "k1@example.org",
          "sender_id": EMAIL_CITIZEN,
          "text": "Sampah di Batu Merah\n\nSudah tiga hari seng diangkut.", "attachments": 0}),
        (email_request(email_message("k2@example.org", "Re: Lubang [AMB-2026-000007]",
                                     "Ini fotonya.", files=2)),
         {"external_id": "k2@example.org", "text": "Ini fotonya.", "attachments": 2}),
    ],
    forgeries=_email_forgeries,
    signs_body=False,
    # Replies leave by SMTP, not HTTP: tests/adapters/test_email.py sends them to a real sink.
    provider_path="",
    provider_reply=lambda status: {},
    account="lapor",
    recipient=EMAIL_CITIZEN,
)
KITS.append(EMAIL)
