"""Reconnecting with backoff: quick failures wait longer each time, a long session resets it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from omnichannel.adapters.connection import reconnecting


async def test_failing_sessions_are_retried_with_growing_waits_until_cancelled() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def refused() -> None:
        starts.append(loop.time())
        raise ConnectionRefusedError("server down")

    task = asyncio.create_task(reconnecting("test", refused, initial_s=0.02, maximum_s=0.16))
    async with asyncio.timeout(5):
        while len(starts) < 6:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Jitter keeps each wait between half and all of the current delay, which doubles.
    assert gaps[0] < 0.05 and gaps[-1] >= 0.08 - 0.01
    assert max(gaps) < 0.3  # capped by maximum_s


async def test_a_long_session_resets_the_wait() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def session() -> None:
        starts.append(loop.time())
        if len(starts) == 4:
            await asyncio.sleep(0.2)  # a healthy session, then the server goes away

    task = asyncio.create_task(reconnecting("test", session, initial_s=0.05, maximum_s=1,
                                            healthy_after_s=0.15))
    async with asyncio.timeout(5):
        while len(starts) < 6:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after_reset = starts[4] - (starts[3] + 0.2)
    assert after_reset < 0.06  # back to the initial wait, not 0.4 s
