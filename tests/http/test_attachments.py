"""Files citizens send: fetched from the provider after the answer, kept, served to agents."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from omnichannel.appkeys import ENGINE
from tests.adapters.kits import BOT_TOKEN, TELEGRAM
from tests.http.conftest import AGENT_AUTH, MakeClient
from tests.http.test_agent_api import conversation, wait_for
from tests.http.test_webhook_telegram import BOTS, conversations

PHOTO = b"\xff\xd8\xff\xe0" + b"pothole" * 500
#: The contract kit's photo update: caption "Lubang di jalan", largest size `large-id`.
PHOTO_UPDATE, _ = TELEGRAM.fixtures[1]


class FakeBotApi:
    """`getFile`, file downloads and `sendMessage` of the Bot API, recording what it is asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"large-id": PHOTO}
        self.get_file_errors: list[tuple[int, str]] = []
        self.reported_size: int | None = None
        self.sent: list[dict[str, list[str]]] = []
        self.downloads = 0
        self.url = ""

    async def get_file(self, request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        if self.get_file_errors:
            status, description = self.get_file_errors.pop(0)
            return web.json_response({"ok": False, "error_code": status,
                                      "description": description}, status=status)
        file_id = form["file_id"][0]
        size = self.reported_size or len(self.files[file_id])
        return web.json_response({"ok": True, "result": {
            "file_id": file_id, "file_unique_id": "u-" + file_id, "file_size": size,
            "file_path": f"photos/{file_id}.jpg"}})

    async def download(self, request: web.Request) -> web.Response:
        self.downloads += 1
        name = request.match_info["name"].removesuffix(".jpg")
        return web.Response(body=self.files[name], content_type="image/jpeg")

    async def send_message(self, request: web.Request) -> web.Response:
        self.sent.append(parse_qs((await request.read()).decode()))
        return web.json_response(TELEGRAM.provider_reply(200))


@pytest.fixture
async def bot_api() -> AsyncIterator[FakeBotApi]:
    fake = FakeBotApi()
    app = web.Application()
    app.router.add_post(f"/bot{BOT_TOKEN}/getFile", fake.get_file)
    app.router.add_get(f"/file/bot{BOT_TOKEN}/photos/{{name}}", fake.download)
    app.router.add_post(TELEGRAM.provider_path, fake.send_message)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


async def photo_message(client: TestClient[Any, Any]) -> dict[str, Any]:
    """Post the photo update; the stored message once its file is no longer pending."""
    resp = await client.post("/webhooks/telegram", data=PHOTO_UPDATE.body,
                             headers=dict(PHOTO_UPDATE.headers))
    assert resp.status == 200, await resp.text()
    [conv] = await conversations(client)

    async def settled() -> bool:
        first = (await conversation(client, conv["id"]))["messages"][0]
        return bool(first["attachments"][0].get("status"))

    await wait_for(settled)
    result: dict[str, Any] = (await conversation(client, conv["id"]))["messages"][0]
    return result


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_photo_is_fetched_and_served_to_agents(
    make_client: MakeClient, bot_api: FakeBotApi, store: str
) -> None:
    client = await make_client(store, telegram_bots=BOTS, telegram_api_url=bot_api.url)
    message = await photo_message(client)
    [attachment] = message["attachments"]
    assert attachment["status"] == "stored" and attachment["size"] == len(PHOTO)
    resp = await client.get(f"/api/v1/messages/{message['id']}/attachments/0",
                            headers=AGENT_AUTH)
    assert resp.status == 200
    assert await resp.read() == PHOTO
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    unauthorised = await client.get(f"/api/v1/messages/{message['id']}/attachments/0")
    assert unauthorised.status == 401
    missing = await client.get(f"/api/v1/messages/{message['id']}/attachments/1",
                               headers=AGENT_AUTH)
    assert missing.status == 404


async def test_a_file_over_the_bot_api_limit_is_recorded_and_the_citizen_told(
    make_client: MakeClient, bot_api: FakeBotApi
) -> None:
    bot_api.get_file_errors = [(400, "Bad Request: file is too big")]
    client = await make_client(telegram_bots=BOTS, telegram_api_url=bot_api.url)
    message = await photo_message(client)
    assert message["attachments"][0]["status"] == "too_large"
    assert message["text"] == "Lubang di jalan"  # the report itself is kept

    await wait_for(lambda: _sent(bot_api, 1))
    [notice] = bot_api.sent
    assert notice["chat_id"] == ["4242"]
    assert "terlalu besar" in notice["text"][0] and "20 MB" in notice["text"][0]
    resp = await client.get(f"/api/v1/messages/{message['id']}/attachments/0",
                            headers=AGENT_AUTH)
    assert resp.status == 404
    assert (await resp.json())["fetch_status"] == "too_large"


async def test_a_file_over_our_own_limit_is_not_downloaded(
    make_client: MakeClient, bot_api: FakeBotApi
) -> None:
    client = await make_client(telegram_bots=BOTS, telegram_api_url=bot_api.url,
                               max_attachment_bytes=1000)
    message = await photo_message(client)
    assert message["attachments"][0]["status"] == "too_large"
    assert bot_api.downloads == 0
    await wait_for(lambda: _sent(bot_api, 1))
    assert "(batas 1 KB)" in bot_api.sent[0]["text"][0]


async def test_a_failing_provider_is_retried_and_a_pending_fetch_survives_a_restart(
    make_client: MakeClient, bot_api: FakeBotApi
) -> None:
    bot_api.get_file_errors = [(502, "Bad Gateway")] * 50
    first = await make_client(telegram_bots=BOTS, telegram_api_url=bot_api.url,
                              delivery_attempts=50)
    first.server.app[ENGINE].fetcher._backoff_s = 0.01
    resp = await first.post("/webhooks/telegram", data=PHOTO_UPDATE.body,
                            headers=dict(PHOTO_UPDATE.headers))
    assert resp.status == 200
    await wait_for(lambda: _tried(bot_api, 3))
    url = first.server.app[ENGINE].settings.database_url
    await first.close()  # mid-retries: the fetch stays pending

    bot_api.get_file_errors = []
    second = await make_client(telegram_bots=BOTS, telegram_api_url=bot_api.url,
                               database_url=url)
    message = await photo_message(second)
    assert message["attachments"][0]["status"] == "stored"


async def _sent(fake: FakeBotApi, count: int) -> bool:
    return len(fake.sent) >= count


async def _tried(fake: FakeBotApi, failures: int) -> bool:
    return len(fake.get_file_errors) <= 50 - failures


async def upload(client: TestClient[Any, Any], content: bytes, content_type: str) -> str:
    resp = await client.post("/api/v1/attachments", data=content,
                             headers={**AGENT_AUTH, "Content-Type": content_type})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["size"] == len(content)
    blob_id: str = body["blob_id"]
    return blob_id


async def test_an_agent_sends_the_after_photo_and_a_report_through_telegram(
    make_client: MakeClient,
) -> None:
    received: list[tuple[str, bytes]] = []

    async def send_file(request: web.Request) -> web.Response:
        received.append((request.path.rsplit("/", 1)[1], await request.read()))
        return web.json_response(TELEGRAM.provider_reply(200))

    app = web.Application()
    app.router.add_post(f"/bot{BOT_TOKEN}/sendPhoto", send_file)
    app.router.add_post(f"/bot{BOT_TOKEN}/sendDocument", send_file)
    files_api = TestServer(app, host="127.0.0.1")
    await files_api.start_server()
    try:
        client = await make_client(telegram_bots=BOTS,
                                   telegram_api_url=str(files_api.make_url("")).rstrip("/"))
        resp = await client.post("/webhooks/telegram", data=TELEGRAM.fixtures[0][0].body,
                                 headers=dict(TELEGRAM.fixtures[0][0].headers))
        assert resp.status == 200
        [conv] = await conversations(client)
        after = await upload(client, b"\x89PNG after the repair", "image/png")
        report = await upload(client, b"%PDF-1.7 berita acara", "application/pdf")
        resp = await client.post(
            f"/api/v1/conversations/{conv['id']}/messages", headers=AGENT_AUTH,
            json={"text": "Sampah sudah diangkut, ini fotonya.", "attachments": [
                {"blob_id": after, "content_type": "image/png", "filename": "sesudah.png"},
                {"blob_id": report, "content_type": "application/pdf",
                 "filename": "berita-acara.pdf"}]})
        assert resp.status == 202, await resp.text()
        await wait_for(lambda: _count(received, 2))
        (photo_method, photo), (doc_method, document) = received
        assert photo_method == "sendPhoto" and doc_method == "sendDocument"
        assert b"after the repair" in photo and b"Sampah sudah diangkut" in photo
        assert b"berita acara" in document and b"berita-acara.pdf" in document
        assert b"Sampah sudah diangkut" not in document  # the caption goes with the first
    finally:
        await files_api.close()


async def test_uploads_and_replies_with_files_are_checked(
    make_client: MakeClient, bot_api: FakeBotApi
) -> None:
    client = await make_client(telegram_bots=BOTS, telegram_api_url=bot_api.url,
                               max_attachment_bytes=100)
    resp = await client.post("/api/v1/attachments", data=b"x" * 101,
                             headers={**AGENT_AUTH, "Content-Type": "image/png"})
    assert resp.status == 413
    resp = await client.post("/api/v1/attachments", data=b"abc",
                             headers={**AGENT_AUTH, "Content-Type": "text/html; x=<script>"})
    assert resp.status == 201  # the media type's parameters are not kept
    resp = await client.post("/api/v1/attachments", data=b"abc",
                             headers={**AGENT_AUTH, "Content-Type": "not a type"})
    assert resp.status == 415
    resp = await client.post("/api/v1/attachments", data=b"",
                             headers={**AGENT_AUTH, "Content-Type": "image/png"})
    assert resp.status == 400
    resp = await client.post("/api/v1/attachments", data=b"abc",
                             headers={"Content-Type": "image/png"})
    assert resp.status == 401

    await client.post("/webhooks/telegram", data=TELEGRAM.fixtures[0][0].body,
                      headers=dict(TELEGRAM.fixtures[0][0].headers))
    [conv] = await conversations(client)
    path = f"/api/v1/conversations/{conv['id']}/messages"
    unknown = {"blob_id": "0" * 64, "content_type": "image/png"}
    resp = await client.post(path, json={"attachments": [unknown]}, headers=AGENT_AUTH)
    assert resp.status == 422
    assert "upload it" in (await resp.json())["error"]
    resp = await client.post(path, json={"template": {"name": "laporan_selesai"}},
                             headers=AGENT_AUTH)
    assert resp.status == 422
    assert "does not send templates" in (await resp.json())["error"]
    resp = await client.post(path, json={"template": {"name": "x"}, "text": "y"},
                             headers=AGENT_AUTH)
    assert resp.status == 422
    resp = await client.post(path, json={}, headers=AGENT_AUTH)
    assert resp.status == 422


async def _count(items: list[Any], count: int) -> bool:
    return len(items) >= count


async def test_an_upload_arriving_in_many_chunks_is_kept_whole(make_client: MakeClient) -> None:
    client = await make_client(max_attachment_bytes=8 * 1024 * 1024)
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB: far more than one read's worth
    resp = await client.post("/api/v1/attachments", data=io.BytesIO(body),
                             headers={**AGENT_AUTH, "Content-Type": "image/png"})
    assert resp.status == 201
    uploaded = await resp.json()
    assert uploaded["size"] == len(body)
    path = client.server.app[ENGINE].blobs.path(uploaded["blob_id"])
    assert path is not None and path.read_bytes() == body
    over = await client.post("/api/v1/attachments", data=io.BytesIO(body * 3),
                             headers={**AGENT_AUTH, "Content-Type": "image/png"})
    assert over.status == 413
