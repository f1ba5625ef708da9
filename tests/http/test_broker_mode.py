"""End to end on the real servers: HTTP in, PostgreSQL, RabbitMQ OPD queue out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from omnichannel.appkeys import ENGINE
from omnichannel.model import InboundMessage, Sender
from tests.adapters.graph import fake_graph
from tests.adapters.kits import (
    WHATSAPP,
    whatsapp_body,
    whatsapp_request,
    whatsapp_status,
    whatsapp_value,
)
from tests.conftest import BROKER_URL, PG_URL
from tests.http.conftest import (
    AGENT_AUTH,
    API_AUTH,
    MakeClient,
    assert_all_published,
)
from tests.http.test_agent_api import conversation, wait_for_delivery
from tests.http.test_webhook_api import GOOD
from tests.http.test_webhook_whatsapp import SETTINGS as WHATSAPP_SETTINGS


@pytest.fixture
async def prefix(broker_prefix: str) -> str:
    return broker_prefix


async def test_message_lands_on_its_opd_queue_in_rabbitmq(
    make_client: MakeClient, prefix: str
) -> None:
    client = await make_client("postgresql", broker_url=BROKER_URL, broker_prefix=prefix)
    resp = await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    assert resp.status == 201
    accepted = await resp.json()
    await assert_all_published(prefix, {accepted["message_id"]}, queue="dlhp")
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"database": True, "bus": True}


async def test_every_message_of_a_burst_is_published_once_routed(
    make_client: MakeClient, prefix: str
) -> None:
    client = await make_client("postgresql", broker_url=BROKER_URL, broker_prefix=prefix)
    posts = [client.post("/webhooks/api", json={**GOOD, "external_id": f"b{i}",
                                                "sender_id": f"s{i % 13}"}, headers=API_AUTH)
             for i in range(300)]
    ids = {(await r.json())["message_id"] for r in await asyncio.gather(*posts)}
    assert len(ids) == 300
    await assert_all_published(prefix, ids, queue="dlhp")
    engine = client.server.app[ENGINE]
    await engine.publisher.drain()
    async with engine.db.api.connect() as conn:
        unpublished = (await conn.execute(sa.text(
            "SELECT count(*) FROM message WHERE published_at IS NULL"))).scalar_one()
    assert unpublished == 0


async def test_ingest_is_not_starved_by_slow_agent_queries(
    make_client: MakeClient, tmp_path: Path
) -> None:
    if not PG_URL:
        pytest.skip("PostgreSQL not configured: set OMNICHANNEL_TEST_DATABASE_URL")
    client = await make_client("postgresql", api_pool_size=2)
    engine = client.server.app[ENGINE]
    sleep_s = 4.0

    async def slow_query() -> Any:
        async with engine.db.api.connect() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": sleep_s})

    # Every connection agents' queries may use is now busy for seconds.
    hogs = [asyncio.create_task(slow_query()) for _ in range(4)]
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    stored = await asyncio.gather(*(engine.pipeline.submit(InboundMessage(
        channel="api", account="default", external_id=f"starve-{i}",
        sender=Sender(id=f"c{i}"), text="sampah menumpuk")) for i in range(20)))
    elapsed = time.perf_counter() - started
    assert all(not s.duplicate for s in stored)
    assert elapsed < sleep_s / 2, f"ingest waited {elapsed:.2f}s behind agents' queries"
    assert not any(h.done() for h in hogs)
    await asyncio.gather(*hogs)
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    assert resp.status == 200


async def test_whatsapp_both_ways_on_postgresql_and_rabbitmq(
    make_client: MakeClient, prefix: str
) -> None:
    async with fake_graph() as graph:
        client = await make_client("postgresql", broker_url=BROKER_URL, broker_prefix=prefix,
                                   **WHATSAPP_SETTINGS, whatsapp_api_url=graph.url)
        request, _ = WHATSAPP.fixtures[0]
        resp = await client.post("/webhooks/whatsapp", data=request.body,
                                 headers=dict(request.headers))
        assert resp.status == 200, await resp.text()
        stored = (await resp.json())["stored"]
        await assert_all_published(prefix, set(stored), queue="dlhp")

        conv_id = (await conversation_of(client))["id"]
        resp = await client.post(f"/api/v1/conversations/{conv_id}/messages",
                                 json={"text": "Petugas menuju lokasi."}, headers=AGENT_AUTH)
        assert resp.status == 202
        await wait_for_delivery(client, conv_id, "sent")
        [sent] = graph.sent()
        assert orjson.loads(sent.body)["text"]["body"] == "Petugas menuju lokasi."
        wamid = (await conversation(client, conv_id))["messages"][-1]["external_id"]
        receipt = whatsapp_request(whatsapp_body(whatsapp_value([], statuses=[
            whatsapp_status(wamid, "read")])))
        resp = await client.post("/webhooks/whatsapp", data=receipt.body,
                                 headers=dict(receipt.headers))
        assert resp.status == 200
        await wait_for_delivery(client, conv_id, "read")


async def conversation_of(client: Any) -> dict[str, Any]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    [conv] = (await resp.json())["conversations"]
    result: dict[str, Any] = conv
    return result
