"""`/webhooks/telegram` end to end: a genuine update is stored and routed; forgeries are not."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.adapters.kits import BOT_SECRET, BOT_TOKEN, TELEGRAM
from tests.http.conftest import AGENT_AUTH, MakeClient
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


async def test_agent_reply_reaches_the_bot_api_as_send_message(make_client: MakeClient) -> None:
    received: list[str] = []

    async def send_message(request: web.Request) -> web.Response:
        received.append(unquote_plus((await request.read()).decode()))
        return web.json_response(TELEGRAM.provider_reply(200))

    app = web.Application()
    app.router.add_post(TELEGRAM.provider_path, send_message)
    bot_api = TestServer(app, host="127.0.0.1")
    await bot_api.start_server()
    try:
        client = await make_client(telegram_bots=BOTS,
                                   telegram_api_url=str(bot_api.make_url("")).rstrip("/"))
        request, _ = TELEGRAM.fixtures[0]
        await client.post("/webhooks/telegram", data=request.body, headers=dict(request.headers))
        [conv] = await conversations(client)
        resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                                 json={"text": "Laporan diterima, petugas DLHP menuju lokasi."},
                                 headers=AGENT_AUTH)
        assert resp.status == 202
        await wait_for_delivery(client, conv["id"], "sent")
        assert received == ["chat_id=4242&text=Laporan diterima, petugas DLHP menuju lokasi."]
        detail = await (await client.get(f"/api/v1/conversations/{conv['id']}",
                                         headers=AGENT_AUTH)).json()
        assert detail["messages"][-1]["external_id"] == "4242:77"  # chat and message id
    finally:
        await bot_api.close()
