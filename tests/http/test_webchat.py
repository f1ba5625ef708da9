"""The web chat over HTTP: the socket both ways, acks after storing, origins, uploads."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from omnichannel.adapters.webchat import WebchatAdapter
from omnichannel.appkeys import ENGINE
from omnichannel.pipeline import ShuttingDown
from tests.http.conftest import AGENT_AUTH, MakeClient
from tests.http.test_agent_api import conversation, wait_for

KEY = "dlhp-situs-01"
#: A widget that asks for the visitor's name and phone before they write.
KEY_REQUIRED = "lapor-umum-02"
SECRET = "webchat-test-secret-0123456789abcdef"
HOST = "https://dlhp.ambon.example"
SETTINGS: dict[str, Any] = {
    "webchat_widgets": [
        {"key": KEY, "name": "Situs DLHP", "origins": [HOST], "opd": "dlhp"},
        {"key": KEY_REQUIRED, "name": "LAPOR Ambon", "origins": [HOST],
         "require": ["name", "phone"], "title": "Lapor Ambon"},
    ],
    "webchat_secret": SECRET,
    "webchat_upload_bytes": 4096,
    "webchat_rate_per_minute": 6,
    # Long enough that a reply seen on the socket was pushed live, not found by a resync.
    "webchat_resync_s": 300.0,
}
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35"
       b"\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")


class Chat:
    """A visitor's socket, as the widget uses it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.cursor = 0

    async def frame(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of `kind`, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                frame: dict[str, Any] = await self.ws.receive_json()
                if frame["type"] == "history":
                    self.cursor = max(self.cursor, frame["cursor"])
                if frame["type"] == kind:
                    return frame

    async def say(self, text: str, client_id: str) -> dict[str, Any]:
        await self.ws.send_json({"type": "message", "id": client_id, "text": text})
        return await self.frame("ack")

    @property
    def token(self) -> str:
        token: str = self.welcome["token"]
        return token


async def open_chat(client: TestClient[Any, Any], key: str = KEY, *, token: str | None = None,
                    after: int = 0, origin: str = HOST) -> Chat:
    params = {"after": str(after)}
    if token is not None:
        params["token"] = token
    ws = await client.ws_connect(f"/chat/{key}/socket", params=params,
                                 headers={"Origin": origin})
    chat = Chat(ws)
    chat.welcome = await chat.frame("welcome")
    history = await chat.frame("history")
    chat.welcome["history"] = history["messages"]
    return chat


async def only_conversation(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    [conv] = (await resp.json())["conversations"]
    return await conversation(client, conv["id"])


async def reply(client: TestClient[Any, Any], conv_id: int, text: str) -> int:
    resp = await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": text},
                             headers=AGENT_AUTH)
    assert resp.status == 202, await resp.text()
    message_id: int = (await resp.json())["id"]
    return message_id


@pytest.fixture(params=["sqlite", "postgresql"])
async def chat_client(make_client: MakeClient, request: pytest.FixtureRequest
                      ) -> TestClient[Any, Any]:
    """An engine with the test widgets, on each store."""
    return await make_client(request.param, **SETTINGS)


async def test_a_message_is_acked_once_stored_and_a_resend_is_stored_once(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    assert chat.welcome["new"] is True and chat.welcome["history"] == []
    ack = await chat.say("Lampu jalan mati di depan kantor", "c-1")
    assert ack["duplicate"] is False
    # The ack came after the commit: the agent sees the message at once.
    conv = await only_conversation(chat_client)
    assert [m["id"] for m in conv["messages"]] == [ack["seq"]]
    # The widget's own OPD, whatever the rules would say about street lights.
    assert (conv["queue"], conv["rule"]) == ("dlhp", f"account:{KEY}")
    again = await chat.say("Lampu jalan mati di depan kantor", "c-1")
    assert (again["seq"], again["duplicate"]) == (ack["seq"], True)
    conv = await only_conversation(chat_client)
    assert len(conv["messages"]) == 1
    await chat.ws.close()


async def test_replies_arrive_live_and_a_reconnect_gets_what_it_missed_once(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    ack = await chat.say("Sampah menumpuk di Batu Merah", "c-1")
    conv_id = (await only_conversation(chat_client))["id"]
    live_id = await reply(chat_client, conv_id, "Petugas segera ke lokasi.")
    live = await chat.frame("message")
    assert (live["seq"], live["direction"], live["text"]) == (
        live_id, "outbound", "Petugas segera ke lokasi.")

    adapter = chat_client.server.app[ENGINE].adapters["webchat"]
    assert isinstance(adapter, WebchatAdapter)
    assert await adapter.drop_connections() == 1
    closed = await chat.ws.receive()
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    missed_id = await reply(chat_client, conv_id, "Sampah sudah diangkut.")
    # Sent while no socket was open: the reply is recorded as sent all the same.
    await wait_for(lambda: _status_is(chat_client, conv_id, missed_id, "sent"))

    back = await open_chat(chat_client, token=chat.token, after=chat.cursor)
    assert back.welcome["new"] is False
    seqs = [m["seq"] for m in back.welcome["history"]]
    assert missed_id in seqs and len(seqs) == len(set(seqs))
    assert seqs == sorted(seqs)
    # A reload starts from the beginning: the whole history, both ways.
    reload = await open_chat(chat_client, token=chat.token)
    assert [(m["seq"], m["direction"]) for m in reload.welcome["history"]] == [
        (ack["seq"], "inbound"), (live_id, "outbound"), (missed_id, "outbound")]
    assert reload.welcome["history"][0]["client_id"] == "c-1"
    await back.ws.close()
    await reload.ws.close()


async def _status_is(client: TestClient[Any, Any], conv_id: int, message_id: int,
                     status: str) -> bool:
    conv = await conversation(client, conv_id)
    return any(m["id"] == message_id and m["delivery_status"] == status
               for m in conv["messages"])


async def test_a_visitors_other_tab_sees_their_message(chat_client: TestClient[Any, Any]) -> None:
    first = await open_chat(chat_client)
    second = await open_chat(chat_client, token=first.token)
    ack = await first.say("Air PDAM mati", "c-9")
    shown = await second.frame("message")
    assert (shown["seq"], shown["client_id"], shown["text"]) == (ack["seq"], "c-9",
                                                                 "Air PDAM mati")
    await first.ws.close()
    await second.ws.close()


async def test_pages_of_other_origins_and_unknown_widgets_get_no_socket(
    chat_client: TestClient[Any, Any],
) -> None:
    for origin in ("https://evil.example", "http://dlhp.ambon.example"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_chat(chat_client, origin=origin)
        assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await chat_client.ws_connect(f"/chat/{KEY}/socket")  # no Origin at all
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
        await open_chat(chat_client, key="no-such-widget")
    assert unknown.value.status == 404
    # The engine's own origin, where the standalone page lives, is always allowed.
    own = str(chat_client.make_url("")).rstrip("/")
    chat = await open_chat(chat_client, origin=own)
    assert chat.welcome["token"]
    await chat.ws.close()
    resp = await chat_client.get("/api/v1/conversations", headers=AGENT_AUTH)
    assert (await resp.json())["conversations"] == []


async def test_a_forged_token_gets_a_new_visitor_not_the_history(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    await chat.say("Laporan rahasia saya", "c-1")
    forged = chat.token[:-3] + ("AAA" if not chat.token.endswith("AAA") else "BBB")
    stranger = await open_chat(chat_client, token=forged)
    assert stranger.welcome["new"] is True
    assert stranger.welcome["history"] == []
    # A token of another widget does not open this one's history either.
    other = await open_chat(chat_client, KEY_REQUIRED, token=chat.token)
    assert other.welcome["new"] is True and other.welcome["history"] == []
    for ws in (chat.ws, stranger.ws, other.ws):
        await ws.close()


async def test_visitors_are_rate_limited_with_a_clear_error(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    for n in range(6):
        await chat.say(f"pesan {n}", f"c-{n}")
    await chat.ws.send_json({"type": "message", "id": "c-6", "text": "satu lagi"})
    error = await chat.frame("error")
    assert (error["id"], error["code"]) == ("c-6", "rate_limited")
    conv = await only_conversation(chat_client)
    assert len(conv["messages"]) == 6
    await chat.ws.close()


async def test_a_widget_may_require_name_and_phone(chat_client: TestClient[Any, Any]) -> None:
    chat = await open_chat(chat_client, KEY_REQUIRED)
    assert chat.welcome["widget"]["require"] == ["name", "phone"]
    await chat.ws.send_json({"type": "message", "id": "c-1", "text": "Jalan rusak"})
    assert (await chat.frame("error"))["code"] == "identify_required"
    await chat.ws.send_json({"type": "identify", "name": "Rina", "phone": "not a phone"})
    assert (await chat.frame("error"))["code"] == "invalid_phone"
    await chat.ws.send_json({"type": "identify", "name": "Rina", "phone": "0812-3456-7890",
                             "email": "rina@example.id"})
    identified = await chat.frame("token")
    assert identified["visitor"] == {"name": "Rina", "phone": "+6281234567890",
                                     "email": "rina@example.id"}
    await chat.say("Jalan rusak di Jl. Sultan Hairun", "c-2")
    conv = await only_conversation(chat_client)
    assert (conv["contact_name"], conv["contact_phone"], conv["contact_email"]) == (
        "Rina", "+6281234567890", "rina@example.id")
    await chat.ws.close()
    # The details travel in the new token: a reconnect with it needs no form again.
    back = await open_chat(chat_client, KEY_REQUIRED, token=identified["token"])
    assert back.welcome["visitor"]["phone"] == "+6281234567890"
    await back.ws.close()


async def test_bad_frames_get_an_error_and_store_nothing(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    for frame, code in [("not json", "invalid_frame"), ("[1]", "invalid_frame"),
                        ('{"type": "message", "id": "c 1", "text": "x"}', "invalid_id"),
                        ('{"type": "message", "id": "c1", "text": "   "}', "empty"),
                        ('{"type": "message", "id": "c1", "text": 5}', "invalid_text"),
                        ('{"type": "message", "id": "c1", "text": "' + "x" * 4001 + '"}',
                         "invalid_text"),
                        ('{"type": "shout"}', "invalid_frame")]:
        await chat.ws.send_str(frame)
        assert (await chat.frame("error"))["code"] == code
    resp = await chat_client.get("/api/v1/conversations", headers=AGENT_AUTH)
    assert (await resp.json())["conversations"] == []
    await chat.ws.close()


async def test_uploads_are_images_within_the_limit_and_only_their_visitor_fetches_them(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    auth = {"Authorization": f"Bearer {chat.token}", "Origin": HOST}
    url = f"/chat/{KEY}/upload"
    preflight = await chat_client.options(url, headers={
        "Origin": HOST, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == HOST
    resp = await chat_client.post(url, params={"id": "u-1"}, data=PNG,
                                  headers={**auth, "Content-Type": "image/png"})
    assert resp.status == 201, await resp.text()
    ack = await resp.json()
    assert resp.headers["Access-Control-Allow-Origin"] == HOST
    again = await chat_client.post(url, params={"id": "u-1"}, data=PNG,
                                   headers={**auth, "Content-Type": "image/png"})
    assert again.status == 200 and (await again.json())["seq"] == ack["seq"]
    pushed = await chat.frame("message")
    assert pushed["attachments"][0]["content_type"] == "image/png"

    conv = await only_conversation(chat_client)
    [message] = conv["messages"]
    assert message["attachments"][0]["content_type"] == "image/png"
    got = await chat_client.get(f"/chat/{KEY}/files/{ack['seq']}/0", headers=auth)
    assert got.status == 200 and await got.read() == PNG
    stranger = await open_chat(chat_client)
    theirs = await chat_client.get(f"/chat/{KEY}/files/{ack['seq']}/0", headers={
        "Authorization": f"Bearer {stranger.token}"})
    assert theirs.status == 404
    anonymous = await chat_client.get(f"/chat/{KEY}/files/{ack['seq']}/0")
    assert anonymous.status == 401

    refusals = [
        ({**auth, "Content-Type": "image/png"}, b"x" * 5000, 413, "too_large"),
        ({**auth, "Content-Type": "image/png"}, b"<svg onload=alert(1)>", 415,
         "unsupported_type"),
        ({**auth, "Origin": "https://evil.example"}, PNG, 403, "origin_refused"),
        ({"Origin": HOST}, PNG, 401, "token_required"),
        ({**auth, "Authorization": "Bearer forged"}, PNG, 401, "invalid_token"),
    ]
    for headers, body, status, code in refusals:
        refused = await chat_client.post(url, params={"id": "u-2"}, data=body, headers=headers)
        assert (refused.status, (await refused.json())["code"]) == (status, code)
    conv = await only_conversation(chat_client)
    assert len(conv["messages"]) == 1
    await chat.ws.close()
    await stranger.ws.close()


async def test_agents_files_reach_the_visitor_through_their_token(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    await chat.say("Ini lokasinya", "c-1")
    conv_id = (await only_conversation(chat_client))["id"]
    uploaded = await chat_client.post("/api/v1/attachments", data=PNG, headers={
        **AGENT_AUTH, "Content-Type": "image/png"})
    blob_id = (await uploaded.json())["blob_id"]
    resp = await chat_client.post(f"/api/v1/conversations/{conv_id}/messages", json={
        "text": "Sudah diperbaiki", "attachments": [{"blob_id": blob_id,
                                                     "content_type": "image/png",
                                                     "filename": "selesai.png"}]},
        headers=AGENT_AUTH)
    assert resp.status == 202
    pushed = await chat.frame("message")
    assert pushed["attachments"] == [{"position": 0, "content_type": "image/png",
                                      "filename": "selesai.png"}]
    got = await chat_client.get(f"/chat/{KEY}/files/{pushed['seq']}/0",
                                headers={"Authorization": f"Bearer {chat.token}"})
    assert got.status == 200 and await got.read() == PNG
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    await chat.ws.close()


async def test_the_script_the_standalone_page_and_no_webhook(
    chat_client: TestClient[Any, Any],
) -> None:
    script = await chat_client.get("/webchat/widget.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "textContent" in await script.text()
    page = await chat_client.get(f"/chat/{KEY_REQUIRED}")
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    body = await page.text()
    assert f'data-widget="{KEY_REQUIRED}"' in body and "<title>Lapor Ambon</title>" in body
    assert (await chat_client.get("/chat/no-such-widget")).status == 404
    hook = await chat_client.post("/webhooks/webchat", json={})
    assert hook.status == 404
    assert "no webhook" in (await hook.json())["error"]


async def test_without_widgets_the_chat_is_not_there(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.get(f"/chat/{KEY}")).status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_chat(client)
    assert refused.value.status == 404


async def test_a_widget_bound_to_an_opd_the_rules_lack_is_routed_by_the_rules(
    make_client: MakeClient,
) -> None:
    client = await make_client(**{**SETTINGS, "webchat_widgets": [
        {"key": KEY, "name": "Situs lama", "origins": [HOST], "opd": "dinas-lama"}]})
    chat = await open_chat(client)
    await chat.say("Sampah menumpuk di pasar Mardika", "c-1")
    conv = await only_conversation(client)
    assert conv["queue"] == "dlhp" and conv["rule"] != f"account:{KEY}"
    await chat.ws.close()


async def test_a_reply_another_process_sends_reaches_the_socket_by_resync(
    make_client: MakeClient,
) -> None:
    settings = {**SETTINGS, "webchat_resync_s": 0.2}
    holder = await make_client(**settings)
    other = await make_client(
        database_url=holder.server.app[ENGINE].settings.database_url, **settings)
    chat = await open_chat(holder)
    await chat.say("Got tersumbat di Jl. Pattimura", "c-1")
    conv_id = (await only_conversation(holder))["id"]
    # The other process stores and sends the reply; it holds no socket of this visitor.
    reply_id = await reply(other, conv_id, "Petugas kebersihan dijadwalkan besok.")
    carried = []
    async with asyncio.timeout(10):
        # Until the cursor the widget would resume from has passed the reply: the overlap of
        # the reads never sends it twice.
        while chat.cursor < reply_id:
            frame = await chat.frame("history")
            carried += [m["seq"] for m in frame["messages"] if m["seq"] == reply_id]
    assert carried == [reply_id]
    await chat.ws.close()


async def test_the_widget_confirms_replies_it_showed_and_only_those(
    chat_client: TestClient[Any, Any],
) -> None:
    chat = await open_chat(chat_client)
    await chat.say("Drainase tersumbat", "c-1")
    conv_id = (await only_conversation(chat_client))["id"]
    reply_id = await reply(chat_client, conv_id, "Kami cek hari ini.")
    assert (await chat.frame("message"))["seq"] == reply_id
    # At once, as the widget does: the receipt may overtake the record of the send.
    await chat.ws.send_json({"type": "seen", "status": "delivered", "seqs": [reply_id]})
    await wait_for(lambda: _status_is(chat_client, conv_id, reply_id, "delivered"))
    # Another visitor cannot confirm a reply their socket never carried.
    stranger = await open_chat(chat_client)
    await stranger.ws.send_json({"type": "seen", "status": "read", "seqs": [reply_id]})
    await stranger.ws.send_json({"type": "seen", "status": "read", "seqs": "all"})
    assert (await stranger.frame("error"))["code"] == "invalid_frame"
    assert await _status_is(chat_client, conv_id, reply_id, "delivered")
    await chat.ws.send_json({"type": "seen", "status": "read", "seqs": [reply_id]})
    await wait_for(lambda: _status_is(chat_client, conv_id, reply_id, "read"))
    # Forward only: a late `delivered` does not take it back.
    await chat.ws.send_json({"type": "seen", "status": "delivered", "seqs": [reply_id]})
    await chat.ws.send_json({"type": "shout"})
    await chat.frame("error")
    assert await _status_is(chat_client, conv_id, reply_id, "read")
    await chat.ws.close()
    await stranger.ws.close()


async def test_the_token_may_come_in_a_hello_frame_instead_of_the_url(
    chat_client: TestClient[Any, Any],
) -> None:
    first = await open_chat(chat_client)
    ack = await first.say("Jembatan retak", "c-1")
    await first.ws.close()
    ws = await chat_client.ws_connect(f"/chat/{KEY}/socket", headers={"Origin": HOST})
    await ws.send_json({"type": "hello", "token": first.token, "after": 0})
    chat = Chat(ws)
    assert (await chat.frame("welcome"))["new"] is False
    assert [m["seq"] for m in (await chat.frame("history"))["messages"]] == [ack["seq"]]
    await ws.close()
    # Anything else first closes the socket.
    rude = await chat_client.ws_connect(f"/chat/{KEY}/socket", headers={"Origin": HOST})
    await rude.send_json({"type": "message", "id": "c-2", "text": "halo"})
    closed = await rude.receive()
    assert closed.type == aiohttp.WSMsgType.CLOSE
    assert closed.data == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_a_message_that_cannot_be_stored_is_refused_for_a_retry(
    chat_client: TestClient[Any, Any],
) -> None:
    adapter = chat_client.server.app[ENGINE].adapters["webchat"]
    assert isinstance(adapter, WebchatAdapter)
    access = adapter.engine

    async def stopping(_message: Any) -> Any:
        raise ShuttingDown("the engine is shutting down")

    adapter._engine = dataclasses.replace(access, submit=stopping)
    chat = await open_chat(chat_client)
    await chat.ws.send_json({"type": "message", "id": "c-1", "text": "Pohon tumbang"})
    error = await chat.frame("error")
    assert (error["id"], error["code"], error["retry"]) == ("c-1", "unavailable", True)
    adapter._engine = access
    ack = await chat.say("Pohon tumbang", "c-1")
    assert ack["duplicate"] is False
    assert len((await only_conversation(chat_client))["messages"]) == 1
    await chat.ws.close()
