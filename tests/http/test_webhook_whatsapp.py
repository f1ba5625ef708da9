"""`/webhooks/whatsapp` end to end: handshake, signed notifications stored and routed, receipts
moving replies' delivery states forward only, and replies reaching the Graph API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from omnichannel.adapters.base import WebhookRequest
from tests.adapters.graph import FakeGraph, fake_graph
from tests.adapters.kits import (
    WA_ACCOUNT,
    WA_ACCOUNTS,
    WA_APP_SECRET,
    WA_CITIZEN,
    WA_VERIFY_TOKEN,
    WHATSAPP,
    wamid,
    whatsapp_body,
    whatsapp_message,
    whatsapp_request,
    whatsapp_status,
    whatsapp_value,
)
from tests.http.conftest import AGENT_AUTH, MakeClient
from tests.http.test_agent_api import conversation, wait_for, wait_for_delivery

STORES = ["sqlite", "postgresql"]
SETTINGS: dict[str, Any] = {"whatsapp_accounts": WA_ACCOUNTS,
                            "whatsapp_app_secret": WA_APP_SECRET,
                            "whatsapp_verify_token": WA_VERIFY_TOKEN}
REPORT = "Sampah di Batu Merah seng diangkut"


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with fake_graph() as fake:
        yield fake


async def post(client: TestClient[Any, Any], request: WebhookRequest) -> ClientResponse:
    return await client.post("/webhooks/whatsapp", data=request.body,
                             headers=dict(request.headers))


async def conversations(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    result: list[dict[str, Any]] = (await resp.json())["conversations"]
    return result


BSUID = "ID.1502576394655843"


def image(n: int, citizen: str = "phone") -> dict[str, Any]:
    """One photo of an album, from a citizen known by phone number or only by BSUID."""
    message = whatsapp_message(wamid(n), "image", {
        "mime_type": "image/jpeg", "sha256": "x", "id": f"14795371396509{n:02d}",
        "caption": "Got tersumbat" if n == 1 else None})
    if citizen == "bsuid":
        del message["from"]
        message["from_user_id"] = BSUID
    return message


def album_value(messages: list[dict[str, Any]], citizen: str) -> dict[str, Any]:
    contacts = ([{"profile": {"name": "Rina", "username": "@rina"}, "user_id": BSUID}]
                if citizen == "bsuid" else None)
    return whatsapp_value(messages, contacts=contacts)


async def test_handshake_through_http(make_client: MakeClient) -> None:
    client = await make_client(**SETTINGS)
    resp = await client.get("/webhooks/whatsapp", params={
        "hub.mode": "subscribe", "hub.verify_token": WA_VERIFY_TOKEN,
        "hub.challenge": "1158201444"})
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert await resp.text() == "1158201444"
    resp = await client.get("/webhooks/whatsapp", params={
        "hub.mode": "subscribe", "hub.verify_token": "not-our-verify-token-0000",
        "hub.challenge": "1158201444"})
    assert resp.status == 403
    assert "1158201444" not in await resp.text()
    assert (await client.put("/webhooks/whatsapp")).status == 405


@pytest.mark.parametrize("store", STORES)
async def test_signed_message_is_stored_once_and_routed_with_the_profile_name(
    make_client: MakeClient, store: str
) -> None:
    client = await make_client(store, **SETTINGS)
    request, _ = WHATSAPP.fixtures[0]
    for _ in range(2):  # Meta sometimes delivers the same webhook again seconds later
        resp = await post(client, request)
        assert resp.status == 200, await resp.text()
    [conv] = await conversations(client)
    assert (conv["channel"], conv["account"], conv["queue"]) == ("whatsapp", WA_ACCOUNT, "dlhp")
    detail = await conversation(client, conv["id"])
    assert [m["external_id"] for m in detail["messages"]] == [wamid(1)]
    assert detail["messages"][0]["text"] == REPORT
    assert detail["contact_name"] == "Rina Latuconsina"
    assert detail["contact_phone"] == "+6281234567890"


@pytest.mark.parametrize("store", STORES)
async def test_tampered_or_forged_notifications_are_refused_with_nothing_stored(
    make_client: MakeClient, store: str
) -> None:
    client = await make_client(store, **SETTINGS)
    request, _ = WHATSAPP.fixtures[0]
    tampered = request.body.replace(b"Batu Merah", b"Batu Gajah")
    assert tampered != request.body
    resp = await client.post("/webhooks/whatsapp", data=tampered,
                             headers=dict(request.headers))
    assert resp.status == 403
    assert "X-Hub-Signature-256" in (await resp.json())["error"]
    for forged in WHATSAPP.forgeries(request):
        assert (await post(client, forged)).status == 403
    assert await conversations(client) == []


async def test_channel_without_configuration_is_disabled(make_client: MakeClient) -> None:
    client = await make_client()
    request, _ = WHATSAPP.fixtures[0]
    assert (await post(client, request)).status == 503


async def test_malformed_and_misshapen_notifications_say_why(make_client: MakeClient) -> None:
    client = await make_client(**SETTINGS)
    assert (await post(client, whatsapp_request(b"{not json"))).status == 400
    resp = await post(client, whatsapp_request({"object": "page", "entry": []}))
    assert resp.status == 422
    assert "not a WhatsApp Cloud API notification" in (await resp.json())["error"]


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("citizen", ["phone", "bsuid"])
async def test_an_album_stays_one_conversation(
    make_client: MakeClient, store: str, citizen: str
) -> None:
    client = await make_client(store, **SETTINGS)
    # WhatsApp sends an album as one message per photo, together or in separate webhooks.
    resp = await post(client, whatsapp_request(whatsapp_body(album_value(
        [image(1, citizen), image(2, citizen), image(3, citizen)], citizen))))
    assert resp.status == 200
    assert len((await resp.json())["stored"]) == 3
    for n in (4, 5):
        assert (await post(client, whatsapp_request(whatsapp_body(album_value(
            [image(n, citizen)], citizen))))).status == 200
    [conv] = await conversations(client)
    messages = (await conversation(client, conv["id"]))["messages"]
    assert sorted(m["external_id"] for m in messages) == sorted(wamid(n) for n in range(1, 6))
    assert all(m["attachments"][0]["url"].startswith("whatsapp-media:") for m in messages)


async def reply_through_whatsapp(client: TestClient[Any, Any], text: str) -> dict[str, Any]:
    """A citizen's report, and an agent's reply sent to the fake Graph API."""
    request, _ = WHATSAPP.fixtures[0]
    assert (await post(client, request)).status == 200
    [conv] = await conversations(client)
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": text}, headers=AGENT_AUTH)
    assert resp.status == 202
    await wait_for_delivery(client, conv["id"], "sent")
    return conv


async def last_message(client: TestClient[Any, Any], conv_id: int) -> dict[str, Any]:
    result: dict[str, Any] = (await conversation(client, conv_id))["messages"][-1]
    return result


@pytest.mark.parametrize("store", STORES)
async def test_receipts_move_a_reply_forward_and_never_back(
    make_client: MakeClient, graph: FakeGraph, store: str
) -> None:
    client = await make_client(store, **SETTINGS, whatsapp_api_url=graph.url)
    conv = await reply_through_whatsapp(client, "Laporan diterima.")
    sent = await last_message(client, conv["id"])
    assert sent["external_id"].startswith("wamid.")
    for status, at in (("sent", "1795827730"), ("read", "1795827790"),
                       ("delivered", "1795827760")):  # the late one, after read
        resp = await post(client, whatsapp_request(whatsapp_body(whatsapp_value(
            statuses=[whatsapp_status(sent["external_id"], status, timestamp=at)]))))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["stored"] == []
        expected = "sent" if status == "sent" else "read"
        assert (await last_message(client, conv["id"]))["delivery_status"] == expected
    # Receipts of messages this engine never sent are kept, and refuse nothing.
    resp = await post(client, whatsapp_request(whatsapp_body(whatsapp_value(
        statuses=[whatsapp_status("wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABEYEk5PVEFOWU9ORQA=",
                                  "delivered")]))))
    assert resp.status == 200


@pytest.mark.parametrize("store", STORES)
async def test_failed_receipt_shows_the_error_code_on_the_reply(
    make_client: MakeClient, graph: FakeGraph, store: str
) -> None:
    client = await make_client(store, **SETTINGS, whatsapp_api_url=graph.url)
    conv = await reply_through_whatsapp(client, "Laporan diterima.")
    sent = await last_message(client, conv["id"])
    resp = await post(client, whatsapp_request(whatsapp_body(whatsapp_value(statuses=[
        whatsapp_status(sent["external_id"], "failed", errors=[{
            "code": 131026, "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Message failed to send because the recipient's "
                                      "phone number is not a WhatsApp number."}}])]))))
    assert resp.status == 200
    failed = await last_message(client, conv["id"])
    assert failed["delivery_status"] == "failed"
    assert failed["delivery_error"].startswith("131026: Message undeliverable")


@pytest.mark.parametrize("store", STORES)
async def test_agent_reply_reaches_the_graph_api_as_the_documented_json(
    make_client: MakeClient, graph: FakeGraph, store: str
) -> None:
    client = await make_client(store, **SETTINGS, whatsapp_api_url=graph.url, auto_ack=True)
    request, _ = WHATSAPP.fixtures[0]
    assert (await post(client, request)).status == 200
    [conv] = await conversations(client)
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": "Petugas DLHP menuju Batu Merah."},
                             headers=AGENT_AUTH)
    assert resp.status == 202

    async def both_sent() -> bool:
        messages = (await conversation(client, conv["id"]))["messages"]
        outbound = [m for m in messages if m["direction"] == "outbound"]
        return len(outbound) == 2 and all(m["delivery_status"] == "sent" for m in outbound)

    # The acknowledgement and the reply are delivered concurrently: in either order.
    await wait_for(both_sent)
    bodies = [orjson.loads(r.body) for r in graph.sent()]
    [acknowledgement] = [b for b in bodies if conv["tracking_number"] in b["text"]["body"]]
    [reply] = [b for b in bodies if b is not acknowledgement]
    # The first message was acknowledged with its tracking number and OPD...
    assert "Dinas Lingkungan Hidup" in acknowledgement["text"]["body"]
    assert acknowledgement["to"] == WA_CITIZEN
    # ...and the agent's reply went from the same number to the same citizen.
    assert reply == {"messaging_product": "whatsapp", "recipient_type": "individual",
                     "to": WA_CITIZEN, "type": "text",
                     "text": {"preview_url": False, "body": "Petugas DLHP menuju Batu Merah."}}
    assert all(r.path == f"/v26.0/{WA_ACCOUNTS[0]['phone_number_id']}/messages"
               for r in graph.sent())
    external_ids = [m["external_id"] for m in (await conversation(client, conv["id"]))["messages"]]
    assert len(set(external_ids)) == 3 and all(i.startswith("wamid.") for i in external_ids)
