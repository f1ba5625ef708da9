"""The agent API: list, read, reply through the channel, change status, follow events live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from omnichannel.appkeys import ENGINE
from omnichannel.delivery import Outgoing
from tests.http.conftest import AGENT_AUTH, API_AUTH, CallbackRecorder, MakeClient
from tests.http.test_webhook_api import GOOD


async def post(client: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    resp = await client.post("/webhooks/api", json={**GOOD, **fields}, headers=API_AUTH)
    assert resp.status in (200, 201), await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def wait_for_delivery(client: TestClient[Any, Any], conv_id: int, status: str) -> None:
    """Wait until the conversation's last message has delivery status `status`."""

    async def reached() -> bool:
        conv = await conversation(client, conv_id)
        return bool(conv["messages"][-1]["delivery_status"] == status)

    await wait_for(reached)


async def conversation(client: TestClient[Any, Any], conv_id: int) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/conversations/{conv_id}", headers=AGENT_AUTH)
    assert resp.status == 200
    result: dict[str, Any] = await resp.json()
    return result


async def test_list_filters_by_queue_and_status(client: TestClient[Any, Any]) -> None:
    a = await post(client, external_id="a", sender_id="s1")
    b = await post(client, external_id="b", sender_id="s2",
                   text="Jalan di Kudamati berlubang besar, motor jatuh tiap hari")
    resp = await client.get("/api/v1/conversations?queue=dlhp", headers=AGENT_AUTH)
    assert [c["id"] for c in (await resp.json())["conversations"]] == [a["conversation_id"]]
    await client.post(f"/api/v1/conversations/{b['conversation_id']}/status",
                      json={"status": "resolved"}, headers=AGENT_AUTH)
    resp = await client.get("/api/v1/conversations?status=resolved", headers=AGENT_AUTH)
    assert [c["id"] for c in (await resp.json())["conversations"]] == [b["conversation_id"]]
    resp = await client.get("/api/v1/conversations?status=bogus", headers=AGENT_AUTH)
    assert resp.status == 400 and "unknown status" in (await resp.json())["error"]
    resp = await client.get("/api/v1/conversations?limit=0", headers=AGENT_AUTH)
    assert resp.status == 400


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_reply_is_delivered_to_the_callback(
    make_client: MakeClient, callback: CallbackRecorder, store: str
) -> None:
    client = await make_client(store, api_callback_url=callback.url)
    accepted = await post(client)
    conv_id = accepted["conversation_id"]
    resp = await client.post(f"/api/v1/conversations/{conv_id}/messages",
                             json={"text": "Terima kasih, petugas DLHP segera ke lokasi.",
                                   "author": "agent-dlhp-1"}, headers=AGENT_AUTH)
    assert resp.status == 202
    reply = await resp.json()
    assert reply["direction"] == "outbound" and reply["delivery_status"] == "queued"

    await wait_for_delivery(client, conv_id, "sent")
    [delivered] = callback.received
    assert delivered["text"] == "Terima kasih, petugas DLHP segera ke lokasi."
    assert delivered["recipient"] == GOOD["sender_id"]
    assert delivered["tracking_number"] == accepted["tracking_number"]
    assert callback.headers[0]["Idempotency-Key"] == f"omnichannel-{reply['id']}"
    conv = await conversation(client, conv_id)
    assert conv["status"] == "open"  # an agent's first reply opens a new conversation
    assert [m["direction"] for m in conv["messages"]] == ["inbound", "outbound"]


async def test_failing_callback_is_retried_then_marked_failed(
    make_client: MakeClient, callback: CallbackRecorder
) -> None:
    client = await make_client(api_callback_url=callback.url, delivery_attempts=3)
    client.server.app[ENGINE].deliverer._backoff_s = 0.01
    callback.fail_with = [503, 502, 500]
    conv_id = (await post(client))["conversation_id"]
    await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": "Halo"},
                      headers=AGENT_AUTH)

    await wait_for_delivery(client, conv_id, "failed")
    last = (await conversation(client, conv_id))["messages"][-1]
    assert last["delivery_attempts"] == 3
    assert "HTTP 500" in last["delivery_error"]
    assert len(callback.received) == 3


async def test_retry_after_a_transient_error_succeeds(
    make_client: MakeClient, callback: CallbackRecorder
) -> None:
    client = await make_client(api_callback_url=callback.url)
    client.server.app[ENGINE].deliverer._backoff_s = 0.01
    callback.fail_with = [503]
    conv_id = (await post(client))["conversation_id"]
    await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": "Halo"},
                      headers=AGENT_AUTH)

    await wait_for_delivery(client, conv_id, "sent")
    assert len(callback.received) == 2


async def test_reply_without_a_sender_fails_visibly(client: TestClient[Any, Any]) -> None:
    conv_id = (await post(client))["conversation_id"]
    await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": "Halo"},
                      headers=AGENT_AUTH)

    await wait_for_delivery(client, conv_id, "failed")
    assert "no api_callback_url" in (await conversation(client, conv_id))["messages"][-1][
        "delivery_error"]


async def test_errors_of_the_agent_api(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/api/v1/conversations")).status == 401
    assert (await client.get("/api/v1/conversations/999", headers=AGENT_AUTH)).status == 404
    assert (await client.get("/api/v1/conversations/abc", headers=AGENT_AUTH)).status == 400
    resp = await client.post("/api/v1/conversations/999/messages", json={"text": "x"},
                             headers=AGENT_AUTH)
    assert resp.status == 404
    conv_id = (await post(client))["conversation_id"]
    resp = await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": ""},
                             headers=AGENT_AUTH)
    assert resp.status == 422
    resp = await client.post(f"/api/v1/conversations/{conv_id}/status",
                             json={"status": "archived"}, headers=AGENT_AUTH)
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["field"] == "status"


async def test_resolved_conversation_is_followed_by_a_new_one(
    client: TestClient[Any, Any],
) -> None:
    first = await post(client, external_id="one")
    resp = await client.post(f"/api/v1/conversations/{first['conversation_id']}/status",
                             json={"status": "resolved"}, headers=AGENT_AUTH)
    assert resp.status == 200
    second = await post(client, external_id="two")
    assert second["conversation_id"] != first["conversation_id"]
    resp = await client.post(f"/api/v1/conversations/{first['conversation_id']}/status",
                             json={"status": "open"}, headers=AGENT_AUTH)
    assert resp.status == 409


async def test_events_stream_routed_messages_live(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/events?queue=dlhp", headers=AGENT_AUTH)
    assert resp.status == 200
    assert await resp.content.readline() == b": connected\n"
    await resp.content.readline()
    await post(client, external_id="other", sender_id="x",
               text="Jalan di Kudamati berlubang besar, motor jatuh tiap hari")
    accepted = await post(client)
    async with asyncio.timeout(10):
        lines = [await resp.content.readline() for _ in range(3)]
    assert lines[0] == f"id: {accepted['message_id']}\n".encode()
    assert lines[1] == b"event: routed\n"
    assert b'"queue":"dlhp"' in lines[2] and b'"schema":1' in lines[2]
    resp.close()


async def test_ids_beyond_the_database_range_are_a_client_error(
    client: TestClient[Any, Any],
) -> None:
    huge = str(2**70)
    for path in (f"/api/v1/conversations/{huge}", f"/api/v1/conversations?before={huge}",
                 f"/api/v1/conversations?limit={huge}"):
        resp = await client.get(path, headers=AGENT_AUTH)
        assert resp.status == 400, path
        assert "between" in (await resp.json())["error"] or "limit" in (await resp.json())["error"]


async def test_a_reply_whose_provider_id_is_taken_is_still_recorded_as_sent(
    client: TestClient[Any, Any],
) -> None:
    class SameIdSender:
        """A provider that answers every send with the same id."""

        async def send(self, message: Outgoing) -> str | None:
            return "provider-id-1"

    engine = client.server.app[ENGINE]
    engine.deliverer._senders = lambda _channel, _account: SameIdSender()
    conv_id = (await post(client))["conversation_id"]
    for text in ("first", "second"):
        await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": text},
                          headers=AGENT_AUTH)
        await wait_for_delivery(client, conv_id, "sent")
    statuses = [m["delivery_status"] for m in (await conversation(client, conv_id))["messages"]]
    assert statuses == [None, "sent", "sent"]
