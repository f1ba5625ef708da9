"""Reconnecting with backoff, once for every adapter that holds a connection (XMPP, IMAP)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def reconnecting(
    name: str, session: Callable[[], Awaitable[None]], *, initial_s: float = 1.0,
    maximum_s: float = 60.0, healthy_after_s: float = 30.0,
) -> None:
    """Run `session` again whenever it ends or fails, waiting longer after each quick failure.

    `session` connects, serves until the connection is lost, and returns or raises. A session
    that lasted `healthy_after_s` resets the wait, so a server restart is followed at once; a
    server that keeps refusing is retried at most every `maximum_s` (with jitter, so many
    processes do not knock together). Runs until cancelled.
    """
    delay = initial_s
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await session()
            log.warning("connection_ended", adapter=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("connection_failed", adapter=name, error=repr(exc))
        if loop.time() - started >= healthy_after_s:
            delay = initial_s
        wait = delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not secrecy
        log.info("reconnecting", adapter=name, in_s=round(wait, 2))
        await asyncio.sleep(wait)
        delay = min(maximum_s, delay * 2)
