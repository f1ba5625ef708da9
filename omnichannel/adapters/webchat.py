"""Web chat: the embeddable widget's visitors, their live sockets, and replies pushed to them.

There is no provider: the widget talks to the engine over a WebSocket
(`webchat_routes.py`). A conversation's account is the widget key, its address the visitor's
random id from their signed token. A visitor's message is acknowledged with its sequence
number (its message id) only once `EngineAccess.submit` has stored it. A reply is stored
before it is sent, so `send` only pushes it to the visitor's sockets held by this process;
a visitor who is away, or whose socket another process holds, gets it from the thread when
the widget (re)connects or the socket resynchronises.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import WSCloseCode, web
from pydantic import SecretStr

from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    ChannelDisabled,
    EngineAccess,
    WebhookRequest,
)
from omnichannel.adapters.webchat_token import TokenError, Visitor, VisitorTokens
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import Attachment, DeliveryStatus, InboundMessage, Sender, StatusUpdate
from omnichannel.phones import normalise_phone
from omnichannel.pipeline import ShuttingDown
from omnichannel.settings import WEBCHAT_IMAGE_TYPES, WebchatWidget

log = structlog.get_logger(__name__)

CHANNEL = "webchat"
#: Longest message a visitor may type.
MAX_TEXT = 4000
#: A client-generated message id: the widget makes 16 random bytes in hex.
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")
#: Messages `EngineAccess.thread` returns at most (a full page means more may follow).
PAGE = 500
#: The receipts the widget sends about replies it shows.
RECEIPTS = {"delivered": DeliveryStatus.DELIVERED, "read": DeliveryStatus.READ}


class ChatError(Exception):
    """A visitor's frame or upload is refused; `code` tells the widget which text to show."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RateLimiter:
    """A token bucket per visitor: `per_minute` messages, refilled evenly over the minute."""

    def __init__(self, per_minute: int, *, clock: Any = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, visitor: str) -> bool:
        """Take one token from the visitor's bucket; False when it is empty."""
        now = self._clock()
        tokens, last = self._buckets.get(visitor, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - last) * self._rate)
        if len(self._buckets) > 100_000:
            # Full buckets carry no state worth keeping: forget them to bound memory.
            self._buckets = {k: v for k, v in self._buckets.items()
                             if v[0] + (now - v[1]) * self._rate < self._capacity}
        if tokens < 1.0:
            self._buckets[visitor] = (tokens, now)
            return False
        self._buckets[visitor] = (tokens - 1.0, now)
        return True


def sniff_image(content: bytes) -> str | None:
    """The image type the file's first bytes show (JPEG, PNG, WebP, GIF), else None."""
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return None


def origin_allowed(origin: str | None, widget: WebchatWidget, own: Iterable[str]) -> bool:
    """Whether a page of `origin` may use `widget`: one of its origins, or the engine's own."""
    if not origin:
        return False
    origin = origin.rstrip("/").lower()
    return origin in widget.origins or origin in {o.rstrip("/").lower() for o in own}


def message_frame(row: Mapping[str, Any], visitor: str) -> dict[str, Any]:
    """A stored message of the thread as the widget shows it (never its raw payload)."""
    client_id = None
    external = row.get("external_id") or ""
    if row["direction"] == "inbound" and external.startswith(visitor + ":"):
        client_id = external[len(visitor) + 1:]
    return {
        "type": "message", "seq": row["id"], "direction": row["direction"],
        "text": row["text"] or "", "sent_at": row["sent_at"], "client_id": client_id,
        "status": row.get("delivery_status"),
        "attachments": [
            {"position": i, "content_type": a.get("content_type"), "filename": a.get("filename")}
            for i, a in enumerate(row.get("attachments") or [])
        ],
    }


@dataclass(eq=False)
class LiveSocket:
    """One open WebSocket of a visitor, and the sequence numbers already sent on it."""

    ws: web.WebSocketResponse
    visitor: str
    #: Where the next read of the thread starts (the end of the read before the last).
    floor: int = 0
    #: The highest sequence number the last read found.
    read_to: int = 0
    sent: set[int] = field(default_factory=set)
    #: Where the widget resumes after a reconnect: the last history frame's cursor.
    cursor: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; a socket that has gone is left to its handler to clean up."""
        async with self.lock:
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json(frame)

    async def push(self, messages: Sequence[dict[str, Any]], *,
                   cursor: int | None = None) -> None:
        """Send messages not yet sent on this socket; with `cursor`, as a history frame that
        tells the widget where to resume (everything up to it is in or before this frame)."""
        async with self.lock:
            fresh = [m for m in messages if m["seq"] not in self.sent]
            if self.ws.closed or (not fresh and cursor in (None, self.cursor)):
                return
            self.sent.update(m["seq"] for m in fresh)
            if cursor is not None:
                self.cursor = cursor
            frames = ([{"type": "history", "messages": fresh, "cursor": cursor}]
                      if cursor is not None else fresh)
            with contextlib.suppress(ConnectionError, RuntimeError):
                for frame in frames:
                    await self.ws.send_json(frame)


class WebchatAdapter(Adapter):
    """Every configured widget's visitors: their sockets, messages, uploads and replies."""

    name = CHANNEL
    capabilities = Capabilities(max_text_length=MAX_TEXT, media=True)
    webhook = False
    receives_over = "the widget's WebSocket (/chat/<key>/socket)"

    def __init__(
        self, widgets: Sequence[WebchatWidget], *, secret: SecretStr | None,
        token_days: int = 365, rate_per_minute: int = 20,
        upload_types: Sequence[str] = WEBCHAT_IMAGE_TYPES, upload_bytes: int = 5 * 1024 * 1024,
        resync_s: float = 5.0, phone_region: str = "ID",
    ) -> None:
        self.widgets = {w.key: w for w in widgets}
        self.tokens = (VisitorTokens(secret, max_age_s=token_days * 86400)
                       if secret is not None else None)
        self.limiter = RateLimiter(rate_per_minute)
        self.upload_types = frozenset(upload_types)
        self.upload_bytes = upload_bytes
        self.resync_s = resync_s
        self._phone_region = phone_region
        self._engine: EngineAccess | None = None
        self._sockets: dict[tuple[str, str], set[LiveSocket]] = defaultdict(set)

    # The contract's webhook half: the widget has none (`webhook = False`).
    def verify(self, request: WebhookRequest) -> None:
        """Nothing arrives by webhook on this channel."""
        raise ChannelDisabled("the webchat channel has no webhook")

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """Nothing arrives by webhook on this channel."""
        return []

    def bound_queue(self, account: str) -> str | None:
        """The OPD the widget belongs to (the DLHP site's chat goes to DLHP)."""
        widget = self.widgets.get(account)
        return widget.opd if widget is not None else None

    async def start(self, engine: EngineAccess) -> None:
        """Keep the engine's access: sockets store and read messages through it."""
        self._engine = engine

    @property
    def engine(self) -> EngineAccess:
        """The engine's access; sockets are served only once the engine has started."""
        if self._engine is None:
            raise ShuttingDown("the engine is not running")
        return self._engine

    # Visitors.
    def widget(self, key: str) -> WebchatWidget | None:
        """The widget of a key, if it is configured."""
        return self.widgets.get(key)

    def visitor_of(self, token: str | None, widget: WebchatWidget) -> tuple[Visitor, bool]:
        """The token's visitor, or a new one when it is missing, forged or expired (True)."""
        assert self.tokens is not None
        if token:
            try:
                return self.tokens.read(token, widget.key), False
            except TokenError as exc:
                log.info("webchat_token_refused", widget=widget.key, reason=str(exc))
        return self.tokens.new_visitor(widget.key), True

    def identify(self, visitor: Visitor, details: Mapping[str, Any]) -> Visitor:
        """The visitor with the name, phone and e-mail they gave, checked and normalised."""
        values: dict[str, str | None] = {}
        name = details.get("name")
        if name is not None:
            if not isinstance(name, str) or len(name.strip()) > 100:
                raise ChatError("invalid_name", "the name must be text of 100 characters at most")
            values["name"] = name.strip() or None
        phone = details.get("phone")
        if phone is not None:
            if not isinstance(phone, str):
                raise ChatError("invalid_phone", "the phone number must be text")
            values["phone"] = None
            if phone.strip():
                values["phone"] = normalise_phone(phone[:40], self._phone_region)
                if values["phone"] is None:
                    raise ChatError("invalid_phone", f"{phone[:40]!r} is not a phone number")
        email = details.get("email")
        if email is not None:
            if not isinstance(email, str):
                raise ChatError("invalid_email", "the e-mail address must be text")
            values["email"] = email.strip().lower() or None
            if values["email"] is not None and not EMAIL.fullmatch(values["email"]):
                raise ChatError("invalid_email", f"{email[:80]!r} is not an e-mail address")
        return visitor.with_details(values)

    def _check_may_send(self, widget: WebchatWidget, visitor: Visitor, client_id: Any) -> str:
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            raise ChatError("invalid_id", "every message needs an id of 1-64 letters, digits, "
                                          "_ or -")
        missing = [f for f in widget.require if not visitor.has(f)]
        if missing:
            raise ChatError("identify_required", "give " + ", ".join(missing) + " first",
                            status=403)
        if not self.limiter.allow(f"{widget.key}:{visitor.id}"):
            raise ChatError("rate_limited", "too many messages; wait a moment and send again",
                            status=429)
        return client_id

    async def take_message(self, widget: WebchatWidget, visitor: Visitor, client_id: Any,
                           text: Any, origin: LiveSocket | None = None) -> dict[str, Any]:
        """Store a visitor's message durably; returns its ack (`seq` is its message id)."""
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise ChatError("invalid_text", f"the text must be at most {MAX_TEXT} characters")
        if not text.strip():
            raise ChatError("empty", "the message is empty")
        checked = self._check_may_send(widget, visitor, client_id)
        return await self._store(widget, visitor, checked, text.strip(), (), origin)

    async def take_upload(self, widget: WebchatWidget, visitor: Visitor, client_id: Any,
                          content: bytes, filename: str | None = None) -> dict[str, Any]:
        """Keep an uploaded image and store the message that carries it."""
        kind = sniff_image(content)
        if kind is None or kind not in self.upload_types:
            raise ChatError("unsupported_type", "only images can be sent: "
                            + ", ".join(sorted(t.removeprefix("image/")
                                               for t in self.upload_types)), status=415)
        checked = self._check_may_send(widget, visitor, client_id)
        blob_id = await self.engine.blobs.put(content)
        extension = kind.removeprefix("image/").replace("jpeg", "jpg")
        # The visitor's own name for the file, without any path or control characters.
        name = re.sub(r"[\x00-\x1f\x7f/\\]", "", (filename or "").rsplit("/", 1)[-1])[:100]
        attachment = Attachment(content_type=kind, size=len(content), blob_id=blob_id,
                                filename=name.strip() or f"foto-{blob_id[:8]}.{extension}")
        return await self._store(widget, visitor, checked, "", (attachment,), None)

    async def _store(self, widget: WebchatWidget, visitor: Visitor, client_id: str, text: str,
                     attachments: tuple[Attachment, ...],
                     origin: LiveSocket | None) -> dict[str, Any]:
        details = {k: v for k, v in (("name", visitor.name), ("phone", visitor.phone),
                                     ("email", visitor.email)) if v}
        message = InboundMessage(
            channel=CHANNEL, account=widget.key,
            # A resend after a reconnect carries the same client id: stored once.
            external_id=f"{visitor.id}:{client_id}",
            sender=Sender(id=visitor.id, name=visitor.name, phone=visitor.phone,
                          email=visitor.email),
            text=text, sent_at=datetime.now(UTC), attachments=attachments,
            raw={"widget": widget.key, "client_id": client_id, "visitor": details},
        )
        stored = await self.engine.submit(message)
        assert message.sent_at is not None
        frame = {"type": "message", "seq": stored.message_id, "direction": "inbound",
                 "text": text, "sent_at": message.sent_at.isoformat(), "client_id": client_id,
                 "attachments": [{"position": i, "content_type": a.content_type,
                                  "filename": a.filename} for i, a in enumerate(attachments)]}
        # The visitor's other tabs show it too; the sending socket has its ack.
        for socket in list(self._sockets.get((widget.key, visitor.id), ())):
            if socket is not origin:
                await socket.push([frame])
        if origin is not None:
            origin.sent.add(stored.message_id)
        return {"type": "ack", "id": client_id, "seq": stored.message_id,
                "duplicate": stored.duplicate}

    async def take_receipts(self, widget: WebchatWidget, socket: LiveSocket,
                            frame: Mapping[str, Any]) -> int:
        """Record that the widget showed (`delivered`) or the visitor saw (`read`) replies;
        returns how many were the socket's to confirm."""
        status = RECEIPTS.get(frame.get("status"))  # type: ignore[arg-type]
        seqs = frame.get("seqs")
        if (status is None or not isinstance(seqs, list) or len(seqs) > PAGE
                or not all(isinstance(s, int) for s in seqs)):
            raise ChatError("invalid_frame", "a receipt names `delivered` or `read` and a "
                                             f"list of at most {PAGE} sequence numbers")
        # Only what this socket carried: a visitor cannot mark someone else's replies.
        mine = sorted({s for s in seqs if s in socket.sent})
        if mine:
            now = datetime.now(UTC)
            await self.engine.record_receipts([
                StatusUpdate(channel=CHANNEL, account=widget.key, external_id=f"webchat-{s}",
                             status=status, at=now) for s in mine])
        return len(mine)

    # Reading back.
    async def thread(self, widget: WebchatWidget, visitor: str,
                     after: int) -> list[dict[str, Any]]:
        """Every message of the visitor's conversations on this widget after `after`."""
        frames: list[dict[str, Any]] = []
        while True:
            rows = await self.engine.thread(CHANNEL, widget.key, visitor, after)
            frames.extend(message_frame(r, visitor) for r in rows)
            if len(rows) < PAGE:
                return frames
            after = rows[-1]["id"]

    async def attachment(self, widget: WebchatWidget, visitor: str, seq: int,
                         position: int) -> dict[str, Any] | None:
        """A file of a message in the visitor's own thread (never anyone else's)."""
        if seq < 1 or position < 0:
            return None
        rows = await self.engine.thread(CHANNEL, widget.key, visitor, seq - 1)
        if not rows or rows[0]["id"] != seq:
            return None
        files = rows[0].get("attachments") or []
        found: dict[str, Any] | None = files[position] if position < len(files) else None
        return found

    # Live sockets.
    async def serve(self, ws: web.WebSocketResponse, widget: WebchatWidget, visitor: Visitor,
                    after: int) -> LiveSocket:
        """Register a visitor's socket, then replay what it missed; returns the socket."""
        socket = LiveSocket(ws, visitor.id, floor=after, read_to=after)
        # Registered before the thread is read: a reply sent meanwhile is pushed, one stored
        # before is read; the widget shows each sequence number once.
        self._sockets[(widget.key, visitor.id)].add(socket)
        await self.resync(widget, socket)
        return socket

    async def resync(self, widget: WebchatWidget, socket: LiveSocket) -> None:
        """Send the socket what the thread holds past its floor and it has not carried yet.

        Each read starts where the read before the last one ended, and the widget is told
        to resume from there too: on PostgreSQL a message's id is taken before its commit,
        so a reply may become visible after a read that already saw a higher id, and the
        overlap of one read finds it (the widget shows each sequence number once).
        """
        after = socket.floor
        messages = await self.thread(widget, socket.visitor, after)
        await socket.push(messages, cursor=after)
        socket.floor = socket.read_to
        socket.read_to = max([socket.read_to, *(int(m["seq"]) for m in messages)])

    def forget(self, widget: WebchatWidget, socket: LiveSocket) -> None:
        """Unregister a socket that closed."""
        sockets = self._sockets.get((widget.key, socket.visitor))
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._sockets[(widget.key, socket.visitor)]

    def connected(self, widget: str, visitor: str) -> int:
        """How many sockets of a visitor this process holds."""
        return len(self._sockets.get((widget, visitor), ()))

    async def drop_connections(self, code: int = WSCloseCode.SERVICE_RESTART) -> int:
        """Close every visitor's socket (a restart does; tests use it); returns how many."""
        sockets = [s for group in self._sockets.values() for s in group]
        for socket in sockets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.ws.close(code=code, message=b"reconnect")
        return len(sockets)

    async def send(self, message: Outgoing) -> str | None:
        """Push a stored reply to the visitor's open sockets in this process.

        The reply is already in the thread, so a visitor without an open socket here gets it
        when the widget reconnects or resynchronises: sending never waits for them.
        """
        if message.account not in self.widgets:
            raise DeliveryError(f"no web-chat widget {message.account!r} is configured",
                                retryable=False)
        frame = {
            "type": "message", "seq": message.message_id, "direction": "outbound",
            "text": message.text, "sent_at": datetime.now(UTC).isoformat(), "client_id": None,
            "status": DeliveryStatus.SENT.value,
            "attachments": [{"position": i, "content_type": f.content_type,
                             "filename": f.filename or f"file-{i + 1}"}
                            for i, f in enumerate(message.files)],
        }
        for socket in list(self._sockets.get((message.account, message.recipient), ())):
            await socket.push([frame])
        return f"webchat-{message.message_id}"

    async def close(self) -> None:
        """Close every socket: the engine is going away."""
        await self.drop_connections(WSCloseCode.GOING_AWAY)

