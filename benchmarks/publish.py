"""Confirmed persistent publish rate to RabbitMQ quorum queues: raw aio-pika, and `RabbitBus`.

`raw_publish_rate` is the ceiling: plain aio-pika, publisher confirms, persistent messages of a
routed event's size, `in_flight` publishes awaiting their confirm at once, to a throwaway quorum
queue. `bus_publish_rate` measures `RabbitBus.publish` called with one batch after another, as
the outbox relay calls it. Everything declared is deleted afterwards.

    python benchmarks/publish.py --url amqp://guest:guest@127.0.0.1:5672/
    python benchmarks/publish.py -n 20000 --in-flight 200 --batches 100,500,1000 --repeat 3

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika

REPO = Path(__file__).resolve().parents[1]

#: A routed event's JSON as published (about 700 bytes): the raw benchmark sends this size.
SAMPLE_EVENT: dict[str, Any] = {
    "schema": 1,
    "message_id": 123456789,
    "conversation_id": 41152263,
    "tracking_number": "AMB-2026-00123456",
    "queue": "dinas-pupr",
    "rule": "jalan-rusak",
    "channel": "whatsapp",
    "account": "+62911000111",
    "contact": {"id": 77, "sender_id": "6281234567890", "name": "Nona Ambon"},
    "text": "Jalan di Kudamati berlubang besar, motor jatuh tiap hari. Tolong diperbaiki "
    "sebelum musim hujan, su banyak yang celaka di depan gereja.",
    "sent_at": "2026-03-14T09:26:53.589793+00:00",
    "received_at": "2026-03-14T18:26:55.589793+09:00",
    "attachments": [
        {
            "content_type": "image/jpeg",
            "size": 123456,
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1234567890",
            "filename": "foto.jpg",
            "blob_id": None,
        }
    ],
    "location": {
        "latitude": -3.6954,
        "longitude": 128.1814,
        "name": "Gereja Maranatha",
        "address": "Jl. Raya Pattimura, Ambon",
    },
}
SAMPLE_BODY = json.dumps(SAMPLE_EVENT, separators=(",", ":")).encode()


async def raw_publish_rate(url: str, n: int = 20000, in_flight: int = 200) -> float:
    """Raw aio-pika confirmed persistent publishes per second to a throwaway quorum queue."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            f"bench.raw.{uuid.uuid4().hex[:12]}",
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        try:
            counter = itertools.count()

            async def worker() -> None:
                # `in_flight` workers, each with one publish awaiting its confirm: exactly
                # `in_flight` unconfirmed messages at any time, and no per-message task.
                exchange = channel.default_exchange
                while (i := next(counter)) < n:
                    message = aio_pika.Message(
                        SAMPLE_BODY,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=str(i),
                    )
                    await exchange.publish(message, routing_key=queue.name)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
            elapsed = time.perf_counter() - started
        finally:
            await channel.queue_delete(queue.name)
    finally:
        await connection.close()
    return n / elapsed


async def bus_publish_rate(url: str, batch: int, n: int = 20000, queues: int = 1) -> float:
    """Events per second through `RabbitBus.publish`, called with consecutive `batch`-size lists.

    Events go round-robin to `queues` OPD queues (1 compares with `raw_publish_rate`; quorum
    queues are each one Raft log, so several queues spread the broker's work).
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from omnichannel.bus import RabbitBus
    from omnichannel.model import Attachment, Location, RoutedEvent

    codes = [f"opd{i}" for i in range(queues)]
    now = datetime.now(UTC)
    events = [
        RoutedEvent(
            message_id=i,
            conversation_id=i // 3,
            tracking_number=f"AMB-2026-{i:08d}",
            queue=codes[i % len(codes)],
            rule="jalan-rusak",
            channel="whatsapp",
            account="+62911000111",
            contact_id=77,
            sender_id="6281234567890",
            sender_name="Nona Ambon",
            text=str(SAMPLE_EVENT["text"]),
            sent_at=now,
            received_at=now,
            attachments=(Attachment("image/jpeg", 123456, "https://lookaside.example/1", "f.jpg"),),
            location=Location(-3.6954, 128.1814, "Gereja Maranatha", "Jl. Raya Pattimura"),
        )
        for i in range(1, n + 1)
    ]
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    bus = RabbitBus(url, prefix=prefix, connection_name=f"omnichannel-{prefix}")
    try:
        await bus.start(codes)
        started = time.perf_counter()
        for i in range(0, n, batch):
            await bus.publish(events[i : i + batch])
        elapsed = time.perf_counter() - started
    finally:
        await bus.close()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for name in [*(bus.queue_name(c) for c in codes), bus.dead_queue_name]:
                await channel.queue_delete(name)
            for exchange in (bus.exchange_name, bus.dead_exchange_name):
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()
    return n / elapsed


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "OMNICHANNEL_BROKER_URL",
            os.environ.get("OMNICHANNEL_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        ),
    )
    parser.add_argument("-n", type=int, default=20000, help="messages per measurement")
    parser.add_argument("--in-flight", type=int, default=200, help="raw: unconfirmed at once")
    parser.add_argument("--batches", default="100,500,1000", help="RabbitBus batch sizes")
    parser.add_argument(
        "--queues", type=int, default=1, help="RabbitBus: OPD queues to spread over"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; median kept")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]

    raw_runs = [
        await raw_publish_rate(args.url, args.n, args.in_flight) for _ in range(args.repeat)
    ]
    print(f"raw aio-pika, {args.in_flight} in flight: " + ", ".join(f"{r:,.0f}" for r in raw_runs))
    bus_runs: dict[int, list[float]] = {}
    for size in batches:
        bus_runs[size] = [
            await bus_publish_rate(args.url, size, args.n, args.queues) for _ in range(args.repeat)
        ]
        print(
            f"RabbitBus.publish, {args.queues} queue(s), batch {size}: "
            + ", ".join(f"{r:,.0f}" for r in bus_runs[size])
        )
    raw = statistics.median(raw_runs)
    return {
        "messages": args.n,
        "body_bytes": len(SAMPLE_BODY),
        "repeat": args.repeat,
        "raw_in_flight": args.in_flight,
        "raw_confirmed_publish_per_s": round(raw, 1),
        "bus_queues": args.queues,
        "bus_publish_per_s": {
            str(size): round(statistics.median(runs), 1) for size, runs in bus_runs.items()
        },
        "bus_ratio_to_raw": {
            str(size): round(statistics.median(runs) / raw, 3) for size, runs in bus_runs.items()
        },
    }


if __name__ == "__main__":
    import logging

    import structlog

    # Keep the bus's info logs out of the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(json.dumps(asyncio.run(main())))
