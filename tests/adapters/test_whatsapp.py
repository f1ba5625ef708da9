"""WhatsApp Cloud API adapter: handshake, notifications, receipts, sends and media downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from omnichannel.adapters.base import (
    ChannelDisabled,
    FetchError,
    PayloadError,
    SignatureError,
    TooLarge,
    WebhookRequest,
)
from omnichannel.adapters.whatsapp import WhatsAppAdapter
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import DeliveryStatus, Template
from omnichannel.settings import WhatsAppAccount
from tests.adapters.graph import FakeGraph, fake_graph
from tests.adapters.kits import (
    GRAPH_ERRORS,
    WA_ACCESS_TOKEN,
    WA_ACCOUNT,
    WA_APP_SECRET,
    WA_CITIZEN,
    WA_PHONE_NUMBER_ID,
    WA_SIGNATURE,
    WA_VERIFY_TOKEN,
    WA_VERSION,
    wamid,
    whatsapp_adapter,
    whatsapp_body,
    whatsapp_message,
    whatsapp_request,
    whatsapp_status,
    whatsapp_value,
)

SECOND_NUMBER = "109876543210987"
OUR_WAMID = "wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABEYEk9VVDAwMDAxAA=="


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with fake_graph() as fake:
        yield fake


@pytest.fixture
def adapter(session: aiohttp.ClientSession, graph: FakeGraph) -> WhatsAppAdapter:
    return whatsapp_adapter(graph.url, session)


def handshake(**query: str) -> WebhookRequest:
    return WebhookRequest(method="GET", url="https://lapor.example/webhooks/whatsapp",
                          headers={}, body=b"", query=query)


def reply(**fields: Any) -> Outgoing:
    values: dict[str, Any] = {
        "message_id": 7, "conversation_id": 3, "tracking_number": "AMB-2026-000003",
        "channel": "whatsapp", "account": WA_ACCOUNT, "recipient": WA_CITIZEN,
        "text": "Laporan diterima, petugas DLHP menuju lokasi.", **fields}
    return Outgoing(**values)


# --- The GET handshake -------------------------------------------------------------------


def test_handshake_with_the_verify_token_answers_the_challenge(
    adapter: WhatsAppAdapter,
) -> None:
    request = handshake(**{"hub.mode": "subscribe", "hub.verify_token": WA_VERIFY_TOKEN,
                           "hub.challenge": "1158201444"})
    adapter.verify(request)
    assert adapter.parse(request) == [] and adapter.statuses(request) == []
    answer = adapter.acknowledge(request, [])
    assert answer.status == 200
    assert answer.content_type == "text/plain"
    assert answer.text == "1158201444"


@pytest.mark.parametrize(("query", "says"), [
    ({"hub.mode": "subscribe", "hub.verify_token": "not-our-verify-token-0000"}, "verify_token"),
    ({"hub.mode": "subscribe"}, "verify_token"),
    ({"hub.mode": "unsubscribe", "hub.verify_token": WA_VERIFY_TOKEN}, "hub.mode"),
    ({"hub.verify_token": WA_VERIFY_TOKEN}, "hub.mode"),
])
def test_handshake_without_the_right_token_or_mode_is_refused(
    adapter: WhatsAppAdapter, query: dict[str, str], says: str
) -> None:
    with pytest.raises(SignatureError, match=says) as refused:
        adapter.verify(handshake(**query, **{"hub.challenge": "1158201444"}))
    assert refused.value.status == 403


def test_handshake_is_refused_when_no_verify_token_is_configured(
    session: aiohttp.ClientSession,
) -> None:
    adapter = WhatsAppAdapter(
        [WhatsAppAccount(account=WA_ACCOUNT, phone_number_id=WA_PHONE_NUMBER_ID,
                         access_token=SecretStr(WA_ACCESS_TOKEN))],
        app_secret=SecretStr(WA_APP_SECRET), verify_token=None, session=session)
    with pytest.raises(SignatureError, match="no whatsapp_verify_token"):
        adapter.verify(handshake(**{"hub.mode": "subscribe", "hub.verify_token": "",
                                    "hub.challenge": "1"}))


@pytest.mark.parametrize("missing", ["app_secret", "accounts"])
def test_channel_without_app_secret_or_numbers_is_disabled(
    session: aiohttp.ClientSession, missing: str
) -> None:
    accounts = [] if missing == "accounts" else [WhatsAppAccount(
        account=WA_ACCOUNT, phone_number_id=WA_PHONE_NUMBER_ID,
        access_token=SecretStr(WA_ACCESS_TOKEN))]
    adapter = WhatsAppAdapter(
        accounts, app_secret=None if missing == "app_secret" else SecretStr(WA_APP_SECRET),
        verify_token=SecretStr(WA_VERIFY_TOKEN), session=session)
    body = whatsapp_body(whatsapp_value([whatsapp_message(wamid(1), "text", {"body": "x"})]))
    for request in (whatsapp_request(body),
                    handshake(**{"hub.mode": "subscribe", "hub.verify_token": WA_VERIFY_TOKEN})):
        with pytest.raises(ChannelDisabled):
            adapter.verify(request)


# --- Signatures --------------------------------------------------------------------------


def test_signature_is_checked_on_the_raw_bytes(adapter: WhatsAppAdapter) -> None:
    body = whatsapp_body(whatsapp_value([whatsapp_message(wamid(1), "text", {"body": "x"})]))
    signed = whatsapp_request(body)
    adapter.verify(signed)
    # The same JSON, serialised differently: a parse-then-reserialise check would pass it.
    reformatted = replace(signed, body=orjson.dumps(body, option=orjson.OPT_INDENT_2))
    with pytest.raises(SignatureError, match="wrong"):
        adapter.verify(reformatted)
    # Header names are case-insensitive in HTTP.
    adapter.verify(replace(signed, headers={WA_SIGNATURE.lower(): signed.headers[WA_SIGNATURE]}))


# --- Notifications -----------------------------------------------------------------------


def test_one_notification_carries_messages_and_statuses_of_several_numbers(
    session: aiohttp.ClientSession,
) -> None:
    adapter = WhatsAppAdapter(
        [WhatsAppAccount(account=WA_ACCOUNT, phone_number_id=WA_PHONE_NUMBER_ID,
                         access_token=SecretStr(WA_ACCESS_TOKEN)),
         WhatsAppAccount(account="lapor_maluku", phone_number_id=SECOND_NUMBER,
                         access_token=SecretStr("EAAGsecondNumberToken0123456789"))],
        app_secret=SecretStr(WA_APP_SECRET), verify_token=None, session=session)
    other_citizen = "6285298765432"
    first = whatsapp_value(
        [whatsapp_message(wamid(1), "text", {"body": "Lampu jalan mati"}),
         whatsapp_message(wamid(2), "image", {"mime_type": "image/jpeg", "id": "111"}),
         whatsapp_message(wamid(3), "text", {"body": "Air PDAM mati"}, sender=other_citizen)],
        statuses=[whatsapp_status(OUR_WAMID, "delivered")],
        contacts=[{"profile": {"name": "Rina Latuconsina"}, "wa_id": WA_CITIZEN},
                  {"profile": {"name": "Yopi Pattikawa"}, "wa_id": other_citizen}])
    second = whatsapp_value([whatsapp_message(wamid(4), "text", {"body": "Jembatan rusak"})],
                            phone_number_id=SECOND_NUMBER)
    body = whatsapp_body(first)
    body["entry"].append({"id": "102290129340399", "changes": [
        {"value": second, "field": "messages"},
        # Other fields of the app's subscription carry no message; they are not refused.
        {"value": {"event": "APPROVED", "message_template_name": "laporan_selesai"},
         "field": "message_template_status_update"}]})
    request = whatsapp_request(body)
    adapter.verify(request)
    messages = adapter.parse(request)
    assert [(m.account, m.external_id, m.sender.id, m.sender.name) for m in messages] == [
        (WA_ACCOUNT, wamid(1), WA_CITIZEN, "Rina Latuconsina"),
        (WA_ACCOUNT, wamid(2), WA_CITIZEN, "Rina Latuconsina"),
        (WA_ACCOUNT, wamid(3), other_citizen, "Yopi Pattikawa"),
        ("lapor_maluku", wamid(4), WA_CITIZEN, "Rina Latuconsina"),
    ]
    # Each message keeps its own payload and its number's metadata, not the whole body.
    assert messages[2].raw["message"]["text"] == {"body": "Air PDAM mati"}
    assert messages[2].raw["contact"]["wa_id"] == other_citizen
    assert messages[3].raw["metadata"]["phone_number_id"] == SECOND_NUMBER
    assert "entry" not in messages[0].raw
    [receipt] = adapter.statuses(request)
    assert (receipt.account, receipt.external_id, receipt.status) == (
        WA_ACCOUNT, OUR_WAMID, DeliveryStatus.DELIVERED)


def test_statuses_out_of_order_and_failed_with_the_error_code(adapter: WhatsAppAdapter) -> None:
    failed_id = "wamid.HBgNNjI4MTIzNDU2Nzg5MBUCABEYEk9VVDAwMDAyAA=="
    request = whatsapp_request(whatsapp_body(whatsapp_value(statuses=[
        whatsapp_status(OUR_WAMID, "read", timestamp="1795827790"),
        whatsapp_status(OUR_WAMID, "sent", timestamp="1795827730"),
        whatsapp_status(OUR_WAMID, "delivered", timestamp="1795827760"),
        whatsapp_status(failed_id, "failed", timestamp="1795827800", errors=[{
            "code": 131047, "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {"details": "Message failed to send because more than 24 hours "
                                      "have passed since the customer last replied to this "
                                      "number."},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/"
                    "error-codes/"}]),
        whatsapp_status(OUR_WAMID, "deleted"),
    ])))
    adapter.verify(request)
    assert adapter.parse(request) == []
    receipts = adapter.statuses(request)
    # Every receipt as it came: the store, not the parser, keeps states from moving back.
    assert [(r.external_id, r.status, r.at) for r in receipts] == [
        (OUR_WAMID, DeliveryStatus.READ, datetime.fromtimestamp(1795827790, UTC)),
        (OUR_WAMID, DeliveryStatus.SENT, datetime.fromtimestamp(1795827730, UTC)),
        (OUR_WAMID, DeliveryStatus.DELIVERED, datetime.fromtimestamp(1795827760, UTC)),
        (failed_id, DeliveryStatus.FAILED, datetime.fromtimestamp(1795827800, UTC)),
    ]
    assert all(r.channel == "whatsapp" and r.account == WA_ACCOUNT for r in receipts)
    assert [r.error for r in receipts[:3]] == [None, None, None]
    assert receipts[3].error is not None
    assert receipts[3].error.startswith("131047: Re-engagement message (Message failed")


def test_unknown_phone_number_is_kept_under_its_id(adapter: WhatsAppAdapter) -> None:
    request = whatsapp_request(whatsapp_body(whatsapp_value(
        [whatsapp_message(wamid(1), "text", {"body": "Got rusak"})],
        statuses=[whatsapp_status(OUR_WAMID, "sent")], phone_number_id="999000111222333")))
    with capture_logs() as logs:
        [message] = adapter.parse(request)
        [receipt] = adapter.statuses(request)
    assert message.account == receipt.account == "999000111222333"
    assert message.text == "Got rusak"
    assert [e["phone_number_id"] for e in logs
            if e["event"] == "whatsapp_unknown_phone_number"] == ["999000111222333"]


@pytest.mark.parametrize(("kind", "content", "says"), [
    ("order", {"catalog_id": "1", "product_items": [{"product_retailer_id": "x"}]}, "order"),
    ("unsupported", {"type": "poll_creation"}, "poll_creation"),
    ("unsupported", None, "unsupported"),
    ("interactive", {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}, "nfm_reply"),
    # A known type whose content is not what Meta documents: kept, not refused.
    ("image", {"mime_type": "image/jpeg"}, "image"),
    ("text", "not an object", "text"),
])
def test_unknown_or_unreadable_messages_are_stored_with_their_payload(
    adapter: WhatsAppAdapter, kind: str, content: Any, says: str
) -> None:
    message = whatsapp_message(wamid(1), kind, content)
    if kind == "unsupported":
        message["errors"] = [{"code": 131051, "title": "Message type unknown",
                              "message": "Message type unknown",
                              "error_data": {"details": "Message type is currently not "
                                                        "supported."}}]
    [stored] = adapter.parse(whatsapp_request(whatsapp_body(whatsapp_value([message]))))
    assert stored.text.startswith("[") and stored.text.endswith("]")
    assert says in stored.text
    assert stored.raw["message"] == message
    assert stored.external_id == wamid(1) and stored.sender.name == "Rina Latuconsina"


@pytest.mark.parametrize(("kind", "content", "text", "content_type"), [
    ("reaction", {"message_id": OUR_WAMID, "emoji": "\U0001f44d"}, "\U0001f44d", None),
    ("reaction", {"message_id": OUR_WAMID}, "[reaksi dihapus]", None),
    ("sticker", {"mime_type": "image/webp", "sha256": "x", "id": "222", "animated": False}, "",
     "image/webp"),
    ("system", {"body": "User Rina changed from 6281234567890 to 6281234567891",
                "wa_id": "6281234567891", "type": "user_changed_number"},
     "[User Rina changed from 6281234567890 to 6281234567891]", None),
    ("contacts", [{"name": {"first_name": "Budi", "last_name": "Santoso"},
                   "phones": [{"wa_id": "6281298765432"}, {"phone": "0911 352 000"}]},
                  {"name": {"formatted_name": "Kantor Lurah"}}],
     "Kontak: Budi Santoso +6281298765432, 0911 352 000\nKontak: Kantor Lurah", None),
])
def test_other_documented_types(
    adapter: WhatsAppAdapter, kind: str, content: Any, text: str, content_type: str | None
) -> None:
    [stored] = adapter.parse(whatsapp_request(whatsapp_body(whatsapp_value(
        [whatsapp_message(wamid(1), kind, content)]))))
    assert stored.text == text
    assert [a.content_type for a in stored.attachments] == (
        [content_type] if content_type else [])


def test_media_attachments_point_at_meta_and_keep_the_document_name(
    adapter: WhatsAppAdapter,
) -> None:
    [stored] = adapter.parse(whatsapp_request(whatsapp_body(whatsapp_value([whatsapp_message(
        wamid(1), "document", {"filename": "laporan.pdf", "mime_type": "application/pdf",
                               "sha256": "x", "id": "1003383421387256"})]))))
    [attachment] = stored.attachments
    assert attachment.url == "whatsapp-media:1003383421387256"
    assert (attachment.content_type, attachment.filename) == ("application/pdf", "laporan.pdf")
    assert stored.sent_at is not None and stored.sent_at.tzinfo is UTC


def test_location_keeps_its_name_and_address(adapter: WhatsAppAdapter) -> None:
    [stored] = adapter.parse(whatsapp_request(whatsapp_body(whatsapp_value([whatsapp_message(
        wamid(1), "location", {"latitude": -3.6954, "longitude": 128.1814,
                               "name": "Pasar Mardika", "address": "Jl. Pantai Mardika"})]))))
    assert stored.location is not None
    assert (stored.location.latitude, stored.location.longitude, stored.location.name,
            stored.location.address) == (-3.6954, 128.1814, "Pasar Mardika",
                                         "Jl. Pantai Mardika")


def test_citizen_known_only_by_business_scoped_id(adapter: WhatsAppAdapter) -> None:
    """A citizen with a username may come without `from`: their BSUID identifies them."""
    message = whatsapp_message(wamid(1), "text", {"body": "Sampah menumpuk"})
    del message["from"]
    message["from_user_id"] = "ID.1502576394655843"
    [stored] = adapter.parse(whatsapp_request(whatsapp_body(whatsapp_value([message], contacts=[
        {"profile": {"name": "Rina", "username": "@rina"}, "user_id": "ID.1502576394655843"}]))))
    assert (stored.sender.id, stored.sender.name, stored.sender.phone) == (
        "ID.1502576394655843", "Rina", None)


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "empty body"),
    (orjson.dumps({"object": "page", "entry": []}), 422, "object"),
    (orjson.dumps({"object": "whatsapp_business_account", "entry": {}}), 422, "entry"),
    (orjson.dumps(whatsapp_body({"messaging_product": "whatsapp", "messages": []})), 422,
     "metadata"),
    (orjson.dumps(whatsapp_body(whatsapp_value([{"from": WA_CITIZEN, "type": "text",
                                                 "timestamp": "1795827723"}]))), 422, "id"),
    (orjson.dumps(whatsapp_body(whatsapp_value([{"id": wamid(1), "type": "text",
                                                 "timestamp": "1795827723"}]))), 422, "from"),
    (orjson.dumps(whatsapp_body(whatsapp_value([whatsapp_message(
        wamid(1), "text", {"body": "x"}, timestamp="yesterday")]))), 422, "timestamp"),
])
def test_malformed_or_misshapen_notifications_are_refused_saying_why(
    adapter: WhatsAppAdapter, body: bytes, status: int, says: str
) -> None:
    request = whatsapp_request(body)
    adapter.verify(request)
    with pytest.raises(PayloadError) as refused:
        adapter.parse(request)
    assert refused.value.status == status
    assert says in str(refused.value) + str(refused.value.detail)


def test_serves_only_its_own_numbers(adapter: WhatsAppAdapter) -> None:
    assert adapter.serves("whatsapp", WA_ACCOUNT)
    assert not adapter.serves("whatsapp", "999000111222333")
    assert not adapter.serves("telegram", WA_ACCOUNT)
    assert adapter.capabilities_of("whatsapp").reply_window is not None
    assert adapter.capabilities.templates and adapter.capabilities.max_text_length == 4096


# --- Sending -----------------------------------------------------------------------------


async def test_text_reply_is_the_documented_json(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    external_id = await adapter.send(reply())
    [sent] = graph.sent()
    assert sent.path == f"/{WA_VERSION}/{WA_PHONE_NUMBER_ID}/messages"
    assert sent.headers["Authorization"] == f"Bearer {WA_ACCESS_TOKEN}"
    assert sent.headers["Content-Type"] == "application/json"
    assert orjson.loads(sent.body) == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_CITIZEN,
        "type": "text",
        "text": {"preview_url": False, "body": "Laporan diterima, petugas DLHP menuju lokasi."}}
    assert external_id is not None and external_id.startswith("wamid.")


async def test_template_reply_is_the_documented_json(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    await adapter.send(reply(template=Template(
        name="laporan_diteruskan", language="id", parameters=("AMB-2026-000003", "DLHP"))))
    await adapter.send(reply(template=Template(name="laporan_selesai", language="en_US")))
    with_parameters, without = (orjson.loads(r.body) for r in graph.sent())
    assert with_parameters == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_CITIZEN,
        "type": "template",
        "template": {"name": "laporan_diteruskan", "language": {"code": "id"},
                     "components": [{"type": "body", "parameters": [
                         {"type": "text", "text": "AMB-2026-000003"},
                         {"type": "text", "text": "DLHP"}]}]}}
    assert without["template"] == {"name": "laporan_selesai", "language": {"code": "en_US"}}


async def test_citizen_without_phone_is_addressed_by_business_scoped_id(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    await adapter.send(reply(recipient="ID.1502576394655843"))
    body = orjson.loads(graph.sent()[0].body)
    assert body["recipient"] == "ID.1502576394655843" and "to" not in body


def _graph_error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": f"(#{code}) {message}", "type": "OAuthException",
                      "code": code, "error_data": {"messaging_product": "whatsapp",
                                                   "details": message},
                      "fbtrace_id": "AbC1dEf2GhI9"}}


@pytest.mark.parametrize(("status", "body", "retryable", "says"), [
    (400, {"error": GRAPH_ERRORS[400]}, False, "131047"),
    (400, _graph_error(130429, "Rate limit hit"), True, "130429"),
    (400, _graph_error(131056, "(Business Account, Consumer Account) pair rate limit hit"),
     True, "131056"),
    (400, _graph_error(131048, "Spam rate limit hit"), True, "131048"),
    (400, _graph_error(4, "Application request limit reached"), True, "(#4)"),
    (400, _graph_error(80007, "Rate limit issues"), True, "80007"),
    (400, _graph_error(100, "Invalid parameter"), False, "100"),
    (401, _graph_error(190, "Error validating access token"), False, "190"),
    (400, _graph_error(131026, "Message undeliverable"), False, "131026"),
    (500, {}, True, "HTTP 500"),
])
async def test_graph_errors_say_whether_a_retry_may_help(
    adapter: WhatsAppAdapter, graph: FakeGraph, status: int, body: dict[str, Any],
    retryable: bool, says: str,
) -> None:
    graph.send_answers = [(status, body)]
    with pytest.raises(DeliveryError) as failed:
        await adapter.send(reply())
    assert failed.value.retryable is retryable
    assert says in str(failed.value)


async def test_closed_window_says_a_template_is_needed(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    graph.send_answers = [(400, {"error": GRAPH_ERRORS[400]})]
    with pytest.raises(DeliveryError, match="24-hour window has closed") as failed:
        await adapter.send(reply())
    assert "Re-engagement message" in str(failed.value)


async def test_reply_from_a_number_not_configured_fails_for_good(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    with pytest.raises(DeliveryError, match="no WhatsApp phone number") as failed:
        await adapter.send(reply(account="999000111222333"))
    assert failed.value.retryable is False
    assert graph.requests == []


async def test_accepted_send_without_an_id_is_not_sent_again(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    graph.send_answers = [(200, {"messaging_product": "whatsapp"})]
    assert await adapter.send(reply()) is None


# --- Media -------------------------------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


async def test_fetch_asks_for_the_url_then_downloads_with_the_token(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    graph.media["1479537139650973"] = (JPEG, "image/jpeg")
    download = await adapter.fetch(WA_ACCOUNT, "whatsapp-media:1479537139650973",
                                   max_bytes=len(JPEG))
    assert download.content == JPEG and download.content_type == "image/jpeg"
    lookup, fetched = graph.requests
    assert lookup.path == f"/{WA_VERSION}/1479537139650973"
    assert fetched.path.startswith("/whatsapp_business/attachments/?mid=1479537139650973")
    for request in (lookup, fetched):
        assert request.method == "GET"
        assert request.headers["Authorization"] == f"Bearer {WA_ACCESS_TOKEN}"


async def test_fetch_refuses_a_file_announced_too_large_without_downloading(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    graph.media["1479537139650973"] = (JPEG, "image/jpeg")
    with pytest.raises(TooLarge) as refused:
        await adapter.fetch(WA_ACCOUNT, "whatsapp-media:1479537139650973",
                            max_bytes=len(JPEG) - 1)
    assert refused.value.retryable is False
    assert [r.path.split("?")[0] for r in graph.requests] == [f"/{WA_VERSION}/1479537139650973"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_fetch_stops_reading_a_file_larger_than_announced(
    adapter: WhatsAppAdapter, graph: FakeGraph, chunked: bool
) -> None:
    graph.media["1479537139650973"] = (JPEG * 50, "image/jpeg")
    graph.announced_size["1479537139650973"] = 1000
    graph.chunked = chunked
    with pytest.raises(TooLarge):
        await adapter.fetch(WA_ACCOUNT, "whatsapp-media:1479537139650973", max_bytes=2000)


async def test_fetch_of_a_chunked_download_within_the_limit(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    graph.media["1003383421387256"] = (JPEG * 3, "application/pdf")
    graph.chunked = True
    download = await adapter.fetch(WA_ACCOUNT, "whatsapp-media:1003383421387256",
                                   max_bytes=len(JPEG) * 3)
    assert download.content == JPEG * 3 and download.content_type == "application/pdf"


@pytest.mark.parametrize(("url", "account", "failures", "retryable", "says"), [
    ("whatsapp-media:404404404", WA_ACCOUNT, [], False, "does not exist"),
    ("whatsapp-media:1479537139650973", WA_ACCOUNT, [500], True, "131000"),
    ("whatsapp-media:1479537139650973", WA_ACCOUNT, [429], True, "130429"),
    ("whatsapp-media:../../me", WA_ACCOUNT, [], False, "not a WhatsApp media"),
    ("telegram-file:abc", WA_ACCOUNT, [], False, "not a WhatsApp media"),
    ("whatsapp-media:1479537139650973", "999000111222333", [], False, "no WhatsApp phone"),
])
async def test_fetch_failures_say_whether_a_retry_may_help(
    adapter: WhatsAppAdapter, graph: FakeGraph, url: str, account: str, failures: list[int],
    retryable: bool, says: str,
) -> None:
    graph.media["1479537139650973"] = (JPEG, "image/jpeg")
    graph.media_failures = failures
    with pytest.raises(FetchError, match=says) as failed:
        await adapter.fetch(account, url, max_bytes=10**6)
    assert failed.value.retryable is retryable


async def test_fetch_from_an_unreachable_graph_may_be_retried(
    session: aiohttp.ClientSession,
) -> None:
    adapter = whatsapp_adapter("http://127.0.0.1:9", session)
    with pytest.raises(FetchError) as failed:
        await adapter.fetch(WA_ACCOUNT, "whatsapp-media:1479537139650973", max_bytes=10**6)
    assert failed.value.retryable is True
