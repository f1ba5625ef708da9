"""End-to-end ingest benchmark: HTTP `/webhooks/api` to the routed event on the OPD queues.

Starts `omnichannel serve` on a fresh store (or uses `--url`), posts N messages with
concurrency C, listens for the routed events (RabbitMQ OPD queues in broker mode, the
`/api/v1/events` stream on the embedded defaults), and prints throughput and latency from
request to routed event. A second phase offers half the measured throughput at a steady rate
and reports its p99. In broker mode it also measures, in the same run, the raw aio-pika
confirmed persistent publish rate to a quorum queue on the same broker.

    python benchmarks/ingest.py --mode embedded
    python benchmarks/ingest.py --mode broker \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres \
        --broker-url amqp://guest:guest@127.0.0.1:5672/

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publish import raw_publish_rate

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Sampah di depan pasar su tiga hari seng diangkut, bau skali",
    "Jalan di Kudamati berlubang besar, motor jatuh tiap hari",
    "mati lampu lg di Passo dr jam 5 sore",
    "Air PDAM seng mangalir su dua hari di Batu Merah",
    "halo min",
    "Lampu jalan di depan gereja mati su satu bulan",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Listener:
    """Records when each routed event arrives, keyed by message id."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        #: Seconds from the engine's commit (the event's `received_at`) to arrival here.
        self.since_commit: dict[int, float] = {}
        self.changed = asyncio.Event()

    def record(self, body: bytes) -> None:
        event = json.loads(body)
        if event["message_id"] not in self.arrived:
            self.arrived[event["message_id"]] = time.perf_counter()
            committed = datetime.fromisoformat(event["received_at"]).timestamp()
            self.since_commit[event["message_id"]] = time.time() - committed
        self.changed.set()

    async def wait_for(self, ids: set[int], limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while not ids <= self.arrived.keys():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def rabbit_listener(url: str, prefix: str, codes: list[str]) -> AsyncIterator[Listener]:
    """Consume every OPD queue of `prefix` on RabbitMQ."""
    listener = Listener()
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            listener.record(message.body)
            await message.ack()

        for code in codes:
            queue = await channel.get_queue(f"{prefix}.opd.{code}")
            await queue.consume(on_message)
        yield listener


@contextlib.asynccontextmanager
async def sse_listener(
    session: aiohttp.ClientSession, base: str, token: str
) -> AsyncIterator[Listener]:
    """Follow the engine's `/api/v1/events` stream."""
    listener = Listener()
    resp = await session.get(f"{base}/api/v1/events",
                             headers={"Authorization": f"Bearer {token}"},
                             timeout=aiohttp.ClientTimeout(total=None))

    async def read() -> None:
        async for line in resp.content:
            if line.startswith(b"data: "):
                listener.record(line[6:])

    task = asyncio.create_task(read())
    try:
        yield listener
    finally:
        task.cancel()
        resp.close()


async def post_all(
    session: aiohttp.ClientSession, base: str, token: str, n: int, concurrency: int,
    run: str, rate: float | None = None,
) -> tuple[dict[int, float], list[float]]:
    """Post `n` messages; returns message id -> time sent, and each answer's latency (ms)."""
    sent: dict[int, float] = {}
    answered: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    counter = iter(range(n))
    start = time.perf_counter()

    async def worker() -> None:
        for i in counter:
            if rate is not None:
                # Open loop: request i leaves at its scheduled time, not when a slot frees.
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            body = {"external_id": f"{run}-{i}", "sender_id": f"{run}-citizen-{i // 4}",
                    "text": TEXTS[i % len(TEXTS)]}
            t0 = time.perf_counter()
            async with session.post(f"{base}/webhooks/api", json=body, headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                sent[(await r.json())["message_id"]] = t0
            answered.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, answered


async def phase(
    session: aiohttp.ClientSession, base: str, token: str, listener: Listener, n: int,
    concurrency: int, rate: float | None = None,
) -> dict[str, float]:
    """One measured run: throughput to routed events and latency percentiles."""
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    sent, answered = await post_all(session, base, token, n, concurrency, run, rate)
    await listener.wait_for(set(sent), limit_s=300)
    finished = max(listener.arrived[i] for i in sent)
    latencies = [(listener.arrived[i] - t0) * 1000 for i, t0 in sent.items()]
    after_commit = [listener.since_commit[i] * 1000 for i in sent]
    return {
        "messages": n,
        "throughput_per_s": round(n / (finished - started), 1),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "http_p50_ms": round(_percentile(answered, 0.50), 2),
        "http_p99_ms": round(_percentile(answered, 0.99), 2),
        "commit_to_event_p50_ms": round(_percentile(after_commit, 0.50), 2),
        "commit_to_event_p99_ms": round(_percentile(after_commit, 0.99), 2),
    }


class Engine:
    """An `omnichannel serve` process on its own fresh store."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "OMNICHANNEL_PORT": str(self.port),
                    "OMNICHANNEL_LOG_LEVEL": "warning"}
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Engine:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - started once per run
            [sys.executable, "-m", "omnichannel.cli", "serve"], env=self.env, cwd=REPO
        )
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return self
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 30)


def opd_codes() -> list[str]:
    """The OPD queues the default rules declare."""
    sys.path.insert(0, str(REPO))
    from omnichannel.router import load_rules

    return list(load_rules(REPO / "config" / "routing.yaml").opds)


async def delete_topology(url: str, prefix: str, codes: list[str]) -> None:
    """Remove the run's queues and exchanges: idle quorum queues still cost the broker.

    Each quorum queue holds files open in RabbitMQ; runs that leave theirs behind exhaust its
    file-handle budget until new connections hang.
    """
    from omnichannel.adapters import carried_channels

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        names = [f"{prefix}.opd.{code}" for code in codes] + [f"{prefix}.dead"]
        names += [f"{prefix}.outbound.{name}" for name in await carried_channels()]
        for name in names:
            await channel.queue_delete(name)
        for name in (f"{prefix}.routed", f"{prefix}.dead"):
            await channel.exchange_delete(name)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    agent = secrets.token_urlsafe(24)
    env = {"OMNICHANNEL_API_TOKEN": token, "OMNICHANNEL_AGENT_TOKEN": agent,
           "OMNICHANNEL_RULES_PATH": str(REPO / "config" / "routing.yaml")}
    result: dict[str, Any] = {"mode": args.mode, "n": args.n, "concurrency": args.concurrency}
    dbname = None
    tmp_dir = tempfile.TemporaryDirectory(prefix="omnichannel-bench-")
    tmp = tmp_dir.name
    if args.mode == "broker":
        dbname = f"omnichannel_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await admin.close()
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        env |= {"OMNICHANNEL_DATABASE_URL": args.database_url.rsplit("/", 1)[0] + "/" + dbname,
                "OMNICHANNEL_BROKER_URL": args.broker_url, "OMNICHANNEL_BROKER_PREFIX": prefix}
    else:
        env |= {"OMNICHANNEL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
                "OMNICHANNEL_BROKER_URL": ""}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    try:
        async with Engine(env) as engine, aiohttp.ClientSession(connector=connector) as session:
            if args.mode == "broker":
                listening = rabbit_listener(args.broker_url, prefix, opd_codes())
            else:
                listening = sse_listener(session, engine.base, agent)
            async with listening as listener:
                await phase(session, engine.base, token, listener, min(500, args.n),
                            args.concurrency)  # warm-up
                full = await phase(session, engine.base, token, listener, args.n,
                                   args.concurrency)
                half_rate = args.half_rate or full["throughput_per_s"] / 2
                half = await phase(session, engine.base, token, listener,
                                   int(half_rate * args.half_seconds), args.concurrency,
                                   rate=half_rate)
            result["full_load"] = full
            result["half_load"] = {**half, "offered_per_s": round(half_rate, 1)}
        if args.mode == "broker":
            raw = await raw_publish_rate(args.broker_url)
            result["raw_confirmed_publish_per_s"] = round(raw, 1)
            result["ratio_to_raw"] = round(full["throughput_per_s"] / raw, 3)
    finally:
        tmp_dir.cleanup()
        if args.mode == "broker":
            await delete_topology(args.broker_url, prefix, opd_codes())
        if dbname:
            admin = await asyncpg.connect(args.database_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await admin.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "broker"], default="embedded")
    parser.add_argument("-n", type=int, default=20000, help="messages in the measured run")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--half-seconds", type=float, default=10.0,
                        help="length of the half-load phase")
    parser.add_argument("--half-rate", type=float, default=None,
                        help="rate of the steady phase (default: half the measured throughput)")
    parser.add_argument("--database-url", default=os.environ.get(
        "OMNICHANNEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--broker-url", default=os.environ.get(
        "OMNICHANNEL_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    full, half = result["full_load"], result["half_load"]
    print(f"mode {result['mode']}: {full['messages']} messages, concurrency {args.concurrency}")
    print(f"  full load: {full['throughput_per_s']} msg/s end to end, "
          f"p50 {full['p50_ms']} ms, p99 {full['p99_ms']} ms "
          f"(HTTP answer p50 {full['http_p50_ms']} ms, p99 {full['http_p99_ms']} ms)")
    print(f"  half load ({half['offered_per_s']} msg/s offered): "
          f"p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms "
          f"(HTTP answer p50 {half['http_p50_ms']} ms, p99 {half['http_p99_ms']} ms)")
    if "raw_confirmed_publish_per_s" in result:
        print(f"  raw confirmed publish: {result['raw_confirmed_publish_per_s']} msg/s; "
              f"ratio {result['ratio_to_raw']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
