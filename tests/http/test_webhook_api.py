"""`POST /webhooks/api`: accepted messages are stored and routed; every bad request is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.http.conftest import AGENT_AUTH, API_AUTH, MakeClient

GOOD = {
    "external_id": "form-1",
    "sender_id": "citizen-7",
    "sender_name": "Bapak Yos",
    "text": "Sampah di depan pasar su tiga hari seng diangkut, bau skali",
    "sent_at": "2026-11-28T08:00:00+09:00",
}


async def message_count(client: TestClient[Any, Any]) -> int:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    total = 0
    for conv in (await resp.json())["conversations"]:
        detail = await client.get(f"/api/v1/conversations/{conv['id']}", headers=AGENT_AUTH)
        total += len((await detail.json())["messages"])
    return total


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_message_is_stored_routed_and_readable(make_client: MakeClient, store: str) -> None:
    client = await make_client(store)
    resp = await client.post("/webhooks/api", json={**GOOD, "sender_phone": "0812-3456-7890"},
                             headers=API_AUTH)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["duplicate"] is False
    assert body["tracking_number"].startswith("AMB-2026-")
    conv = await (await client.get(f"/api/v1/conversations/{body['conversation_id']}",
                                   headers=AGENT_AUTH)).json()
    assert conv["queue"] == "dlhp"
    assert conv["contact_name"] == "Bapak Yos"
    assert conv["contact_phone"] == "+6281234567890"  # E.164, however it was written
    [message] = conv["messages"]
    assert message["text"] == GOOD["text"]
    assert message["sent_at"].startswith("2026-11-27T23:00:00")  # stored in UTC


async def test_repeated_post_is_stored_once(client: TestClient[Any, Any]) -> None:
    first = await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    again = await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    assert first.status == 201 and again.status == 200
    assert (await again.json())["duplicate"] is True
    assert (await again.json())["message_id"] == (await first.json())["message_id"]
    assert await message_count(client) == 1


async def test_concurrent_posts_of_one_citizen_share_a_conversation(
    client: TestClient[Any, Any],
) -> None:
    posts = [client.post("/webhooks/api", json={**GOOD, "external_id": f"c{i}"},
                         headers=API_AUTH) for i in range(20)]
    answers = [await r.json() for r in await asyncio.gather(*posts)]
    assert len({a["conversation_id"] for a in answers}) == 1
    assert len({a["message_id"] for a in answers}) == 20


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "missing bearer token"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401, "invalid bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing bearer token"),
    ],
)
async def test_bad_token_is_refused_and_nothing_stored(
    client: TestClient[Any, Any], headers: dict[str, str], status: int, says: str
) -> None:
    resp = await client.post("/webhooks/api", json=GOOD, headers=headers)
    assert resp.status == status
    assert says in (await resp.json())["error"]
    assert await message_count(client) == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty body"),
        (b"[1, 2]", 422, "invalid message"),
        (orjson.dumps({**GOOD, "external_id": ""}), 422, "invalid message"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "sender_id"}), 422,
         "invalid message"),
        (orjson.dumps({**GOOD, "text": "  "}), 422, "invalid message"),
        (orjson.dumps({**GOOD, "surprise": 1}), 422, "invalid message"),
        (orjson.dumps({**GOOD, "location": {"latitude": 200, "longitude": 0}}), 422,
         "invalid message"),
        (orjson.dumps({**GOOD, "sent_at": "yesterday"}), 422, "invalid message"),
        (orjson.dumps({**GOOD, "sender_phone": "12345"}), 422, "invalid message"),
    ],
)
async def test_bad_body_gets_a_4xx_that_says_why(
    client: TestClient[Any, Any], body: bytes, status: int, says: str
) -> None:
    resp = await client.post("/webhooks/api", data=body,
                             headers={**API_AUTH, "Content-Type": "application/json"})
    assert resp.status == status
    answer = await resp.json()
    assert says in answer["error"]
    if status == 422 and body.startswith(b"{"):
        assert answer["detail"] and all("field" in d and "problem" in d for d in answer["detail"])
    assert await message_count(client) == 0


async def test_missing_field_is_named(client: TestClient[Any, Any]) -> None:
    body = {k: v for k, v in GOOD.items() if k != "external_id"}
    resp = await client.post("/webhooks/api", json=body, headers=API_AUTH)
    assert resp.status == 422
    assert {"field": "external_id", "problem": "Field required"} in (await resp.json())["detail"]


async def test_oversized_body_is_refused(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=2048)
    big = {**GOOD, "text": "x" * 4000}
    resp = await client.post("/webhooks/api", json=big, headers=API_AUTH)
    assert resp.status == 413
    assert "exceeds the limit of 2048 bytes" in (await resp.json())["error"]

    async def chunks() -> Any:  # no Content-Length: the limit must hold while reading
        yield orjson.dumps(big)

    resp = await client.post("/webhooks/api", data=chunks(),
                             headers={**API_AUTH, "Content-Type": "application/json"})
    assert resp.status == 413
    assert await message_count(client) == 0


async def test_channel_is_disabled_without_a_configured_token(make_client: MakeClient) -> None:
    client = await make_client(api_token=None)
    resp = await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    assert resp.status == 503
    assert "no token is configured" in (await resp.json())["error"]


async def test_greeting_goes_to_triage_until_content_arrives(
    client: TestClient[Any, Any],
) -> None:
    hello = await client.post("/webhooks/api", json={**GOOD, "external_id": "g",
                                                     "text": "halo min, selamat pagi"},
                              headers=API_AUTH)
    conv_id = (await hello.json())["conversation_id"]
    conv = await (await client.get(f"/api/v1/conversations/{conv_id}", headers=AGENT_AUTH)).json()
    assert conv["queue"] == "triage"
    await client.post("/webhooks/api", json={**GOOD, "external_id": "g2",
                                             "sent_at": "2026-11-28T08:05:00+09:00"},
                      headers=API_AUTH)
    conv = await (await client.get(f"/api/v1/conversations/{conv_id}", headers=AGENT_AUTH)).json()
    assert conv["queue"] == "dlhp"
    assert len(conv["messages"]) == 2


async def test_only_post_is_accepted(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/webhooks/api", headers=API_AUTH)
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await client.post("/webhooks/nonesuch", json=GOOD)).status == 404


async def test_an_empty_phone_is_no_phone(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/webhooks/api", json={**GOOD, "sender_phone": " "},
                             headers=API_AUTH)
    assert resp.status == 201
    conv_id = (await resp.json())["conversation_id"]
    conv = await (await client.get(f"/api/v1/conversations/{conv_id}", headers=AGENT_AUTH)).json()
    assert conv["contact_phone"] is None
