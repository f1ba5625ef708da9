"""Twilio specifics beyond the shared contract: signatures, channels, receipts, sends, media."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

from omnichannel.adapters.base import ChannelDisabled, FetchError, SignatureError, TooLarge
from omnichannel.adapters.twilio import EMPTY_TWIML, MAX_BODY, TwilioAdapter, split_text
from omnichannel.delivery import DeliveryError, Outgoing, OutgoingFile
from omnichannel.model import DeliveryStatus, Template
from tests.adapters.kits import (
    CITIZEN_PHONE,
    TWILIO,
    TWILIO_SERVICE,
    TWILIO_SID,
    TWILIO_SMS,
    TWILIO_TOKEN,
    TWILIO_URL,
    TWILIO_WA,
    media_url,
    twilio_account,
    twilio_inbound,
    twilio_request,
    twilio_status,
    twilio_whatsapp_inbound,
)

SID = "SM" + "5f60718293a4b5c6d7e8f90a1b2c3d4e"
PUBLIC = "https://lapor.example"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


def adapter(session: aiohttp.ClientSession, api_url: str = "http://127.0.0.1:9", **kw: Any
            ) -> TwilioAdapter:
    return TwilioAdapter([twilio_account()], session=session, api_url=api_url, **kw)


def form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


# -- signatures ---------------------------------------------------------------------------


def test_blank_fields_are_signed_so_they_must_be_kept(session: aiohttp.ClientSession) -> None:
    request = twilio_request(twilio_inbound(SID, "Jalan rusak"))
    signature = request.headers["X-Twilio-Signature"]
    assert ("ToCity", "") in form(request.body)  # a genuine form carries blank fields
    adapter(session).verify(request)
    # Parsed the default way (blank values dropped), the same genuine request fails validation.
    dropped = dict(parse_qsl(request.body.decode()))
    assert "ToCity" not in dropped
    assert not RequestValidator(TWILIO_TOKEN).validate(TWILIO_URL, dropped, signature)
    # And a body that really lacks them is refused.
    without = urlencode([(k, v) for k, v in form(request.body) if v]).encode()
    with pytest.raises(SignatureError):
        adapter(session).verify(replace(request, body=without))


@pytest.mark.parametrize("seen", [
    "http://lapor.example/webhooks/twilio",          # TLS ended at a proxy: scheme differs
    "http://127.0.0.1:8080/webhooks/twilio",         # the address behind the proxy
    "https://lapor.example/webhooks/twilio?x=1",     # another URL altogether
])
def test_the_signature_covers_the_exact_url_twilio_called(
    session: aiohttp.ClientSession, seen: str
) -> None:
    request = twilio_request(twilio_inbound(SID, "Jalan rusak"))
    with pytest.raises(SignatureError, match="public_url"):
        adapter(session).verify(replace(request, url=seen))
    adapter(session).verify(request)  # the URL Twilio signed: what public_url rebuilds


def test_unknown_account_and_disabled_channel(session: aiohttp.ClientSession) -> None:
    fields = [(k, "AC" + "9" * 32 if k == "AccountSid" else v)
              for k, v in twilio_inbound(SID, "Jalan rusak")]
    with pytest.raises(SignatureError, match="AccountSid"):
        adapter(session).verify(twilio_request(fields))
    with pytest.raises(ChannelDisabled):
        TwilioAdapter([], session=session).verify(twilio_request(twilio_inbound(SID, "x")))


def test_a_signed_message_to_a_number_not_listed_is_taken(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    unlisted = "+6281100000009"
    request = twilio_request(twilio_inbound(SID, "Banjir di Batu Gajah", to=unlisted))
    twilio.verify(request)  # refusing it would lose the citizen's message
    [message] = twilio.parse(request)
    assert message.account == unlisted
    # Without a configured messaging service, the number is not ours to reply from.
    assert not twilio.serves("sms", unlisted)


def test_a_messaging_service_number_is_served_once_seen(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    number = "+6281100000008"
    assert not twilio.serves("sms", number)
    request = twilio_request(twilio_inbound(SID, "Jalan rusak", to=number,
                                            extra=[("MessagingServiceSid", TWILIO_SERVICE)]))
    twilio.verify(request)
    [message] = twilio.parse(request)
    assert message.account == number
    assert twilio.serves("sms", number) and twilio.serves("whatsapp", number)
    assert not twilio.serves("telegram", number)


# -- parsing ------------------------------------------------------------------------------


def test_whatsapp_prefix_makes_the_whatsapp_channel(session: aiohttp.ClientSession) -> None:
    fields = twilio_whatsapp_inbound(SID, "Air mati")
    [message] = adapter(session).parse(twilio_request(fields))
    assert message.channel == "whatsapp"
    assert message.account == TWILIO_WA  # our sender, without the prefix
    assert message.sender.id == "whatsapp:" + CITIZEN_PHONE  # replies are addressed to it
    assert message.sender.phone == CITIZEN_PHONE
    assert message.sender.name == "Rina Latuconsina"
    assert message.raw["WaId"] == "6281234567890" and message.raw["ProfileName"]
    [sms] = adapter(session).parse(twilio_request(twilio_inbound(SID, "Air mati")))
    assert (sms.channel, sms.sender.id, sms.sender.name) == ("sms", CITIZEN_PHONE, None)


def test_media_and_location(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    [with_media] = twilio.parse(TWILIO.fixtures[3][0])
    assert [(a.content_type, a.url) for a in with_media.attachments] == [
        ("image/jpeg", media_url(with_media.external_id, "ME" + "a" * 32)),
        ("image/png", media_url(with_media.external_id, "ME" + "b" * 32)),
    ]
    [at] = twilio.parse(TWILIO.fixtures[4][0])
    assert at.location is not None
    assert (at.location.latitude, at.location.longitude) == (-3.6954, 128.1814)
    assert (at.location.name, at.location.address) == ("Pasar Mardika",
                                                       "Jl. Pantai Mardika, Ambon")


def test_status_callbacks_are_receipts_not_messages(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    delivered = twilio_request(twilio_status(SID, "delivered"))
    twilio.verify(delivered)
    assert twilio.parse(delivered) == []
    [receipt] = twilio.statuses(delivered)
    assert (receipt.channel, receipt.account, receipt.external_id, receipt.status,
            receipt.error) == ("sms", TWILIO_SMS, SID, DeliveryStatus.DELIVERED, None)
    # Twilio sends no time: the receipt is stamped on arrival.
    assert abs((datetime.now(UTC) - receipt.at).total_seconds()) < 5
    [read] = twilio.statuses(twilio_request(twilio_status(SID, "read", channel="whatsapp")))
    assert (read.channel, read.account, read.status) == ("whatsapp", TWILIO_WA,
                                                         DeliveryStatus.READ)
    for quiet in ("queued", "accepted", "sending", "scheduled"):
        assert twilio.statuses(twilio_request(twilio_status(SID, quiet))) == []
    # An inbound message is not a receipt.
    assert twilio.statuses(twilio_request(twilio_inbound(SID, "Halo"))) == []


@pytest.mark.parametrize(("status", "code", "message", "error"), [
    ("undelivered", "30003", None, "30003: unreachable destination handset"),
    ("failed", "63016", None, "63016: outside the WhatsApp 24-hour window"),
    ("failed", "30410", "Provider Timeout Error", "30410: Provider Timeout Error"),
    ("undelivered", "39999", None, "39999: see https://www.twilio.com/docs/api/errors/39999"),
])
def test_failed_receipts_carry_the_error_code(
    session: aiohttp.ClientSession, status: str, code: str, message: str | None, error: str
) -> None:
    fields = twilio_status(SID, status, error_code=code)
    if message:
        fields.append(("ErrorMessage", message))
    [receipt] = adapter(session).statuses(twilio_request(fields))
    assert receipt.status is DeliveryStatus.FAILED
    assert receipt.error is not None and receipt.error.startswith(error)


def test_acknowledge_is_empty_twiml(session: aiohttp.ClientSession) -> None:
    request = twilio_request(twilio_inbound(SID, "Halo"))
    response = adapter(session).acknowledge(request, [])
    assert response.text == EMPTY_TWIML
    assert response.content_type == "text/xml"


def test_capabilities_per_channel(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    sms, whatsapp = twilio.capabilities_of("sms"), twilio.capabilities_of("whatsapp")
    # No files out yet (Twilio needs a public MediaUrl): the agent API refuses them at once.
    assert (sms.max_text_length, sms.media, sms.reply_window, sms.templates) == (
        1600, False, None, False)
    assert whatsapp.reply_window is not None and whatsapp.reply_window.total_seconds() == 86400
    assert whatsapp.templates and whatsapp.max_text_length == 1600 and not whatsapp.media
    assert twilio.carries() == {"sms", "whatsapp"}
    assert twilio.serves("sms", TWILIO_SMS) and twilio.serves("whatsapp", TWILIO_WA)
    assert twilio.serves("whatsapp", "whatsapp:" + TWILIO_WA)
    assert not twilio.serves("sms", "+6281100000099")


# -- sending ------------------------------------------------------------------------------


class FakeTwilio:
    """Twilio's Messages API on loopback: records each form and its credentials."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.auth: list[str | None] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.delay_s = 0.0
        self.url = ""

    async def create(self, request: web.Request) -> web.Response:
        self.forms.append(dict(form(await request.read())))
        self.auth.append(request.headers.get("Authorization"))
        await asyncio.sleep(self.delay_s)
        if self.answers:
            status, body = self.answers.pop(0)
            return web.json_response(body, status=status)
        return web.json_response(TWILIO.provider_reply(201), status=201)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio()
    app = web.Application()
    app.router.add_post(TWILIO.provider_path, twilio.create)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    twilio.url = str(server.make_url("")).rstrip("/")
    yield twilio
    await server.close()


def outgoing(text: str = "Laporan diterima.", *, channel: str = "sms",
             template: Template | None = None, message_id: int = 7) -> Outgoing:
    whatsapp = channel == "whatsapp"
    return Outgoing(message_id=message_id, conversation_id=3, tracking_number="AMB-2026-000003",
                    channel=channel, account=TWILIO_WA if whatsapp else TWILIO_SMS,
                    recipient=("whatsapp:" if whatsapp else "") + CITIZEN_PHONE, text=text,
                    template=template)


def test_split_text_keeps_words_and_order() -> None:
    words = [f"kata{i:04d}" for i in range(500)]
    parts = split_text(" ".join(words), 1600)
    assert len(parts) == 3 and all(len(p) <= 1600 for p in parts)
    assert " ".join(parts).split() == words  # nothing lost, nothing reordered, no word cut
    assert split_text("x" * 3500, 1600) == ["x" * 1600, "x" * 1600, "x" * 300]
    assert split_text("Pendek saja.\nBaris dua.", 1600) == ["Pendek saja.\nBaris dua."]


async def test_long_sms_is_sent_in_parts_in_order(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url, public_url=PUBLIC + "/")
    text = " ".join(f"Jalan{i} rusak parah." for i in range(200))
    assert 2 * MAX_BODY < len(text) < 3 * MAX_BODY
    sid = await twilio.send(outgoing(text))
    await twilio.close()
    bodies = [f["Body"] for f in fake.forms]
    assert len(bodies) == 3 and all(len(b) <= MAX_BODY for b in bodies)
    assert " ".join(bodies) == text
    first = fake.forms[0]
    assert (first["From"], first["To"]) == (TWILIO_SMS, CITIZEN_PHONE)
    assert first["StatusCallback"] == "https://lapor.example/webhooks/twilio"
    assert sid is not None and sid.startswith("SM")
    # The first part's SID is the one returned (receipts follow it).
    assert sid == f"SM{int(sid[2:], 16):032x}"
    expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert fake.auth == [expected] * 3


async def test_a_retry_resumes_after_the_parts_already_sent(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url)
    text = " ".join(f"kata{i:04d}" for i in range(500))
    fake.answers = [(201, TWILIO.provider_reply(201)),
                    (503, TWILIO.provider_reply(503))]
    with pytest.raises(DeliveryError) as failed:
        await twilio.send(outgoing(text))
    assert failed.value.retryable
    first_sid = await twilio.send(outgoing(text))
    await twilio.close()
    bodies = [f["Body"] for f in fake.forms]
    # Part 1 once, part 2 twice (failed, then again), part 3 once: the citizen sees no repeat.
    assert len(bodies) == 4 and bodies[2] == bodies[1]
    assert " ".join([bodies[0], bodies[2], bodies[3]]).split() == text.split()
    assert first_sid is not None and first_sid.startswith("SM")


async def test_whatsapp_is_sent_from_our_whatsapp_sender(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url)
    await twilio.send(outgoing("Petugas menuju lokasi.", channel="whatsapp"))
    await twilio.close()
    [sent] = fake.forms
    assert (sent["From"], sent["To"], sent["Body"]) == (
        "whatsapp:" + TWILIO_WA, "whatsapp:" + CITIZEN_PHONE, "Petugas menuju lokasi.")
    assert "StatusCallback" not in sent  # no public_url: the number's own callback applies


async def test_template_is_sent_as_content_sid_and_variables(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url)
    template = Template(name="HX" + "c" * 32, parameters=("AMB-2026-000003", "DLHP"))
    await twilio.send(outgoing("", channel="whatsapp", template=template))
    with pytest.raises(DeliveryError, match="WhatsApp only") as refused:
        await twilio.send(outgoing("", channel="sms", template=template))
    await twilio.close()
    assert not refused.value.retryable
    [sent] = fake.forms  # the SMS template never reached Twilio
    assert sent["ContentSid"] == "HX" + "c" * 32
    assert json.loads(sent["ContentVariables"]) == {"1": "AMB-2026-000003", "2": "DLHP"}
    assert "Body" not in sent


async def test_twilio_errors_keep_their_code(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url)
    fake.answers = [(400, {"code": 63016, "message": "Failed to send freeform message because "
                                                     "you are outside the allowed window.",
                           "more_info": "https://www.twilio.com/docs/errors/63016",
                           "status": 400})]
    with pytest.raises(DeliveryError) as refused:
        await twilio.send(outgoing("Halo", channel="whatsapp"))
    await twilio.close()
    assert not refused.value.retryable
    assert "63016" in str(refused.value) and "24-hour" in str(refused.value)
    assert "outside the allowed window" in str(refused.value)


async def test_a_hung_twilio_is_bounded_by_the_timeout(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    fake.delay_s = 30
    twilio = adapter(session, fake.url, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"within 0\.5 s") as timed_out:
        await twilio.send(outgoing())
    await twilio.close()
    assert timed_out.value.retryable
    assert time.monotonic() - started < 3


async def test_files_are_refused_before_anything_is_sent(
    fake: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    twilio = adapter(session, fake.url)
    photo = OutgoingFile(b"\xff\xd8jpeg", "image/jpeg", "perbaikan.jpg")
    with pytest.raises(DeliveryError, match="files cannot be sent") as refused:
        await twilio.send(replace(outgoing("Sudah diperbaiki."), files=(photo,)))
    await twilio.close()
    assert not refused.value.retryable
    assert fake.forms == []  # not even the text went out alone


async def test_a_number_of_no_account_is_not_sent(session: aiohttp.ClientSession) -> None:
    twilio = adapter(session)
    with pytest.raises(DeliveryError, match="not a number") as refused:
        await twilio.send(replace(outgoing(), account="+6281100000099"))
    assert not refused.value.retryable


# -- media --------------------------------------------------------------------------------


class FakeMedia:
    """Twilio's media URL (basic auth, then a redirect) and the CDN host it redirects to."""

    def __init__(self) -> None:
        self.api_auth: list[str | None] = []
        self.cdn_headers: list[dict[str, str]] = []
        self.cdn_url = ""
        self.written = 0
        self.content = b"\xff\xd8jpeg-bytes"
        self.size_claimed: int | None = None

    async def media(self, request: web.Request) -> web.Response:
        self.api_auth.append(request.headers.get("Authorization"))
        expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        if request.match_info["media"] == "ME404":
            return web.Response(status=404)
        if request.match_info["media"] == "ME503":
            return web.Response(status=503)
        raise web.HTTPTemporaryRedirect(f"{self.cdn_url}/{request.match_info['media']}")

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_headers.append(dict(request.headers))
        if request.match_info["name"] == "MEhuge":
            # Streams far more than anyone keeps, without saying how much.
            response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
            await response.prepare(request)
            chunk = b"v" * 65536
            try:
                for _ in range(1024):  # 64 MiB
                    await response.write(chunk)
                    self.written += len(chunk)
            except (ConnectionError, RuntimeError):
                pass
            return response
        headers = {"Content-Type": "image/jpeg"}
        body = self.content
        if request.match_info["name"] == "MEbig":
            body = b"i" * 200_000
        return web.Response(body=body, headers=headers)


@pytest.fixture
async def media() -> AsyncIterator[tuple[FakeMedia, str]]:
    fake = FakeMedia()
    api, cdn = web.Application(), web.Application()
    api.router.add_get(f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/{{message}}/Media/{{media}}",
                       fake.media)
    cdn.router.add_get("/media/{name}", fake.cdn)
    # The CDN is another host, as Twilio's redirect target is.
    api_server, cdn_server = TestServer(api, host="127.0.0.1"), TestServer(cdn, host="127.0.0.2")
    await api_server.start_server()
    await cdn_server.start_server()
    fake.cdn_url = str(cdn_server.make_url("/media"))
    yield fake, str(api_server.make_url("")).rstrip("/")
    await api_server.close()
    await cdn_server.close()


async def test_fetch_authenticates_at_twilio_and_not_at_the_redirect_target(
    media: tuple[FakeMedia, str], session: aiohttp.ClientSession
) -> None:
    fake, api_url = media
    twilio = adapter(session, api_url)
    got = await twilio.fetch(TWILIO_SMS, media_url("MM1", "MEphoto", api_url), max_bytes=1000)
    assert (got.content, got.content_type) == (fake.content, "image/jpeg")
    assert fake.api_auth[0] is not None and fake.api_auth[0].startswith("Basic ")
    [cdn] = fake.cdn_headers
    assert "Authorization" not in cdn  # the credentials never left Twilio's host


async def test_fetch_only_from_twilio(
    media: tuple[FakeMedia, str], session: aiohttp.ClientSession
) -> None:
    fake, api_url = media
    twilio = adapter(session, api_url)
    elsewhere = fake.cdn_url + "/MEphoto"
    with pytest.raises(FetchError, match="not Twilio") as refused:
        await twilio.fetch(TWILIO_SMS, elsewhere, max_bytes=1000)
    assert not refused.value.retryable
    assert fake.cdn_headers == []  # nothing was requested, credentials or not


async def test_fetch_refuses_oversize_without_reading_it_all(
    media: tuple[FakeMedia, str], session: aiohttp.ClientSession
) -> None:
    fake, api_url = media
    twilio = adapter(session, api_url)
    with pytest.raises(TooLarge, match="200000 bytes"):  # said by Content-Length
        await twilio.fetch(TWILIO_SMS, media_url("MM1", "MEbig", api_url), max_bytes=100_000)
    with pytest.raises(TooLarge):  # streamed without a length
        await twilio.fetch(TWILIO_SMS, media_url("MM1", "MEhuge", api_url), max_bytes=100_000)
    await asyncio.sleep(0.2)
    assert fake.written < 32 * 1024 * 1024  # far from the 64 MiB on offer


@pytest.mark.parametrize(("media_sid", "retryable"), [("ME404", False), ("ME503", True)])
async def test_fetch_errors_say_whether_a_retry_may_help(
    media: tuple[FakeMedia, str], session: aiohttp.ClientSession, media_sid: str,
    retryable: bool,
) -> None:
    _fake, api_url = media
    with pytest.raises(FetchError) as failed:
        await adapter(session, api_url).fetch(TWILIO_SMS, media_url("MM1", media_sid, api_url),
                                              max_bytes=1000)
    assert failed.value.retryable is retryable
    with pytest.raises(FetchError) as unreachable:
        await adapter(session, "http://127.0.0.1:9").fetch(
            TWILIO_SMS, media_url("MM1", "ME1", "http://127.0.0.1:9"), max_bytes=1000)
    assert unreachable.value.retryable
