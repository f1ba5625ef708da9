"""The shared adapter contract, run over every registered adapter through its kit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from omnichannel.adapters import REGISTRY
from omnichannel.adapters.base import SignatureError
from omnichannel.blobs import BlobStore
from omnichannel.bus.work import LocalWorkQueues
from omnichannel.delivery import Deliverer, DeliveryError, Outgoing
from omnichannel.model import InboundMessage, RouteDecision
from omnichannel.settings import Settings
from omnichannel.store import outbound
from omnichannel.store.database import create_database
from omnichannel.store.ingest import Ingestor
from tests.adapters.kits import KITS, Kit
from tests.conftest import new_database_url


def outgoing(kit: Kit) -> Outgoing:
    return Outgoing(message_id=7, conversation_id=3, tracking_number="AMB-2026-000003",
                    channel=kit.channel, account=kit.account, recipient=kit.recipient,
                    text="Terima kasih, laporan sudah diteruskan.")


async def test_every_registered_adapter_has_a_kit() -> None:
    async with aiohttp.ClientSession() as session:
        adapters = [build(Settings(), session) for build in REGISTRY.values()]
        for adapter in adapters:
            await adapter.close()
    # The suite is about webhooks and sends: every channel with a webhook has a kit; a channel
    # with a connection of its own (XMPP) is tested against its real server instead.
    kits = {k.name for k in KITS}
    assert {a.name for a in adapters if a.webhook} <= kits <= {a.name for a in adapters}


class FakeProvider:
    """A loopback server standing in for the provider's send API; records what it gets."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.received: list[bytes] = []
        self.answers: list[int] = []
        self.delay_s = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        await asyncio.sleep(self.delay_s)
        status = self.answers.pop(0) if self.answers else 200
        return web.json_response(self.kit.provider_reply(status), status=status)


@pytest.fixture(params=KITS, ids=lambda k: k.name)
def kit(request: pytest.FixtureRequest) -> Kit:
    result: Kit = request.param
    return result


@pytest.fixture
async def provider(kit: Kit) -> AsyncIterator[tuple[FakeProvider, str]]:
    if not kit.provider_path:
        pytest.skip(f"{kit.name} reaches its provider by another protocol; its own tests send")
    fake = FakeProvider(kit)
    app = web.Application()
    app.router.add_route("*", kit.provider_path, fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        yield s


def test_genuine_requests_verify(kit: Kit, session: aiohttp.ClientSession) -> None:
    adapter = kit.build("http://127.0.0.1:9/", session)
    for request, _ in kit.fixtures:
        adapter.verify(request)


def test_forged_requests_are_refused(kit: Kit, session: aiohttp.ClientSession) -> None:
    adapter = kit.build("http://127.0.0.1:9/", session)
    for request, _ in kit.fixtures:
        for forged in kit.forgeries(request):
            with pytest.raises(SignatureError) as refused:
                adapter.verify(forged)
            assert 400 <= refused.value.status < 500
        if kit.signs_body:
            with pytest.raises(SignatureError):
                adapter.verify(replace(request, body=request.body + b" "))


def test_fixtures_parse_to_the_expected_messages(
    kit: Kit, session: aiohttp.ClientSession
) -> None:
    adapter = kit.build("http://127.0.0.1:9/", session)
    for request, expected in kit.fixtures:
        [message] = adapter.parse(request)
        actual: dict[str, Any] = {
            "channel": message.channel, "account": message.account,
            "external_id": message.external_id, "sender_id": message.sender.id,
            "text": message.text, "phone": message.sender.phone,
            "latitude": message.location.latitude if message.location else None,
            "attachments": len(message.attachments),
        }
        assert {k: actual[k] for k in expected} == expected
        # A repeated delivery parses to the same dedupe key, so it is stored once.
        [again] = adapter.parse(request)
        assert (again.channel, again.account, again.external_id) == (
            message.channel, message.account, message.external_id)


async def test_send_reaches_the_provider(
    kit: Kit, provider: tuple[FakeProvider, str], session: aiohttp.ClientSession
) -> None:
    fake, url = provider
    adapter = kit.build(url, session)
    receipt = await adapter.send(outgoing(kit))
    await adapter.close()
    [body] = fake.received
    assert "Terima kasih" in unquote_plus(body.decode())  # JSON or form-encoded
    # The provider's id for the message, which its delivery receipts will name.
    assert (receipt is not None) is kit.gives_receipt


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True),
                                                   (400, False), (403, False)])
async def test_provider_errors_say_whether_a_retry_may_help(
    kit: Kit, provider: tuple[FakeProvider, str], session: aiohttp.ClientSession,
    status: int, retryable: bool,
) -> None:
    fake, url = provider
    fake.answers = [status]
    adapter = kit.build(url, session)
    with pytest.raises(DeliveryError) as failed:
        await adapter.send(outgoing(kit))
    await adapter.close()
    assert failed.value.retryable is retryable


async def test_unreachable_or_hung_provider_is_a_retryable_error(
    kit: Kit, provider: tuple[FakeProvider, str], session: aiohttp.ClientSession
) -> None:
    unreachable = kit.build("http://127.0.0.1:9", session)
    with pytest.raises(DeliveryError) as failed:
        await unreachable.send(outgoing(kit))
    await unreachable.close()
    assert failed.value.retryable
    fake, url = provider
    fake.delay_s = 5  # longer than the 2 s bound the kits give their adapters
    hung = kit.build(url, session)
    with pytest.raises(DeliveryError) as timed_out:
        await hung.send(outgoing(kit))
    await hung.close()
    assert timed_out.value.retryable


@pytest.mark.parametrize("failure", ["5xx", "timeout"])
async def test_a_failing_provider_is_retried_then_the_reply_marked_failed(
    kit: Kit, provider: tuple[FakeProvider, str], session: aiohttp.ClientSession,
    tmp_path: Path, failure: str,
) -> None:
    fake, url = provider
    if failure == "5xx":
        fake.answers = [503] * 3
    else:
        fake.delay_s = 5  # longer than the deliverer's bound on a call
    adapter = kit.build(url, session)
    request, _ = kit.fixtures[0]
    db = create_database(await new_database_url("sqlite", tmp_path))
    try:
        async with db.write() as conn:
            [stored] = await Ingestor(_triage, "AMB").ingest(conn, adapter.parse(request))
            reply = await outbound.add_outbound(
                conn, stored.conversation_id, channel=kit.channel, account=kit.account,
                text="Terima kasih, laporan sudah diteruskan.", author="agent")
        deliverer = Deliverer(db, lambda _channel, _account: adapter, LocalWorkQueues(),
                              BlobStore(tmp_path), attempts=3, timeout_s=0.5, backoff_s=0.01)
        await deliverer.deliver(reply["id"])
        async with db.api.connect() as conn:
            failed = await outbound.outbound_message(conn, reply["id"])
    finally:
        await adapter.close()
        await db.dispose()
    assert failed is not None
    assert (failed["delivery_status"], failed["delivery_attempts"]) == ("failed", 3)
    assert len(fake.received) == 3
    assert failed["delivery_error"]


def _triage(_message: InboundMessage) -> RouteDecision:
    return RouteDecision(queue="triage", rule=None, reason="contract suite")
