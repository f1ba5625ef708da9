"""Stopping background tasks: the one way stages and adapters let theirs go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task, then wait for each to unwind (their own errors still propagate)."""
    tasks = list(tasks)  # a task that ends removes itself from the caller's set
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
