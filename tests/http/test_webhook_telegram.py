"""`/webhooks/telegram` end to end: a genuine update is stored and routed; forgeries are not."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from telegram import Chat, Message, Update, User

from tests.adapters.kits import BOT_SECRET, BOT_TOKEN, TELEGRAM
from tests.conftest import BROKER_URL, REPO
from tests.http.conftest import AGENT_AUTH, MakeClient, assert_all_published
from tests.http.test_agent_api import wait_for_delivery

BOTS = [{"account": "lapor_ambon_bot", "token": BOT_TOKEN, "webhook_secret": BOT_SECRET}]


async def conversations(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    result: list[dict[str, Any]] = (await resp.json())["conversations"]
    return result


async def test_update_is_stored_once_and_routed(make_client: MakeClient) -> None:
    client = await make_client(telegram_bots=BOTS)
    request, _ = TELEGRAM.fixtures[0]
    for _ in range(2):  # Telegram retries a webhook it thinks failed
        resp = await client.post("/webhooks/telegram", data=request.body,
                                 headers=dict(request.headers))
        assert resp.status == 200, await resp.text()
    [conv] = await conversations(client)
    assert (conv["channel"], conv["account"], conv["queue"]) == (
        "telegram", "lapor_ambon_bot", "dlhp")
    detail = await (await client.get(f"/api/v1/conversations/{conv['id']}",
                                     headers=AGENT_AUTH)).json()
    assert [m["external_id"] for m in detail["messages"]] == ["4242:10"]
    assert detail["contact_name"] == "Rina Latuconsina"


async def test_forged_update_is_refused_with_nothing_stored(make_client: MakeClient) -> None:
    client = await make_client(telegram_bots=BOTS)
    request, _ = TELEGRAM.fixtures[0]
    for forged in TELEGRAM.forgeries(request):
        resp = await client.post("/webhooks/telegram", data=forged.body,
                                 headers=dict(forged.headers))
        assert resp.status == 403
        assert "X-Telegram-Bot-Api-Secret-Token" in (await resp.json())["error"]
    assert await conversations(client) == []


async def test_channel_without_bots_is_disabled(client: TestClient[Any, Any]) -> None:
    request, _ = TELEGRAM.fixtures[0]
    resp = await client.post("/webhooks/telegram", data=request.body,
                             headers=dict(request.headers))
    assert resp.status == 503


async def test_malformed_update_is_a_400(make_client: MakeClient) -> None:
    client = await make_client(telegram_bots=BOTS)
    request, _ = TELEGRAM.fixtures[0]
    resp = await client.post("/webhooks/telegram", data=b"{not json",
                             headers=dict(request.headers))
    assert resp.status == 400


@pytest.mark.parametrize("mode", ["embedded", "broker"])
async def test_agent_reply_reaches_the_bot_api_as_send_message(
    make_client: MakeClient, mode: str, request: pytest.FixtureRequest
) -> None:
    received: list[str] = []

    async def send_message(request: web.Request) -> web.Response:
        received.append(unquote_plus((await request.read()).decode()))
        return web.json_response(TELEGRAM.provider_reply(200))

    app = web.Application()
    app.router.add_post(TELEGRAM.provider_path, send_message)
    bot_api = TestServer(app, host="127.0.0.1")
    await bot_api.start_server()
    try:
        api_url = str(bot_api.make_url("")).rstrip("/")
        if mode == "broker":
            prefix = request.getfixturevalue("broker_prefix")
            client = await make_client("postgresql", telegram_bots=BOTS,
                                       telegram_api_url=api_url, broker_url=BROKER_URL,
                                       broker_prefix=prefix, auto_ack=True)
        else:
            client = await make_client(telegram_bots=BOTS, telegram_api_url=api_url,
                                       auto_ack=True)
        update, _ = TELEGRAM.fixtures[0]
        resp = await client.post("/webhooks/telegram", data=update.body,
                                 headers=dict(update.headers))
        stored = (await resp.json())["stored"]
        if mode == "broker":
            # The update lands on its OPD's queue in RabbitMQ.
            await assert_all_published(prefix, set(stored), queue="dlhp")
        [conv] = await conversations(client)
        resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                                 json={"text": "Laporan diterima, petugas DLHP menuju lokasi."},
                                 headers=AGENT_AUTH)
        assert resp.status == 202
        await wait_for_delivery(client, conv["id"], "sent")
        acknowledgement, reply = received
        # The first message was acknowledged with its tracking number and OPD...
        assert conv["tracking_number"] in acknowledgement
        assert "Dinas Lingkungan Hidup" in acknowledgement
        # ...and the agent's reply followed, through the same bot to the same chat.
        assert reply == "chat_id=4242&text=Laporan diterima, petugas DLHP menuju lokasi."
        detail = await (await client.get(f"/api/v1/conversations/{conv['id']}",
                                         headers=AGENT_AUTH)).json()
        external_ids = [m["external_id"] for m in detail["messages"]]
        assert all(i.startswith("4242:") for i in external_ids)  # chat and message id
        assert len(set(external_ids)) == 3  # the citizen's, the acknowledgement, the reply
    finally:
        await bot_api.close()


async def test_set_webhook_registers_every_bot_with_its_secret() -> None:
    calls: list[dict[str, str]] = []

    async def set_webhook(request: web.Request) -> web.Response:
        calls.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_post(f"/bot{BOT_TOKEN}/setWebhook", set_webhook)
    bot_api = TestServer(app, host="127.0.0.1")
    await bot_api.start_server()
    try:
        env = {**os.environ, "OMNICHANNEL_TELEGRAM_BOTS": json.dumps(BOTS),
               "OMNICHANNEL_TELEGRAM_API_URL": str(bot_api.make_url("")).rstrip("/"),
               "OMNICHANNEL_PUBLIC_URL": "https://lapor.ambon.example"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "omnichannel.cli", "channels", "telegram", "set-webhook",
            env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "lapor_ambon_bot: webhook set to" in out.decode()
        [call] = calls
        assert call["url"] == "https://lapor.ambon.example/webhooks/telegram"
        assert call["secret_token"] == BOT_SECRET
        assert BOT_SECRET not in out.decode() + err.decode()  # secrets stay out of output
    finally:
        await bot_api.close()


async def test_start_is_answered_with_how_to_report_and_stores_nothing(
    make_client: MakeClient,
) -> None:
    client = await make_client(telegram_bots=BOTS)
    start = Update(update_id=9, message=Message(
        message_id=1, date=datetime(2026, 11, 28, tzinfo=UTC), chat=Chat(id=4242, type="private"),
        from_user=User(id=4242, first_name="Rina", is_bot=False), text="/start"))
    request, _ = TELEGRAM.fixtures[0]
    resp = await client.post("/webhooks/telegram", data=start.to_json(),
                             headers=dict(request.headers))
    assert resp.status == 200
    answer = await resp.json()
    assert answer["method"] == "sendMessage" and answer["chat_id"] == 4242
    assert "laporan" in answer["text"].lower()
    assert await conversations(client) == []


async def test_edited_message_is_recorded_as_an_edit(make_client: MakeClient) -> None:
    client = await make_client(telegram_bots=BOTS)
    request, _ = TELEGRAM.fixtures[0]
    await client.post("/webhooks/telegram", data=request.body, headers=dict(request.headers))
    when = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)
    edited = Update(update_id=20, edited_message=Message(
        message_id=10, date=when, edit_date=datetime(2026, 11, 28, 1, 5, tzinfo=UTC),
        chat=Chat(id=4242, type="private"),
        from_user=User(id=4242, first_name="Rina", is_bot=False),
        text="Sampah di Batu Merah seng diangkut, su satu minggu"))
    resp = await client.post("/webhooks/telegram", data=edited.to_json(),
                             headers=dict(request.headers))
    assert resp.status == 200
    [conv] = await conversations(client)
    detail = await (await client.get(f"/api/v1/conversations/{conv['id']}",
                                     headers=AGENT_AUTH)).json()
    [message] = detail["messages"]
    assert message["text"].endswith("su satu minggu")
    assert message["edits"][0]["text"] == "Sampah di Batu Merah seng diangkut"
