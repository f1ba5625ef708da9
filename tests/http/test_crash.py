"""A 2xx means durable: `kill -9` right after the answers loses nothing, and the outbox resends."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import BROKER_URL, REPO, drop_database_url, new_database_url
from tests.http.conftest import (
    AGENT_AUTH,
    AGENT_TOKEN,
    API_AUTH,
    API_TOKEN,
    assert_all_published,
    delete_topology,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """An `omnichannel serve` child process."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "OMNICHANNEL_PORT": str(self.port),
                    "OMNICHANNEL_API_TOKEN": API_TOKEN, "OMNICHANNEL_AGENT_TOKEN": AGENT_TOKEN,
                    "OMNICHANNEL_RULES_PATH": str(REPO / "config" / "routing.yaml")}
        self.log = tmp_path / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a child process, started once
                [sys.executable, "-m", "omnichannel.cli", "serve"], env=self.env, cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT,
            )
        async with asyncio.timeout(60):
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with session.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post_many(session: aiohttp.ClientSession, base: str, n: int) -> list[dict[str, Any]]:
    async def one(i: int) -> dict[str, Any]:
        body = {"external_id": f"crash-{i}", "sender_id": f"citizen-{i % 7}",
                "text": f"Sampah di RT {i} seng diangkut su satu minggu"}
        async with session.post(f"{base}/webhooks/api", json=body, headers=API_AUTH) as resp:
            assert resp.status == 201, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("mode", ["embedded", "postgresql+rabbitmq"])
async def test_acknowledged_messages_survive_kill_9(
    mode: str, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    env: dict[str, str] = {"OMNICHANNEL_BROKER_URL": ""}
    if mode == "embedded":
        url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    else:
        if not BROKER_URL:
            pytest.skip("RabbitMQ not configured: set OMNICHANNEL_TEST_BROKER_URL")
        url = await new_database_url("postgresql", tmp_path)
        prefix = f"test-{uuid.uuid4().hex[:10]}"
        env = {"OMNICHANNEL_BROKER_URL": BROKER_URL, "OMNICHANNEL_BROKER_PREFIX": prefix}
    env["OMNICHANNEL_DATABASE_URL"] = url
    server = Server(env, tmp_path)
    try:
        await server.start(session)
        accepted = await post_many(session, server.base, 200)
        server.kill()  # at once after the last 2xx: no chance to flush anything

        server = Server(env, tmp_path)
        await server.start(session)
        for answer in accepted:
            async with session.get(f"{server.base}/api/v1/conversations/"
                                   f"{answer['conversation_id']}", headers=AGENT_AUTH) as resp:
                conv = await resp.json()
            assert answer["message_id"] in {m["id"] for m in conv["messages"]}
        if mode != "embedded":
            await assert_all_published(env["OMNICHANNEL_BROKER_PREFIX"],
                                       {a["message_id"] for a in accepted})
    finally:
        server.stop()
        if mode != "embedded":
            await drop_database_url(url)
            await delete_topology(env["OMNICHANNEL_BROKER_PREFIX"])
