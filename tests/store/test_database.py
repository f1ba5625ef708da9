"""The store's engines: on SQLite, readers and the writer do not hold each other up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from omnichannel.store.database import create_database


async def test_an_open_read_does_not_hold_up_a_write_on_sqlite(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        async with db.write() as conn:
            await conn.execute(sa.text("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)"))
        async with db.api.connect() as reader:
            assert (await reader.execute(sa.text("SELECT count(*) FROM note"))).scalar() == 0

            async def write() -> None:
                async with db.write() as conn:
                    await conn.execute(sa.text("INSERT INTO note (body) VALUES ('x')"))

            # The read's transaction is still open; a reader holding the write lock would keep
            # the writer waiting for SQLite's 30 s busy timeout.
            await asyncio.wait_for(write(), timeout=5)
            # The open read keeps its snapshot (WAL); a new read sees the write.
            assert (await reader.execute(sa.text("SELECT count(*) FROM note"))).scalar() == 0
        async with db.api.connect() as reader:
            assert (await reader.execute(sa.text("SELECT count(*) FROM note"))).scalar() == 1
    finally:
        await db.dispose()
