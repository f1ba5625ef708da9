"""Outbound benchmark: agents' replies from the API to a provider, through the outbound stage.

Starts `omnichannel serve` on a fresh store (SQLite and the in-process queue, or PostgreSQL and
RabbitMQ's `<prefix>.outbound.api`), opens C conversations through `/webhooks/api`, then posts
N replies spread over them with concurrency C and measures, at a loopback callback server
standing in for the provider, replies delivered per second and the latency from the agent's
POST to the provider receiving the reply. The provider answers after `--provider-ms`.

    python benchmarks/delivery.py --mode embedded -n 2000
    python benchmarks/delivery.py --mode broker -n 2000

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import REPO, Engine, _percentile, delete_topology, opd_codes


class Provider:
    """The callback server: records when each reply arrives."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.arrived: dict[int, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(self.delay_s)
        self.arrived.setdefault(body["message_id"], time.perf_counter())
        if len(self.arrived) >= self.expected:
            self.done.set()
        return web.json_response({"ok": True})


async def run(args: argparse.Namespace) -> dict[str, Any]:
    provider = Provider(args.provider_ms / 1000)
    app = web.Application()
    app.router.add_post("/replies", provider.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token, agent = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"OMNICHANNEL_API_TOKEN": token, "OMNICHANNEL_AGENT_TOKEN": agent,
           "OMNICHANNEL_AUTO_ACK": "false",
           "OMNICHANNEL_API_CALLBACK_URL": f"http://127.0.0.1:{port}/replies",
           "OMNICHANNEL_RULES_PATH": str(REPO / "config" / "routing.yaml")}
    tmp = tempfile.TemporaryDirectory(prefix="omnichannel-bench-")
    dbname = prefix = None
    if args.mode == "broker":
        run_id = uuid.uuid4().hex[:8]
        dbname, prefix = f"omnichannel_bench_{run_id}", f"bench-{run_id}"
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await admin.close()
        env |= {"OMNICHANNEL_DATABASE_URL": args.database_url.rsplit("/", 1)[0] + "/" + dbname,
                "OMNICHANNEL_BROKER_URL": args.broker_url, "OMNICHANNEL_BROKER_PREFIX": prefix}
    else:
        env |= {"OMNICHANNEL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp.name}/bench.db",
                "OMNICHANNEL_BROKER_URL": "", "OMNICHANNEL_ATTACHMENTS_PATH": tmp.name}
    auth = {"Authorization": f"Bearer {agent}"}
    try:
        async with Engine(env) as engine, aiohttp.ClientSession() as session:
            conversations = []
            for i in range(args.concurrency):
                async with session.post(f"{engine.base}/webhooks/api", json={
                        "external_id": f"c{i}", "sender_id": f"citizen-{i}",
                        "text": "Sampah di depan pasar su tiga hari seng diangkut"},
                        headers={"Authorization": f"Bearer {token}"}) as resp:
                    conversations.append((await resp.json())["conversation_id"])
            provider.expected = args.n
            posted: dict[int, float] = {}
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(args.n):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    conv = conversations[i % len(conversations)]
                    started = time.perf_counter()
                    async with session.post(
                            f"{engine.base}/api/v1/conversations/{conv}/messages",
                            json={"text": f"balasan {i}"}, headers=auth) as resp:
                        posted[(await resp.json())["id"]] = started

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            await asyncio.wait_for(provider.done.wait(), timeout=600)
            elapsed = time.perf_counter() - began
            latencies = [(provider.arrived[m] - t) * 1000 for m, t in posted.items()]
            return {"mode": args.mode, "replies": args.n, "concurrency": args.concurrency,
                    "provider_ms": args.provider_ms,
                    "delivered_per_s": round(args.n / elapsed, 1),
                    "p50_ms": round(_percentile(latencies, 0.5), 1),
                    "p99_ms": round(_percentile(latencies, 0.99), 1)}
    finally:
        await runner.cleanup()
        tmp.cleanup()
        if prefix:
            await delete_topology(args.broker_url, prefix, opd_codes())
        if dbname:
            admin = await asyncpg.connect(args.database_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "broker"], default="embedded")
    parser.add_argument("-n", type=int, default=2000, help="replies in the measured run")
    parser.add_argument("-c", "--concurrency", type=int, default=32,
                        help="agents replying at once, each in their own conversation")
    parser.add_argument("--provider-ms", type=float, default=20.0,
                        help="how long the provider takes to answer a send")
    parser.add_argument("--database-url", default=os.environ.get(
        "OMNICHANNEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--broker-url", default=os.environ.get(
        "OMNICHANNEL_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"mode {result['mode']}: {result['replies']} replies over {args.concurrency} "
          f"conversations, provider answering in {args.provider_ms:g} ms")
    print(f"  {result['delivered_per_s']} replies/s delivered; agent POST to provider "
          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
