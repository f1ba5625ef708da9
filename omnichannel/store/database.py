"""Async engines: one pool reserved for ingest, one for agents' queries, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

#: Execution option marking a connection whose transactions write (SQLite: BEGIN IMMEDIATE);
#: the ingest engine's write by default, the agents' engine's only when `Database.write` says.
_WRITES = "omnichannel_writes"


@dataclass(slots=True)
class Database:
    """The engines of one store: ingest never waits behind a slow agent query."""

    url: str
    ingest: AsyncEngine
    api: AsyncEngine
    #: SQLite has one writer at a time, and a connection waiting for its lock polls with
    #: sleeps of up to 100 ms: queueing this process's writers here keeps that wait short.
    _sqlite_writer: asyncio.Lock | None = field(default=None, repr=False)

    @contextlib.asynccontextmanager
    async def write(self, engine: AsyncEngine | None = None) -> AsyncIterator[AsyncConnection]:
        """A write transaction on `engine` (default: the ingest engine), committed on exit."""
        engine = engine or self.ingest
        if self._sqlite_writer is None:
            async with engine.begin() as conn:
                yield conn
            return
        async with self._sqlite_writer, engine.connect() as conn:
            await conn.execution_options(**{_WRITES: True})
            async with conn.begin():
                yield conn

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.ingest.dialect.name

    async def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            async with self.api.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.ingest.dispose()
        await self.api.dispose()


def _sqlite_engine(url: str, *, writes: bool) -> AsyncEngine:
    """An SQLite engine; `writes`: its transactions take the write lock unless marked reads."""
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions into our own hands so writers can BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets agents read while ingest writes; NORMAL sync survives a killed process.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred transaction that reads and then writes cannot wait for the write lock
        # (SQLite answers "database is locked" at once); IMMEDIATE queues for it instead.
        # Agents' reads stay deferred: with WAL they never wait for, nor hold up, a writer.
        immediate = conn.get_execution_options().get(_WRITES, writes)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_database(
    url: str,
    *,
    ingest_pool_size: int = 4,
    api_pool_size: int = 5,
    api_statement_timeout_s: float = 10.0,
) -> Database:
    """Create the engines for `url` (an SQLAlchemy async URL)."""
    if url.startswith("sqlite"):
        return Database(url=url, ingest=_sqlite_engine(url, writes=True),
                        api=_sqlite_engine(url, writes=False),
                        _sqlite_writer=asyncio.Lock())
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    ingest = create_async_engine(
        url, pool_size=ingest_pool_size, max_overflow=0, pool_pre_ping=False,
        # Batch statements differ by the length of their IN and VALUES lists; a larger cache
        # keeps each shape prepared instead of parsing and planning it again.
        connect_args={"prepared_statement_cache_size": 2048},
    )
    api = create_async_engine(
        url,
        pool_size=api_pool_size,
        max_overflow=api_pool_size,
        pool_timeout=api_statement_timeout_s,
        connect_args={
            "server_settings": {"statement_timeout": str(int(api_statement_timeout_s * 1000))}
        },
    )
    return Database(url=url, ingest=ingest, api=api)
