"""`/webhooks/twilio` end to end: signed SMS and WhatsApp stored and routed, receipts, replies."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from omnichannel.adapters.base import WebhookRequest
from omnichannel.adapters.twilio import EMPTY_TWIML
from omnichannel.appkeys import ENGINE
from omnichannel.store.tables import MESSAGE
from tests.adapters.kits import (
    CITIZEN_PHONE,
    TWILIO,
    TWILIO_SID,
    TWILIO_SMS,
    TWILIO_TOKEN,
    TWILIO_WA,
    media_url,
    twilio_inbound,
    twilio_request,
    twilio_status,
    twilio_whatsapp_inbound,
)
from tests.conftest import BROKER_URL
from tests.http.conftest import (
    AGENT_AUTH,
    API_AUTH,
    MakeClient,
    assert_all_published,
)
from tests.http.test_agent_api import conversation, wait_for, wait_for_delivery

PUBLIC = "https://lapor.example"
ACCOUNTS = [{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
             "numbers": [TWILIO_SMS, "whatsapp:" + TWILIO_WA]}]
SMS_SID = "SM" + "a0" * 16
WA_SID = "SM" + "b1" * 16
REPORT = "Sampah di Batu Merah seng diangkut"


async def conversations(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    result: list[dict[str, Any]] = (await resp.json())["conversations"]
    return result


async def deliver(client: TestClient[Any, Any], request: WebhookRequest) -> ClientResponse:
    """POST a webhook to the engine as Twilio would (it signed `request.url`)."""
    return await client.post("/webhooks/twilio", data=request.body,
                             headers=dict(request.headers))


class FakeTwilio:
    """Twilio's Messages API on loopback, recording every form it is sent."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.url = ""

    async def create(self, request: web.Request) -> web.Response:
        self.forms.append(dict(parse_qsl((await request.read()).decode(),
                                         keep_blank_values=True)))
        return web.json_response(TWILIO.provider_reply(201), status=201)


@pytest.fixture
async def twilio_api() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post(TWILIO.provider_path, fake.create)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_signed_sms_is_stored_once_routed_and_answered_with_empty_twiml(
    make_client: MakeClient, store: str
) -> None:
    client = await make_client(store, twilio_accounts=ACCOUNTS, public_url=PUBLIC)
    request = twilio_request(twilio_inbound(SMS_SID, REPORT))
    for _ in range(2):  # Twilio retries a webhook it thinks failed
        resp = await deliver(client, request)
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/xml"
        assert await resp.text() == EMPTY_TWIML
    [conv] = await conversations(client)
    assert (conv["channel"], conv["account"], conv["queue"]) == ("sms", TWILIO_SMS, "dlhp")
    detail = await conversation(client, conv["id"])
    assert [m["external_id"] for m in detail["messages"]] == [SMS_SID]
    assert detail["messages"][0]["text"] == REPORT
    assert detail["contact_phone"] == CITIZEN_PHONE


async def test_forged_or_tampered_webhooks_are_refused_with_nothing_stored(
    make_client: MakeClient,
) -> None:
    client = await make_client(twilio_accounts=ACCOUNTS, public_url=PUBLIC)
    request = twilio_request(twilio_inbound(SMS_SID, REPORT))
    tampered = replace(request, body=request.body.replace(b"Batu+Merah", b"Batu+Gajah"))
    assert tampered.body != request.body
    for forged in [*TWILIO.forgeries(request), tampered]:
        resp = await deliver(client, forged)
        assert resp.status == 403
        assert "X-Twilio-Signature" in (await resp.json())["error"]
    assert await conversations(client) == []


async def test_channel_without_accounts_is_disabled(make_client: MakeClient) -> None:
    client = await make_client(public_url=PUBLIC)
    resp = await deliver(client, twilio_request(twilio_inbound(SMS_SID, REPORT)))
    assert resp.status == 503


async def test_behind_a_proxy_the_public_url_is_what_is_verified(make_client: MakeClient) -> None:
    # Twilio signed the public https URL; this server sees http://127.0.0.1:<port>/...
    request = twilio_request(twilio_inbound(SMS_SID, REPORT), url=PUBLIC + "/webhooks/twilio")
    without = await make_client(twilio_accounts=ACCOUNTS)
    assert (await deliver(without, request)).status == 403
    behind = await make_client(twilio_accounts=ACCOUNTS, public_url=PUBLIC)
    resp = await deliver(behind, request)
    assert resp.status == 200, await resp.text()
    assert len(await conversations(behind)) == 1


async def test_one_citizen_on_sms_whatsapp_and_a_form_is_one_contact(
    make_client: MakeClient,
) -> None:
    client = await make_client(twilio_accounts=ACCOUNTS, public_url=PUBLIC)
    assert (await deliver(client, twilio_request(twilio_inbound(SMS_SID, REPORT)))).status == 200
    whatsapp = twilio_request(twilio_whatsapp_inbound(WA_SID, "Air PDAM mati tiga hari"))
    assert (await deliver(client, whatsapp)).status == 200
    # The same citizen writes the number nationally on the admins' offline form.
    resp = await client.post("/webhooks/api", headers=API_AUTH, json={
        "external_id": "form-9", "sender_id": "citizen-9", "sender_phone": "0812 3456 7890",
        "text": "Jalan di Kudamati berlubang besar"})
    assert resp.status == 201, await resp.text()
    convs = await conversations(client)
    assert {(c["channel"], c["account"]) for c in convs} == {
        ("sms", TWILIO_SMS), ("whatsapp", TWILIO_WA), ("api", "default")}
    assert len({c["contact_id"] for c in convs}) == 1  # one contact, three channel identities
    for conv in convs:
        assert (await conversation(client, conv["id"]))["contact_phone"] == CITIZEN_PHONE
    [wa] = [c for c in convs if c["channel"] == "whatsapp"]
    [message] = (await conversation(client, wa["id"]))["messages"]
    assert message["sender_id"] == "whatsapp:" + CITIZEN_PHONE
    assert message["sender_name"] == "Rina Latuconsina"  # WhatsApp's ProfileName


async def test_status_callbacks_advance_the_reply_and_show_failures(
    make_client: MakeClient, twilio_api: FakeTwilio
) -> None:
    client = await make_client(twilio_accounts=ACCOUNTS, twilio_api_url=twilio_api.url,
                               public_url=PUBLIC)
    await deliver(client, twilio_request(twilio_inbound(SMS_SID, REPORT)))
    [conv] = await conversations(client)

    async def reply(text: str) -> dict[str, Any]:
        resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                                 json={"text": text}, headers=AGENT_AUTH)
        assert resp.status == 202
        await wait_for_delivery(client, conv["id"], "sent")
        last: dict[str, Any] = (await conversation(client, conv["id"]))["messages"][-1]
        return last

    async def receipt(sid: str, status: str, **kw: Any) -> None:
        resp = await deliver(client, twilio_request(twilio_status(sid, status, **kw)))
        assert resp.status == 200 and await resp.text() == EMPTY_TWIML

    async def status_of(message_id: int) -> dict[str, Any]:
        for m in (await conversation(client, conv["id"]))["messages"]:
            if m["id"] == message_id:
                return dict(m)
        raise AssertionError(message_id)

    first = await reply("Laporan diterima, petugas DLHP menuju lokasi.")
    sid = first["external_id"]
    assert sid.startswith("SM")
    assert twilio_api.forms[-1]["StatusCallback"] == PUBLIC + "/webhooks/twilio"
    await receipt(sid, "delivered")
    assert (await status_of(first["id"]))["delivery_status"] == "delivered"
    await receipt(sid, "sent")  # late and out of order: never moves the message back
    assert (await status_of(first["id"]))["delivery_status"] == "delivered"

    second = await reply("Mohon kirim foto lokasinya.")
    await receipt(second["external_id"], "undelivered", error_code="30003")
    failed = await status_of(second["id"])
    assert failed["delivery_status"] == "failed"
    assert failed["delivery_error"].startswith("30003: unreachable destination handset")
    assert (await status_of(first["id"]))["delivery_status"] == "delivered"


@pytest.mark.parametrize(("channel", "mode"), [("sms", "embedded"), ("whatsapp", "embedded"),
                                               ("sms", "broker")])
async def test_agent_reply_reaches_twilio_as_the_documented_form(
    make_client: MakeClient, twilio_api: FakeTwilio, channel: str, mode: str,
    request: pytest.FixtureRequest,
) -> None:
    settings: dict[str, Any] = {"twilio_accounts": ACCOUNTS, "twilio_api_url": twilio_api.url,
                                "public_url": PUBLIC, "auto_ack": True}
    if mode == "broker":
        prefix = request.getfixturevalue("broker_prefix")
        client = await make_client("postgresql", broker_url=BROKER_URL, broker_prefix=prefix,
                                   **settings)
    else:
        client = await make_client(**settings)
    inbound = (twilio_inbound(SMS_SID, REPORT) if channel == "sms"
               else twilio_whatsapp_inbound(WA_SID, REPORT))
    resp = await deliver(client, twilio_request(inbound))
    assert resp.status == 200
    [conv] = await conversations(client)
    if mode == "broker":
        detail = await conversation(client, conv["id"])
        await assert_all_published(prefix, {detail["messages"][0]["id"]}, queue="dlhp")
    text = "Laporan diterima, petugas DLHP menuju lokasi."
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": text}, headers=AGENT_AUTH)
    assert resp.status == 202
    await wait_for_delivery(client, conv["id"], "sent")

    async def both_sent() -> bool:
        return len(twilio_api.forms) == 2

    await wait_for(both_sent)
    # Both were queued at once and may leave in either order.
    [acknowledgement] = [f for f in twilio_api.forms if f["Body"] != text]
    [reply] = [f for f in twilio_api.forms if f["Body"] == text]
    # The first message was acknowledged with its tracking number, from the same number...
    assert conv["tracking_number"] in acknowledgement["Body"]
    # ...and the agent's reply followed as the Messages API form Twilio documents.
    prefix_ = "whatsapp:" if channel == "whatsapp" else ""
    ours = TWILIO_WA if channel == "whatsapp" else TWILIO_SMS
    assert reply == {"To": prefix_ + CITIZEN_PHONE, "From": prefix_ + ours, "Body": text,
                     "StatusCallback": PUBLIC + "/webhooks/twilio"}
    assert acknowledgement["From"] == reply["From"] and acknowledgement["To"] == reply["To"]


async def test_past_the_whatsapp_window_only_a_template_leaves_and_files_never(
    make_client: MakeClient, twilio_api: FakeTwilio
) -> None:
    client = await make_client(twilio_accounts=ACCOUNTS, twilio_api_url=twilio_api.url,
                               public_url=PUBLIC)
    await deliver(client, twilio_request(twilio_whatsapp_inbound(WA_SID, REPORT)))
    await deliver(client, twilio_request(twilio_inbound(SMS_SID, REPORT)))
    convs = {c["channel"]: c for c in await conversations(client)}
    wa, sms = convs["whatsapp"], convs["sms"]

    async def reply(conv: dict[str, Any], body: dict[str, Any]) -> ClientResponse:
        return await client.post(f"/api/v1/conversations/{conv['id']}/messages", json=body,
                                 headers=AGENT_AUTH)

    # The citizen last wrote 25 hours ago: WhatsApp's customer-service window has closed.
    engine = client.server.app[ENGINE]
    async with engine.db.write(engine.db.api) as conn:
        await conn.execute(sa.update(MESSAGE).where(MESSAGE.c.conversation_id == wa["id"])
                           .values(sent_at=datetime.now(UTC) - timedelta(hours=25)))
    resp = await reply(wa, {"text": "Apakah masih rusak?"})
    assert resp.status == 422 and (await resp.json())["reason"] == "reply_window_closed"
    template = {"name": "HX" + "d" * 32, "parameters": [wa["tracking_number"], "DLHP"]}
    assert (await reply(wa, {"template": template})).status == 202
    await wait_for_delivery(client, wa["id"], "sent")
    [sent] = twilio_api.forms
    assert (sent["From"], sent["To"], sent["ContentSid"]) == (
        "whatsapp:" + TWILIO_WA, "whatsapp:" + CITIZEN_PHONE, "HX" + "d" * 32)
    assert json.loads(sent["ContentVariables"]) == {"1": wa["tracking_number"], "2": "DLHP"}
    assert "Body" not in sent

    # SMS has no templates, and neither channel sends agents' files through Twilio yet.
    resp = await reply(sms, {"template": template})
    assert resp.status == 422 and "does not send templates" in (await resp.json())["error"]
    upload = await client.post("/api/v1/attachments", data=b"\xff\xd8jpeg",
                               headers={**AGENT_AUTH, "Content-Type": "image/jpeg"})
    assert upload.status in (200, 201), await upload.text()
    blob = {"blob_id": (await upload.json())["blob_id"], "content_type": "image/jpeg"}
    for conv in (sms, wa):
        resp = await reply(conv, {"text": "Foto perbaikan", "attachments": [blob]})
        assert resp.status == 422 and "cannot carry files" in (await resp.json())["error"]
    assert len(twilio_api.forms) == 1


PHOTO = b"\xff\xd8\xff\xe0" + b"lubang" * 400


async def test_a_citizens_photo_is_fetched_from_twilio_and_served_to_agents(
    make_client: MakeClient,
) -> None:
    """Twilio's media URL wants the account's basic auth and redirects to a CDN on another host."""
    api_auth: list[str | None] = []
    cdn_auth: list[str | None] = []
    cdn_url = ""

    async def media(request: web.Request) -> web.Response:
        api_auth.append(request.headers.get("Authorization"))
        raise web.HTTPTemporaryRedirect(cdn_url)

    async def cdn(request: web.Request) -> web.Response:
        cdn_auth.append(request.headers.get("Authorization"))
        return web.Response(body=PHOTO, content_type="image/jpeg")

    api, store = web.Application(), web.Application()
    api.router.add_get(f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/{{m}}/Media/{{me}}", media)
    store.router.add_get("/cdn/photo", cdn)
    api_server, cdn_server = TestServer(api, host="127.0.0.1"), TestServer(store, host="127.0.0.2")
    await api_server.start_server()
    await cdn_server.start_server()
    try:
        cdn_url = str(cdn_server.make_url("/cdn/photo"))
        api_url = str(api_server.make_url("")).rstrip("/")
        client = await make_client(twilio_accounts=ACCOUNTS, twilio_api_url=api_url,
                                   public_url=PUBLIC)
        mms = "MM" + "c2" * 16
        url = media_url(mms, "ME" + "e3" * 16, api_url)
        inbound = twilio_inbound(mms, "Lubang di jalan", extra=[
            ("MediaContentType0", "image/jpeg"), ("MediaUrl0", url)])
        inbound = [(k, "1" if k == "NumMedia" else v) for k, v in inbound]
        assert (await deliver(client, twilio_request(inbound))).status == 200
        [conv] = await conversations(client)

        async def settled() -> bool:
            first = (await conversation(client, conv["id"]))["messages"][0]
            return bool(first["attachments"][0].get("status"))

        await wait_for(settled)
        message = (await conversation(client, conv["id"]))["messages"][0]
        assert message["attachments"][0]["status"] == "stored"
        resp = await client.get(f"/api/v1/messages/{message['id']}/attachments/0",
                                headers=AGENT_AUTH)
        assert resp.status == 200 and await resp.read() == PHOTO
        secret = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        assert api_auth == [f"Basic {secret}"]
        assert cdn_auth == [None]  # the account's credentials stayed with Twilio
    finally:
        await api_server.close()
        await cdn_server.close()
