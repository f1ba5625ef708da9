"""Telegram: bots' webhooks in (python-telegram-bot's `Update`), replies out through its `Bot`.

One adapter serves every configured bot. Telegram sends each bot's secret in the
`X-Telegram-Bot-Api-Secret-Token` header; the secret both proves the request and names the
bot (account) it was sent to, so every bot needs its own.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from telegram import Bot, Update
from telegram import Message as TgMessage
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

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
from omnichannel.http import json_response
from omnichannel.model import Attachment, InboundMessage, Location, Sender
from omnichannel.phones import normalise_phone
from omnichannel.settings import TelegramBot
from omnichannel.store.ingest import Stored

CHANNEL = "telegram"

#: The answer to `/start`: what the service is and how to report.
START_TEXT = (
    "Selamat datang di layanan pengaduan Kota Ambon. Tulis laporan Anda di sini: apa "
    "masalahnya, di mana (nama jalan, kelurahan), dan sejak kapan. Foto dan lokasi sangat "
    "membantu. Setiap laporan mendapat nomor pelacakan dan diteruskan ke dinas yang berwenang."
)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
#: How `Attachment.url` names a file Telegram holds (fetched later through `getFile`).
FILE_PREFIX = "telegram-file:"
#: Longest caption of a photo or document; a longer reply text goes first as its own message.
CAPTION_LIMIT = 1024
#: The Bot API's `getFile` refuses larger files.
BOT_API_DOWNLOAD_LIMIT = 20 * 1000 * 1000


class TelegramAdapter(Adapter):
    """Every configured bot's webhook and sender."""

    name = CHANNEL
    capabilities = Capabilities(max_text_length=4096, media=True)

    def __init__(
        self, bots: list[TelegramBot], *, api_url: str = "https://api.telegram.org",
        timeout_s: float = 10.0, phone_region: str = "ID", start_text: str = START_TEXT,
    ) -> None:
        self._start_text = start_text
        secrets = [b.webhook_secret.get_secret_value() for b in bots]
        if len(set(secrets)) != len(secrets):
            raise ValueError("every Telegram bot needs its own webhook_secret")
        self._bots = {b.account: b for b in bots}
        self._phone_region = phone_region
        base = api_url.rstrip("/")
        # Ours to close: a Bot never initialised (that would call getMe) skips its shutdown.
        self._requests = {
            b.account: HTTPXRequest(connect_timeout=timeout_s, read_timeout=timeout_s,
                                    write_timeout=timeout_s, pool_timeout=timeout_s)
            for b in bots
        }
        self._clients = {
            b.account: Bot(b.token.get_secret_value(), base_url=f"{base}/bot",
                           base_file_url=f"{base}/file/bot", request=self._requests[b.account])
            for b in bots
        }

    def _account(self, request: WebhookRequest) -> str | None:
        given = request.headers.get(SECRET_HEADER, "").encode()
        found = None
        for bot in self._bots.values():
            # Compare with every bot, in constant time, so timing tells nothing.
            if hmac.compare_digest(given, bot.webhook_secret.get_secret_value().encode()):
                found = bot.account
        return found

    def verify(self, request: WebhookRequest) -> None:
        """The secret header must be one of the configured bots' webhook secrets."""
        if not self._bots:
            raise ChannelDisabled("the telegram channel is disabled: no bot is configured")
        if SECRET_HEADER not in request.headers:
            raise SignatureError(f"missing {SECRET_HEADER} header")
        if self._account(request) is None:
            raise SignatureError(f"wrong {SECRET_HEADER}")

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """The citizen's message in an update; other updates (edits, joins...) carry none."""
        account = self._account(request)
        assert account is not None, "parse() runs only after verify()"
        try:
            data = orjson.loads(request.body)
            update = Update.de_json(data, self._clients[account])
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise PayloadError(f"not a Telegram update: {exc}", status=400) from exc
        if update.edited_message is not None and update.edited_message.from_user is not None:
            return [self._normalise(account, update.edited_message, data)]
        message = update.message
        if message is None or message.from_user is None or _is_start(message):
            return []
        return [self._normalise(account, message, data)]

    def acknowledge(self, request: WebhookRequest, stored: Sequence[Stored]) -> web.Response:
        """200; to `/start`, the greeting, sent as a method call in the webhook's answer."""
        account = self._account(request)
        assert account is not None, "acknowledge() runs only after verify()"
        message = Update.de_json(orjson.loads(request.body), self._clients[account]).message
        if message is not None and _is_start(message):
            return json_response({"method": "sendMessage", "chat_id": message.chat.id,
                                  "text": self._start_text})
        return super().acknowledge(request, stored)

    def _normalise(self, account: str, message: TgMessage, raw: dict[str, Any]) -> InboundMessage:
        user = message.from_user
        assert user is not None
        phone = None
        if message.contact is not None and message.contact.user_id == user.id:
            phone = normalise_phone(message.contact.phone_number, self._phone_region)
        attachments: list[Attachment] = []
        if message.photo:
            largest = message.photo[-1]  # Telegram lists sizes smallest first
            attachments.append(Attachment(content_type="image/jpeg", size=largest.file_size,
                                          url=FILE_PREFIX + largest.file_id))
        for media, default_type in ((message.document, "application/octet-stream"),
                                    (message.voice, "audio/ogg"),
                                    (message.video, "video/mp4")):
            if media is not None:
                attachments.append(Attachment(
                    content_type=getattr(media, "mime_type", None) or default_type,
                    size=media.file_size, url=FILE_PREFIX + media.file_id,
                    filename=getattr(media, "file_name", None),
                ))
        location = None
        if message.location is not None:
            location = Location(latitude=message.location.latitude,
                                longitude=message.location.longitude)
        return InboundMessage(
            channel=CHANNEL, account=account,
            # message_id is unique within a chat; the chat makes it unique for the bot.
            external_id=f"{message.chat.id}:{message.message_id}",
            sender=Sender(id=str(message.chat.id), name=user.full_name, phone=phone),
            text=message.text or message.caption or "",
            sent_at=message.date, attachments=tuple(attachments), location=location, raw=raw,
            # An edited message keeps its id: the store records the new version as an edit.
            edited_at=message.edit_date,
        )

    async def send(self, message: Outgoing) -> str | None:
        """`sendMessage` (or `sendPhoto`/`sendDocument` for files) through the conversation's
        bot; returns `<chat id>:<message id>` of the first message sent."""
        bot = self._clients.get(message.account)
        if bot is None:
            raise DeliveryError(f"no Telegram bot is configured for {message.account!r}",
                                retryable=False)
        try:
            sent = await self._send(bot, int(message.recipient), message)
        except RetryAfter as exc:
            raise DeliveryError(f"Telegram asks to retry after {exc.retry_after}",
                                retryable=True) from exc
        except (BadRequest, Forbidden, InvalidToken) as exc:
            raise DeliveryError(f"Telegram refused the message: {exc}", retryable=False) from exc
        except TelegramError as exc:
            raise DeliveryError(f"Telegram unreachable or failing: {exc}",
                                retryable=True) from exc
        # Message ids count per chat, and share a chat's sequence with the citizen's own.
        return f"{sent.chat.id}:{sent.message_id}"

    async def fetch(self, account: str, url: str, *, max_bytes: int) -> Download:
        """`getFile`, then the download: `url` is `telegram-file:<file id>`."""
        bot = self._clients.get(account)
        if bot is None or not url.startswith(FILE_PREFIX):
            raise FetchError(f"no Telegram bot {account!r} holds {url!r}", retryable=False)
        try:
            file = await bot.get_file(url.removeprefix(FILE_PREFIX))
            if file.file_size is not None and file.file_size > max_bytes:
                raise TooLarge(f"{file.file_size} bytes, over the {max_bytes} byte limit")
            content = bytes(await file.download_as_bytearray())
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise TooLarge(f"Telegram bots cannot download files over 20 MB: {exc}",
                               limit_bytes=BOT_API_DOWNLOAD_LIMIT) from exc
            raise FetchError(f"Telegram refused the file: {exc}", retryable=False) from exc
        except (Forbidden, InvalidToken) as exc:
            raise FetchError(f"Telegram refused the file: {exc}", retryable=False) from exc
        except TelegramError as exc:
            raise FetchError(f"Telegram unreachable or failing: {exc}", retryable=True) from exc
        return Download(content=content)

    async def _send(self, bot: Bot, chat_id: int, message: Outgoing) -> TgMessage:
        """Text alone, or each file (photos inline) with the text as the first one's caption."""
        if not message.files:
            return await bot.send_message(chat_id=chat_id, text=message.text)
        caption: str | None = message.text or None
        first = None
        if caption is not None and len(caption) > CAPTION_LIMIT:
            first = await bot.send_message(chat_id=chat_id, text=caption)
            caption = None
        for file in message.files:
            if file.is_image:
                sent = await bot.send_photo(chat_id=chat_id, photo=file.content,
                                            caption=caption, filename=file.filename)
            else:
                sent = await bot.send_document(chat_id=chat_id, document=file.content,
                                               caption=caption, filename=file.filename)
            first = first or sent
            caption = None
        assert first is not None
        return first

    async def close(self) -> None:
        """Close every bot's HTTP client."""
        for request in self._requests.values():
            await request.shutdown()

    async def set_webhooks(self, url: str) -> list[str]:
        """Point every bot's webhook at `url` with its secret; returns the accounts done."""
        done = []
        for account, bot in self._clients.items():
            secret = self._bots[account].webhook_secret.get_secret_value()
            await bot.set_webhook(url=url, secret_token=secret,
                                  allowed_updates=["message", "edited_message"])
            done.append(account)
        return done


def _is_start(message: TgMessage) -> bool:
    """Whether the citizen only opened the chat (`/start`, maybe with a deep-link payload)."""
    words = (message.text or "").split()
    return bool(words) and words[0].split("@")[0] == "/start"

