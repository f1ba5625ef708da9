"""Per-adapter kits for the shared contract suite: how to make a genuine request, and a fake."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr
from telegram import Chat, Contact, Message, PhotoSize, Update, User
from telegram import Location as TgLocation

from omnichannel.adapters.api import ApiAdapter
from omnichannel.adapters.base import Adapter, WebhookRequest
from omnichannel.adapters.telegram import TelegramAdapter
from omnichannel.settings import TelegramBot

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

KITS = [API, TELEGRAM]
