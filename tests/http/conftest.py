"""Fixtures for HTTP tests: an engine app on a fresh store, a recording callback server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from omnichannel.adapters import carried_channels
from omnichannel.app import build_app
from omnichannel.bus import decode_event
from omnichannel.router import load_rules
from omnichannel.settings import Settings
from tests.conftest import BROKER_URL, REPO, drop_database_url, new_database_url

API_TOKEN = "test-api-token-0123456789"
AGENT_TOKEN = "test-agent-token-0123456789"
API_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
AGENT_AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Engine settings for tests: given store, in-process bus unless overridden."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_token": API_TOKEN,
        "agent_token": AGENT_TOKEN,
        "rules_path": REPO / "config" / "routing.yaml",
        "broker_url": None,
        "log_format": "console",
        # Tests about acknowledgements turn it on; elsewhere it would only add a reply.
        "auto_ack": False,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    """Start engine apps: `await make_client(store="sqlite"|"postgresql", **settings)`.

    Each client is closed (its engine stopped) at the end; `await client.close()` stops one
    earlier, as a restart does. The RabbitMQ queues and exchanges of the engines' prefixes are
    deleted after every engine stopped: a running engine would declare them again.
    """
    clients: list[TestClient[Any, Any]] = []
    urls: list[str] = []
    prefixes: set[str] = set()

    async def make(store: str = "sqlite", **overrides: Any) -> TestClient[Any, Any]:
        # A `database_url` override restarts an engine on an earlier one's database.
        url = overrides.pop("database_url", None)
        if url is None:
            url = await new_database_url(store, tmp_path)
            urls.append(url)
        overrides.setdefault("attachments_path", tmp_path / "attachments")
        if overrides.get("broker_url"):
            prefixes.add(overrides.get("broker_prefix", "omnichannel"))
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(settings_for(url, **overrides)))
        )
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for prefix in prefixes:
        await delete_topology(prefix)
    for url in urls:
        await drop_database_url(url)


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    """An engine on SQLite and the in-process bus."""
    return await make_client()


class CallbackRecorder:
    """A loopback HTTP server standing in for a system receiving `api` channel replies."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_with: list[int] = []
        #: Seconds to wait before answering, as a hung provider would.
        self.delay_s = 0.0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.headers.append(dict(request.headers))
        await asyncio.sleep(self.delay_s)
        if self.fail_with:
            return web.Response(status=self.fail_with.pop(0))
        return web.json_response({"ok": True})


@pytest.fixture
async def callback() -> AsyncIterator[CallbackRecorder]:
    """A recording callback server on loopback."""
    recorder = CallbackRecorder()
    app = web.Application()
    app.router.add_post("/replies", recorder.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    recorder.url = str(server.make_url("/replies"))
    yield recorder
    await server.close()


@pytest.fixture
def broker_prefix() -> str:
    """A unique exchange/queue prefix so tests never share RabbitMQ objects."""
    if not BROKER_URL:
        pytest.skip("RabbitMQ not configured: set OMNICHANNEL_TEST_BROKER_URL")
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["embedded", "broker"])
async def engine_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each mode's store and bus: SQLite and the in-process bus, or PostgreSQL and RabbitMQ
    under a prefix of the test's own (skipped unless configured; `make_client` removes its
    queues)."""
    if request.param == "embedded":
        return {"store": "sqlite"}
    prefix: str = request.getfixturevalue("broker_prefix")
    return {"store": "postgresql", "broker_url": BROKER_URL, "broker_prefix": prefix}


async def assert_all_published(prefix: str, expected: set[int], queue: str = "dlhp") -> None:
    """Every message of `expected` reaches the OPD queue `queue` of the bus named `prefix`."""
    assert BROKER_URL
    seen: set[int] = set()
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{prefix}.opd.{queue}")
        async with asyncio.timeout(30):
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        seen.add(decode_event(message.body).message_id)
                    if expected <= seen:
                        break
    assert expected <= seen


async def delete_topology(prefix: str) -> None:
    """Remove a test's exchange and queues from the shared broker."""
    assert BROKER_URL
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        codes = load_rules(REPO / "config" / "routing.yaml").opds
        names = [f"{prefix}.opd.{c}" for c in codes] + [f"{prefix}.dead"]
        names += [f"{prefix}.outbound.{c}" for c in await carried_channels()]
        for name in names:
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.AMQPError:
                channel = await connection.channel()
        await channel.exchange_delete(f"{prefix}.routed")
        await channel.exchange_delete(f"{prefix}.dead")
