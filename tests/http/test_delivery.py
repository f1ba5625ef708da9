"""Replies through the outbound stage: retries by agents, restarts, crashes, many workers."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import aio_pika
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from omnichannel.appkeys import ENGINE
from omnichannel.store.tables import MESSAGE, utcnow
from tests.conftest import BROKER_URL
from tests.http.conftest import AGENT_AUTH, CallbackRecorder, MakeClient
from tests.http.test_agent_api import conversation, post, wait_for, wait_for_delivery


async def send_reply(client: TestClient[Any, Any], conv_id: int, text: str) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/conversations/{conv_id}/messages", json={"text": text},
                             headers=AGENT_AUTH)
    assert resp.status == 202, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_an_agent_retry_sends_a_failed_reply_again(
    make_client: MakeClient, callback: CallbackRecorder, engine_settings: dict[str, Any]
) -> None:
    client = await make_client(**engine_settings, api_callback_url=callback.url,
                               delivery_attempts=2)
    client.server.app[ENGINE].deliverer._backoff_s = 0.01
    callback.fail_with = [503, 503]
    conv_id = (await post(client))["conversation_id"]
    reply = await send_reply(client, conv_id, "Petugas sudah kami kirim")
    await wait_for_delivery(client, conv_id, "failed")

    resp = await client.post(f"/api/v1/messages/{reply['id']}/retry", headers=AGENT_AUTH)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["delivery_status"] == "queued"
    await wait_for_delivery(client, conv_id, "sent")
    assert len(callback.received) == 3
    last = (await conversation(client, conv_id))["messages"][-1]
    assert last["delivery_error"] is None and last["delivery_attempts"] == 1

    again = await client.post(f"/api/v1/messages/{reply['id']}/retry", headers=AGENT_AUTH)
    assert again.status == 409
    assert "only a failed reply" in (await again.json())["error"]
    missing = await client.post("/api/v1/messages/999999/retry", headers=AGENT_AUTH)
    assert missing.status == 404
    assert (await client.post(f"/api/v1/messages/{reply['id']}/retry")).status == 401


async def test_a_reply_cut_off_by_a_stop_is_sent_by_the_next_engine(
    make_client: MakeClient, callback: CallbackRecorder, engine_settings: dict[str, Any]
) -> None:
    first = await make_client(**engine_settings, api_callback_url=callback.url,
                              delivery_timeout_s=30)
    url = str(first.server.app[ENGINE].settings.database_url)
    callback.delay_s = 60  # the provider hangs: the stop comes mid-send
    conv_id = (await post(first))["conversation_id"]
    reply = await send_reply(first, conv_id, "Mohon ditunggu")
    await wait_for(lambda: _received(callback, 1))
    await first.close()

    callback.delay_s = 0
    second = await make_client(**engine_settings, database_url=url,
                               api_callback_url=callback.url)
    await wait_for_delivery(second, conv_id, "sent")
    assert len(callback.received) == 2
    # Both sends carry the reply's key, so the provider can tell the second is the same reply.
    keys = {h["Idempotency-Key"] for h in callback.headers}
    assert keys == {f"omnichannel-{reply['id']}"}


async def test_a_reply_claimed_by_a_worker_that_died_is_sent_once_its_claim_lapses(
    make_client: MakeClient, callback: CallbackRecorder, engine_settings: dict[str, Any]
) -> None:
    client = await make_client(**engine_settings, api_callback_url=callback.url)
    engine = client.server.app[ENGINE]
    conv_id = (await post(client))["conversation_id"]
    reply = await send_reply(client, conv_id, "Sudah ditangani")
    await wait_for_delivery(client, conv_id, "sent")
    # As if a worker had claimed the reply again and been killed: status `sending`, and a
    # claim that lapses a second from now.
    async with engine.db.write(engine.db.api) as conn:
        await conn.execute(sa.update(MESSAGE).where(MESSAGE.c.id == reply["id"]).values(
            delivery_status="sending",
            delivery_lease_until=utcnow() + timedelta(seconds=1)))
    await client.close()

    restarted = await make_client(**engine_settings, database_url=engine.settings.database_url,
                                  api_callback_url=callback.url, delivery_sweep_s=0.2)
    await wait_for_delivery(restarted, conv_id, "sent")
    assert len(callback.received) == 2


async def test_a_reply_waits_for_the_earlier_one_of_its_conversation(
    make_client: MakeClient, callback: CallbackRecorder, engine_settings: dict[str, Any]
) -> None:
    client = await make_client(**engine_settings, api_callback_url=callback.url)
    client.server.app[ENGINE].deliverer._backoff_s = 0.3
    callback.fail_with = [503]  # the first reply needs a second attempt
    conv_id = (await post(client))["conversation_id"]
    await send_reply(client, conv_id, "satu")
    await send_reply(client, conv_id, "dua")
    await wait_for(lambda: _all_sent(client, conv_id))
    # The citizen reads the replies in the order they were written.
    assert [r["text"] for r in callback.received] == ["satu", "satu", "dua"]


async def test_every_reply_is_sent_once_by_two_engines_sharing_the_queues(
    make_client: MakeClient, callback: CallbackRecorder, broker_prefix: str
) -> None:
    mode = {"store": "postgresql", "broker_url": BROKER_URL, "broker_prefix": broker_prefix}
    one = await make_client(**mode, api_callback_url=callback.url)
    url = one.server.app[ENGINE].settings.database_url
    two = await make_client(**mode, database_url=url, api_callback_url=callback.url)
    conversations = [(await post(one, external_id=f"e{i}", sender_id=f"c{i}"))
                     ["conversation_id"] for i in range(10)]
    replies = [await send_reply(client, conv_id, f"balasan {n}")
               for conv_id in conversations for n, client in enumerate((one, two))]
    for conv_id in conversations:
        await wait_for(lambda c=conv_id: _all_sent(one, c))
    keys = [h["Idempotency-Key"] for h in callback.headers]
    assert sorted(keys) == sorted(f"omnichannel-{r['id']}" for r in replies)
    connection = await aio_pika.connect(BROKER_URL or "")
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{broker_prefix}.outbound.api", passive=True)
        assert queue.declaration_result.message_count == 0


async def _received(callback: CallbackRecorder, count: int) -> bool:
    return len(callback.received) >= count


async def _all_sent(client: TestClient[Any, Any], conv_id: int) -> bool:
    messages = (await conversation(client, conv_id))["messages"]
    return all(m["delivery_status"] == "sent" for m in messages if m["direction"] == "outbound")


async def test_files_of_a_reply_reach_the_api_callback(
    make_client: MakeClient, callback: CallbackRecorder
) -> None:
    client = await make_client(api_callback_url=callback.url)
    upload = await client.post("/api/v1/attachments", data=b"%PDF-1.7 surat",
                               headers={**AGENT_AUTH, "Content-Type": "application/pdf"})
    blob_id = (await upload.json())["blob_id"]
    conv_id = (await post(client))["conversation_id"]
    resp = await client.post(f"/api/v1/conversations/{conv_id}/messages", headers=AGENT_AUTH,
                             json={"attachments": [{"blob_id": blob_id,
                                                    "content_type": "application/pdf",
                                                    "filename": "surat.pdf"}]})
    assert resp.status == 202, await resp.text()
    await wait_for_delivery(client, conv_id, "sent")
    [sent] = callback.received[-1]["attachments"]
    assert base64.b64decode(sent["content_base64"]) == b"%PDF-1.7 surat"
    assert (sent["content_type"], sent["filename"]) == ("application/pdf", "surat.pdf")
