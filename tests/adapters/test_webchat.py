"""The web chat's pieces without a server: tokens, origins, the rate limit, replay, sending."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from omnichannel.adapters.base import EngineAccess
from omnichannel.adapters.webchat import (
    ChatError,
    LiveSocket,
    RateLimiter,
    WebchatAdapter,
    origin_allowed,
    sniff_image,
)
from omnichannel.adapters.webchat_token import TokenError, Visitor, VisitorTokens
from omnichannel.blobs import BlobStore
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import InboundMessage
from omnichannel.settings import Settings, WebchatWidget
from omnichannel.store.ingest import Stored

SECRET = SecretStr("webchat-unit-secret-0123456789abcdef")
WIDGET = WebchatWidget(key="dlhp-situs-01", name="Situs DLHP",
                       origins=["https://dlhp.ambon.example"], opd="dlhp")


def test_a_token_reads_back_as_its_visitor() -> None:
    tokens = VisitorTokens(SECRET, max_age_s=3600)
    visitor = Visitor(id="v-1", widget=WIDGET.key, name="Rina", phone="+6281234567890")
    assert tokens.read(tokens.issue(visitor), WIDGET.key) == visitor


def test_forged_altered_and_foreign_tokens_are_refused() -> None:
    tokens = VisitorTokens(SECRET, max_age_s=3600)
    token = tokens.issue(Visitor(id="v-1", widget=WIDGET.key))
    other_secret = VisitorTokens(SecretStr("another-secret-entirely-0123456789"),
                                 max_age_s=3600)
    forged = other_secret.issue(Visitor(id="v-1", widget=WIDGET.key))
    payload, _, signature = token.partition(".")
    altered = payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature
    for bad in (forged, altered, "", "not-a-token", token + "x"):
        with pytest.raises(TokenError):
            tokens.read(bad, WIDGET.key)
    with pytest.raises(TokenError, match="another widget"):
        tokens.read(token, "lapor-umum-02")


def test_an_old_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = VisitorTokens(SECRET, max_age_s=3600)
    token = tokens.issue(Visitor(id="v-1", widget=WIDGET.key))
    import itsdangerous.timed

    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 3601)
    with pytest.raises(TokenError, match="expired"):
        tokens.read(token, WIDGET.key)


def test_origins_are_the_widgets_or_the_engines_own() -> None:
    own = ["http://127.0.0.1:8080"]
    assert origin_allowed("https://dlhp.ambon.example", WIDGET, own)
    assert origin_allowed("https://DLHP.ambon.example/", WIDGET, own)
    assert origin_allowed("http://127.0.0.1:8080", WIDGET, own)
    for origin in ("https://evil.example", "http://dlhp.ambon.example",
                   "https://dlhp.ambon.example:8443", "https://dlhp.ambon.example.evil",
                   "null", "", None):
        assert not origin_allowed(origin, WIDGET, own)


def test_widget_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="not an origin"):
        WebchatWidget(key="dlhp-situs-01", name="x", origins=["https://a.example/path"])
    with pytest.raises(ValidationError):
        WebchatWidget(key="short", name="x")
    with pytest.raises(ValidationError, match="webchat_secret"):
        Settings(webchat_widgets=[WIDGET])
    with pytest.raises(ValidationError, match="example value"):
        Settings(webchat_widgets=[WIDGET], webchat_secret=SecretStr("change-me"))
    with pytest.raises(ValidationError, match="listed twice"):
        Settings(webchat_widgets=[WIDGET, WIDGET], webchat_secret=SECRET)


def test_the_rate_limit_refills_over_the_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow("v-1") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("v-2")  # another visitor has a bucket of their own
    now[0] += 20.0  # one message's worth of refill
    assert [limiter.allow("v-1") for _ in range(2)] == [True, False]


def test_images_are_recognised_by_their_first_bytes() -> None:
    assert sniff_image(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_image(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    assert sniff_image(b"GIF89arest") == "image/gif"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    for other in (b"<svg/>", b"%PDF-1.7", b"RIFF\x00\x00\x00\x00WAVE", b""):
        assert sniff_image(other) is None


class FakeEngine:
    """Stands in for the engine: stores messages with ids, reads a thread back by id."""

    def __init__(self, tmp_path: Path) -> None:
        self.ids = itertools.count(1)
        self.rows: list[dict[str, Any]] = []
        self.keys: dict[str, int] = {}
        self.access = EngineAccess(submit=self.submit, record_receipts=self.receipts,
                                   thread=self.thread, blobs=BlobStore(tmp_path))

    async def submit(self, message: InboundMessage) -> Stored:
        if message.external_id in self.keys:
            return Stored(self.keys[message.external_id], 1, "AMB-1", True, None)
        message_id = next(self.ids)
        self.keys[message.external_id] = message_id
        self.rows.append({"id": message_id, "direction": "inbound", "text": message.text,
                          "external_id": message.external_id, "sent_at": "2026-11-29T00:00:00",
                          "attachments": [a.to_json() for a in message.attachments],
                          "address": message.sender.id})
        return Stored(message_id, 1, "AMB-1", False, None)

    def reply(self, address: str, text: str) -> int:
        message_id = next(self.ids)
        self.rows.append({"id": message_id, "direction": "outbound", "text": text,
                          "external_id": None, "sent_at": "2026-11-29T00:00:01",
                          "attachments": [], "address": address})
        return message_id

    async def receipts(self, _receipts: list[Any]) -> None:
        return None

    async def thread(self, channel: str, account: str, address: str,
                     after_id: int) -> list[dict[str, Any]]:
        assert (channel, account) == ("webchat", WIDGET.key)
        return [r for r in self.rows if r["address"] == address and r["id"] > after_id][:500]


class FakeSocket:
    """Records the frames a `LiveSocket` sends."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed = False

    async def send_json(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    async def close(self, **_: Any) -> None:
        self.closed = True


@pytest.fixture
async def chat(tmp_path: Path) -> tuple[WebchatAdapter, FakeEngine]:
    adapter = WebchatAdapter([WIDGET], secret=SECRET, rate_per_minute=100)
    engine = FakeEngine(tmp_path)
    await adapter.start(engine.access)
    return adapter, engine


def _seqs(frames: list[dict[str, Any]]) -> list[int]:
    out = []
    for frame in frames:
        if frame["type"] == "history":
            out.extend(m["seq"] for m in frame["messages"])
        elif frame["type"] == "message":
            out.append(frame["seq"])
    return out


async def test_replay_sends_what_the_socket_missed_and_nothing_twice(
    chat: tuple[WebchatAdapter, FakeEngine],
) -> None:
    adapter, engine = chat
    visitor = Visitor(id="v-1", widget=WIDGET.key)
    first = FakeSocket()
    live = await adapter.serve(first, WIDGET, visitor, 0)  # type: ignore[arg-type]
    assert first.frames == [{"type": "history", "messages": [], "cursor": 0}]
    ack = await adapter.take_message(WIDGET, visitor, "c-1", "Sampah menumpuk", origin=live)
    reply = engine.reply("v-1", "Petugas ke lokasi")
    sent = await adapter.send(_outgoing(reply, "Petugas ke lokasi"))
    assert sent == f"webchat-{reply}"
    assert _seqs(first.frames) == [reply]  # its own message came back as the ack
    # Resyncs find nothing new for this socket (both are on it already); the cursor the
    # widget resumes from trails the reads by one.
    await adapter.resync(WIDGET, live)
    assert _seqs(first.frames) == [reply] and live.cursor == 0
    for _ in range(2):
        await adapter.resync(WIDGET, live)
    assert _seqs(first.frames) == [reply]
    assert first.frames[-1] == {"type": "history", "messages": [], "cursor": reply}

    # A reply that became visible late, below a sequence number a read already passed, is
    # found by the next read's overlap.
    late = engine.reply("v-1", "Balasan yang terlambat")
    newer = engine.reply("v-1", "Balasan berikutnya")
    engine.rows.remove(late_row := next(r for r in engine.rows if r["id"] == late))
    await adapter.resync(WIDGET, live)
    engine.rows.insert(-1, late_row)
    await adapter.resync(WIDGET, live)
    assert _seqs(first.frames) == [reply, newer, late]

    adapter.forget(WIDGET, live)
    missed = engine.reply("v-1", "Sudah diangkut")
    await adapter.send(_outgoing(missed, "Sudah diangkut"))  # no socket: nobody to push to
    second = FakeSocket()
    await adapter.serve(second, WIDGET, visitor, live.cursor)  # type: ignore[arg-type]
    assert missed in _seqs(second.frames)
    # From the start, the whole thread, with the widget's own id on the visitor's message.
    third = FakeSocket()
    await adapter.serve(third, WIDGET, visitor, 0)  # type: ignore[arg-type]
    [history] = third.frames
    assert [(m["seq"], m["direction"], m["client_id"]) for m in history["messages"]] == [
        (ack["seq"], "inbound", "c-1"), (reply, "outbound", None), (late, "outbound", None),
        (newer, "outbound", None), (missed, "outbound", None)]


async def test_a_long_thread_is_replayed_page_by_page(
    chat: tuple[WebchatAdapter, FakeEngine],
) -> None:
    adapter, engine = chat
    ids = [engine.reply("v-1", f"balasan {n}") for n in range(1203)]
    socket = FakeSocket()
    await adapter.serve(socket, WIDGET, Visitor(id="v-1", widget=WIDGET.key),  # type: ignore[arg-type]
                        0)
    assert _seqs(socket.frames) == ids


async def test_a_visitor_sees_only_their_own_thread_and_files(
    chat: tuple[WebchatAdapter, FakeEngine],
) -> None:
    adapter, engine = chat
    rina = Visitor(id="v-rina", widget=WIDGET.key)
    ack = await adapter.take_upload(WIDGET, rina, "u-1", b"\x89PNG\r\n\x1a\n...", "a/../b.png")
    entry = await adapter.attachment(WIDGET, "v-rina", ack["seq"], 0)
    assert entry is not None and entry["filename"] == "b.png"
    assert await adapter.attachment(WIDGET, "v-budi", ack["seq"], 0) is None
    assert await adapter.attachment(WIDGET, "v-rina", ack["seq"], 1) is None
    budi = FakeSocket()
    await adapter.serve(budi, WIDGET, Visitor(id="v-budi", widget=WIDGET.key),  # type: ignore[arg-type]
                        0)
    assert _seqs(budi.frames) == []
    assert engine.rows[0]["attachments"][0]["blob_id"]


async def test_messages_need_the_required_details_and_a_valid_id(tmp_path: Path) -> None:
    widget = WIDGET.model_copy(update={"require": ["phone"]})
    adapter = WebchatAdapter([widget], secret=SECRET)
    await adapter.start(FakeEngine(tmp_path).access)
    anonymous = Visitor(id="v-1", widget=WIDGET.key)
    with pytest.raises(ChatError) as refused:
        await adapter.take_message(widget, anonymous, "c-1", "Jalan rusak")
    assert refused.value.code == "identify_required"
    known = adapter.identify(anonymous, {"phone": "0812 3456 7890", "email": "A@B.id"})
    assert (known.phone, known.email) == ("+6281234567890", "a@b.id")
    with pytest.raises(ChatError) as bad_id:
        await adapter.take_message(widget, known, "../etc", "Jalan rusak")
    assert bad_id.value.code == "invalid_id"
    ack = await adapter.take_message(widget, known, "c-1", "Jalan rusak")
    assert ack["duplicate"] is False
    with pytest.raises(ChatError) as bad_email:
        adapter.identify(known, {"email": "not an address"})
    assert bad_email.value.code == "invalid_email"


async def test_a_reply_for_a_widget_no_longer_configured_fails_for_good(
    chat: tuple[WebchatAdapter, FakeEngine],
) -> None:
    adapter, _ = chat
    with pytest.raises(DeliveryError) as failed:
        await adapter.send(Outgoing(message_id=9, conversation_id=1, tracking_number="AMB-1",
                                    channel="webchat", account="removed-widget-1",
                                    recipient="v-1", text="Halo"))
    assert failed.value.retryable is False
    assert adapter.bound_queue(WIDGET.key) == "dlhp"
    assert adapter.bound_queue("removed-widget-1") is None


async def test_dropping_connections_closes_every_socket(
    chat: tuple[WebchatAdapter, FakeEngine],
) -> None:
    adapter, _ = chat
    sockets = [FakeSocket() for _ in range(3)]
    for n, socket in enumerate(sockets):
        await adapter.serve(socket, WIDGET, Visitor(id=f"v-{n % 2}",  # type: ignore[arg-type]
                                                    widget=WIDGET.key), 0)
    assert adapter.connected(WIDGET.key, "v-0") == 2
    assert await adapter.drop_connections() == 3
    assert all(s.closed for s in sockets)


async def test_a_closed_socket_gets_nothing_and_forgets_nothing() -> None:
    socket = FakeSocket()
    live = LiveSocket(socket, "v-1")  # type: ignore[arg-type]
    frame = {"type": "message", "seq": 5}
    await live.push([frame])
    socket.closed = True
    await live.push([{"type": "message", "seq": 6}], cursor=6)
    assert socket.frames == [frame]
    # Not marked as sent: the next socket's replay still carries it.
    assert live.sent == {5} and live.cursor == -1


def _outgoing(message_id: int, text: str) -> Outgoing:
    return Outgoing(message_id=message_id, conversation_id=1, tracking_number="AMB-1",
                    channel="webchat", account=WIDGET.key, recipient="v-1", text=text)
