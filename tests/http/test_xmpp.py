"""XMPP end to end with a real Prosody: a citizen's client writes, an agent answers, both modes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from slixmpp import ClientXMPP, Message

from omnichannel.adapters.base import EngineAccess
from omnichannel.adapters.xmpp import XmppAdapter
from omnichannel.appkeys import ENGINE
from omnichannel.blobs import BlobStore
from omnichannel.model import InboundMessage
from omnichannel.pipeline import ShuttingDown
from omnichannel.settings import XmppAccount
from omnichannel.store.ingest import Stored
from tests.http.conftest import AGENT_AUTH, MakeClient, assert_all_published
from tests.http.test_agent_api import conversation, wait_for
from tests.xmpp_server import COMPONENT, COMPONENT_SECRET, Prosody, available

#: A report the routing rules send to DLHP (waste).
REPORT = "Sampah di depan pasar su tiga hari seng diangkut"
_citizens = itertools.count(1)


@pytest.fixture(scope="session")
def prosody() -> Iterator[Prosody]:
    """One throwaway Prosody for the session, on free loopback ports."""
    if not available():
        pytest.skip("prosody is not installed (Debian package `prosody`)")
    server = Prosody.create(citizens=8)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Citizen:
    """A citizen's XMPP client: sends reports, asks for receipts, collects replies."""

    def __init__(self, server: Prosody, user: str) -> None:
        self.jid = server.jid(user)
        self.port = server.c2s_port
        self.stream = ClientXMPP(self.jid, server.passwords[user], plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True}})
        self.stream.enable_direct_tls = False
        self.stream.enable_starttls = False
        self.stream.enable_plaintext = True
        for plugin in ("xep_0030", "xep_0184", "xep_0359"):
            self.stream.register_plugin(plugin)
        self.replies: asyncio.Queue[Message] = asyncio.Queue()
        self.receipts: list[str] = []
        self.errors: asyncio.Queue[Message] = asyncio.Queue()
        self.stream.add_event_handler("message", self._message)
        self.stream.add_event_handler("message_error", self.errors.put_nowait)
        self.stream.add_event_handler("receipt_received",
                                      lambda m: self.receipts.append(m["receipt"]))

    def _message(self, message: Message) -> None:
        if message["type"] in ("chat", "normal") and message["body"]:
            self.replies.put_nowait(message)

    async def connect(self) -> None:
        started = asyncio.Event()

        def ready(_event: object) -> None:
            self.stream.send_presence()
            started.set()

        self.stream.add_event_handler("session_start", ready)
        self.stream.connect("127.0.0.1", self.port)
        async with asyncio.timeout(10):
            await started.wait()

    def send(self, to: str, text: str, ident: str | None = None) -> str:
        """Send a chat message asking for a receipt; returns its id."""
        message = self.stream.make_message(mto=to, mbody=text, mtype="chat")
        if ident is not None:
            message["id"] = ident
        message["request_receipt"] = True
        message.send()
        result: str = message["id"]
        return result

    async def received(self, ident: str, times: int = 1) -> None:
        """Wait until the engine has acknowledged `ident` (it is stored) `times` times."""
        async with asyncio.timeout(10):
            while self.receipts.count(ident) < times:
                await asyncio.sleep(0.02)

    async def reply(self) -> Message:
        async with asyncio.timeout(10):
            return await self.replies.get()

    async def close(self) -> None:
        await self.stream.disconnect(wait=1)


@pytest.fixture
async def citizen(prosody: Prosody) -> AsyncIterator[Citizen]:
    """A citizen of their own (other tests' leftovers never reach them), connected."""
    person = Citizen(prosody, f"citizen{next(_citizens)}")
    await person.connect()
    yield person
    await person.close()


def accounts(prosody: Prosody, mode: str) -> tuple[list[dict[str, Any]], str]:
    """The engine's XMPP settings in `mode`, and the address citizens write to."""
    if mode == "client":
        return [{"account": "lapor", "mode": "client", "jid": prosody.jid("bot"),
                 "password": prosody.passwords["bot"], "host": "127.0.0.1",
                 "port": prosody.c2s_port}], prosody.jid("bot")
    return [{"account": "lapor", "mode": "component", "jid": COMPONENT,
             "password": COMPONENT_SECRET, "host": "127.0.0.1",
             "port": prosody.component_port}], f"pengaduan@{COMPONENT}"


def adapter_of(client: TestClient[Any, Any]) -> XmppAdapter:
    adapter = client.server.app[ENGINE].adapters["xmpp"]
    assert isinstance(adapter, XmppAdapter)
    return adapter


async def connected(client: TestClient[Any, Any], up: bool = True) -> None:
    adapter = adapter_of(client)

    async def reached() -> bool:
        return adapter.connected("lapor") is up

    await wait_for(reached, timeout=20)


async def conversation_of(client: TestClient[Any, Any], jid: str) -> dict[str, Any]:
    """The conversation of the citizen `jid`, once it is stored."""
    found: dict[str, Any] = {}

    async def stored() -> bool:
        resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
        for row in (await resp.json())["conversations"]:
            detail = await conversation(client, row["id"])
            if detail["messages"] and detail["messages"][0]["sender_id"] == jid:
                found.update(detail)
                return True
        return False

    await wait_for(stored)
    return found


async def inbound_texts(client: TestClient[Any, Any], conv_id: int) -> list[str]:
    messages = (await conversation(client, conv_id))["messages"]
    return [m["text"] for m in messages if m["direction"] == "inbound"]


async def delivered(client: TestClient[Any, Any], conv_id: int, message_id: int) -> None:
    async def reached() -> bool:
        messages = (await conversation(client, conv_id))["messages"]
        return any(m["id"] == message_id and m["delivery_status"] == "delivered"
                   for m in messages)

    await wait_for(reached)


@pytest.mark.parametrize("mode", ["client", "component"])
async def test_a_citizen_writes_and_an_agent_answers(
    make_client: MakeClient, prosody: Prosody, citizen: Citizen, mode: str,
    engine_settings: dict[str, Any],
) -> None:
    xmpp, address = accounts(prosody, mode)
    client = await make_client(**engine_settings, xmpp_accounts=xmpp)
    await connected(client)

    sent = citizen.send(address, REPORT)
    # The receipt comes only once the message is stored.
    await citizen.received(sent)
    conv = await conversation_of(client, citizen.jid)
    assert (conv["channel"], conv["account"], conv["queue"]) == ("xmpp", "lapor", "dlhp")
    [message] = conv["messages"]
    assert message["text"] == REPORT
    if "broker_url" in engine_settings:
        await assert_all_published(engine_settings["broker_prefix"], {message["id"]},
                                   queue="dlhp")

    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": "Petugas DLHP menuju lokasi."}, headers=AGENT_AUTH)
    assert resp.status == 202, await resp.text()
    reply_id = (await resp.json())["id"]
    answer = await citizen.reply()
    assert answer["body"] == "Petugas DLHP menuju lokasi."
    assert answer["from"].bare == (COMPONENT if mode == "component" else address)
    # The citizen's client acknowledged it (XEP-0184): the reply is delivered.
    await delivered(client, conv["id"], reply_id)

    # The same stanza again (a client resending after a reconnect) is stored once.
    citizen.send(address, REPORT, ident=sent)
    await citizen.received(sent, times=2)
    assert await inbound_texts(client, conv["id"]) == [REPORT]


async def test_the_webhook_path_says_the_channel_has_a_connection(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    resp = await client.post("/webhooks/xmpp", json={"text": REPORT})
    assert resp.status == 404
    assert "own connection" in (await resp.json())["error"]


@pytest.mark.parametrize("mode", ["client", "component"])
async def test_the_engine_reconnects_when_the_server_comes_back(
    make_client: MakeClient, prosody: Prosody, mode: str,
) -> None:
    xmpp, address = accounts(prosody, mode)
    client = await make_client(xmpp_accounts=xmpp)
    await connected(client)
    # Killed, so every stream drops without a goodbye, then started again.
    prosody.restart()
    await connected(client, up=False)
    await connected(client)

    citizen = Citizen(prosody, f"citizen{next(_citizens)}")
    await citizen.connect()
    try:
        sent = citizen.send(address, REPORT)
        await citizen.received(sent)
        conv = await conversation_of(client, citizen.jid)
        resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                                 json={"text": "Laporan diterima."}, headers=AGENT_AUTH)
        assert resp.status == 202
        assert (await citizen.reply())["body"] == "Laporan diterima."
        await delivered(client, conv["id"], (await resp.json())["id"])
    finally:
        await citizen.close()


async def test_messages_arriving_while_replies_are_sent_are_all_stored(
    make_client: MakeClient, prosody: Prosody, citizen: Citizen,
) -> None:
    xmpp, address = accounts(prosody, "client")
    client = await make_client(xmpp_accounts=xmpp)
    await connected(client)
    first = citizen.send(address, REPORT)
    await citizen.received(first)
    conv = await conversation_of(client, citizen.jid)

    answers = [f"Balasan {n}" for n in range(5)]
    reports = [f"Tambahan {n}: sampah juga di lorong {n}" for n in range(10)]
    posts = [client.post(f"/api/v1/conversations/{conv['id']}/messages", json={"text": text},
                         headers=AGENT_AUTH) for text in answers]
    # The citizen keeps writing while the engine is sending the agent's replies.
    posting = asyncio.gather(*posts)
    sent = [citizen.send(address, text) for text in reports]
    responses = await posting
    assert all(r.status == 202 for r in responses)
    reply_ids = [(await r.json())["id"] for r in responses]
    for ident in sent:
        await citizen.received(ident)
    assert sorted(await inbound_texts(client, conv["id"])) == sorted([REPORT, *reports])
    got = [(await citizen.reply())["body"] for _ in answers]
    # A conversation's replies leave in the order they were stored.
    assert got == [text for _, text in sorted(zip(reply_ids, answers, strict=True))]
    for reply_id in reply_ids:
        await delivered(client, conv["id"], reply_id)


async def test_a_message_that_cannot_be_stored_is_refused_back_to_the_citizen(
    prosody: Prosody, citizen: Citizen, tmp_path: Path,
) -> None:
    async def stopping(_message: InboundMessage) -> Stored:
        raise ShuttingDown("the engine is shutting down")

    async def nothing(*_args: Any) -> Any:
        return []

    xmpp, address = accounts(prosody, "client")
    adapter = XmppAdapter([XmppAccount.model_validate(xmpp[0])])
    await adapter.start(EngineAccess(submit=stopping, record_receipts=nothing, thread=nothing,
                                     blobs=BlobStore(tmp_path)))
    try:
        async with asyncio.timeout(10):
            while not adapter.connected("lapor"):
                await asyncio.sleep(0.02)
        sent = citizen.send(address, REPORT)
        async with asyncio.timeout(10):
            error = await citizen.errors.get()
    finally:
        await adapter.close()
    assert error["id"] == sent
    assert error["error"]["condition"] == "resource-constraint"
    # No receipt: the citizen's client shows the message as not delivered.
    assert sent not in citizen.receipts
