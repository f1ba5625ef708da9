"""WhatsApp's 24-hour customer-service window: free text refused after it, templates go out."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.adapters.graph import fake_graph
from tests.adapters.kits import (
    wamid,
    whatsapp_body,
    whatsapp_message,
    whatsapp_request,
    whatsapp_value,
)
from tests.http.conftest import AGENT_AUTH, MakeClient
from tests.http.test_agent_api import conversation, wait_for_delivery
from tests.http.test_webhook_whatsapp import SETTINGS, conversations

DAY = 24 * 3600


async def citizen_wrote(client: Any, seconds_ago: int, n: int = 1) -> int:
    """The citizen's message, sent `seconds_ago`; the conversation's id."""
    request = whatsapp_request(whatsapp_body(whatsapp_value([whatsapp_message(
        wamid(n), "text", {"body": "Lampu jalan mati di Waihaong"},
        timestamp=str(int(time.time()) - seconds_ago))])))
    resp = await client.post("/webhooks/whatsapp", data=request.body,
                             headers=dict(request.headers))
    assert resp.status == 200, await resp.text()
    [conv] = await conversations(client)
    conv_id: int = conv["id"]
    return conv_id


async def test_free_text_after_the_window_is_refused_and_a_template_goes_out(
    make_client: MakeClient,
) -> None:
    async with fake_graph() as graph:
        client = await make_client(**SETTINGS, whatsapp_api_url=graph.url)
        conv_id = await citizen_wrote(client, seconds_ago=DAY + 600)
        path = f"/api/v1/conversations/{conv_id}/messages"

        refused = await client.post(path, json={"text": "Sudah diperbaiki."},
                                    headers=AGENT_AUTH)
        assert refused.status == 422
        body = await refused.json()
        assert body["reason"] == "reply_window_closed"
        assert "template" in body["error"] and body["window_closed_at"]
        assert len((await conversation(client, conv_id))["messages"]) == 1  # nothing stored

        template = {"name": "laporan_ditindaklanjuti", "language": "id",
                    "parameters": ["AMB-2026-000001"]}
        accepted = await client.post(path, json={"template": template}, headers=AGENT_AUTH)
        assert accepted.status == 202, await accepted.text()
        await wait_for_delivery(client, conv_id, "sent")
        [sent] = [orjson.loads(r.body) for r in graph.sent()]
        assert sent["type"] == "template"
        assert sent["template"]["name"] == "laporan_ditindaklanjuti"
        assert sent["template"]["language"]["code"] == "id"
        [component] = sent["template"]["components"]
        assert component["parameters"] == [{"type": "text", "text": "AMB-2026-000001"}]
        shown = (await conversation(client, conv_id))["messages"][-1]["text"]
        assert "laporan_ditindaklanjuti" in shown and "AMB-2026-000001" in shown


async def test_free_text_within_the_window_goes_out(make_client: MakeClient) -> None:
    async with fake_graph() as graph:
        client = await make_client(**SETTINGS, whatsapp_api_url=graph.url)
        conv_id = await citizen_wrote(client, seconds_ago=DAY - 600)
        resp = await client.post(f"/api/v1/conversations/{conv_id}/messages",
                                 json={"text": "Petugas menuju lokasi."}, headers=AGENT_AUTH)
        assert resp.status == 202
        await wait_for_delivery(client, conv_id, "sent")
        [sent] = [orjson.loads(r.body) for r in graph.sent()]
        assert sent["text"]["body"] == "Petugas menuju lokasi."


async def test_a_late_delivered_older_message_does_not_close_the_window(
    make_client: MakeClient,
) -> None:
    async with fake_graph() as graph:
        client = await make_client(**SETTINGS, whatsapp_api_url=graph.url)
        conv_id = await citizen_wrote(client, seconds_ago=600, n=1)
        # Meta delivers a message written two days ago after the recent one.
        assert await citizen_wrote(client, seconds_ago=2 * DAY, n=2) == conv_id
        resp = await client.post(f"/api/v1/conversations/{conv_id}/messages",
                                 json={"text": "Petugas menuju lokasi."}, headers=AGENT_AUTH)
        assert resp.status == 202, await resp.text()
        await wait_for_delivery(client, conv_id, "sent")
        assert len(graph.sent()) == 1
