"""Shared fixtures: every store test runs on SQLite and, when configured, on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from omnichannel.store.database import Database, create_database
from omnichannel.store.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("OMNICHANNEL_TEST_DATABASE_URL")
BROKER_URL = os.environ.get("OMNICHANNEL_TEST_BROKER_URL")


def _pg_dsn(url: str, database: str | None = None) -> str:
    """A plain asyncpg DSN from an SQLAlchemy-style URL, optionally for another database."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    if database is not None:
        dsn = dsn.rsplit("/", 1)[0] + "/" + database
    return dsn


_template: str | None = None


async def _admin(sql: str) -> None:
    """Run one statement on the PostgreSQL server's maintenance database."""
    assert PG_URL
    conn = await asyncpg.connect(_pg_dsn(PG_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_template() -> str:
    """A migrated database that each test's database is copied from (fast, ~50 ms)."""
    global _template
    if _template is None:
        assert PG_URL
        name = f"omnichannel_tmpl_{uuid.uuid4().hex[:8]}"
        await _admin(f'CREATE DATABASE "{name}"')
        await upgrade(_pg_dsn(PG_URL, name))
        _template = name
    return _template


async def new_database_url(kind: str, tmp_path: Path) -> str:
    """A fresh, migrated database of `kind` (`sqlite` or `postgresql`) for one test."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / f'test-{uuid.uuid4().hex[:6]}.db'}"
        await upgrade(url)
        return url
    if not PG_URL:
        pytest.skip("PostgreSQL not configured: set OMNICHANNEL_TEST_DATABASE_URL")
    template = await _pg_template()
    name = f"omnichannel_test_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _pg_dsn(PG_URL, name).replace("postgresql://", "postgresql+asyncpg://")


async def drop_database_url(url: str) -> None:
    """Drop a PostgreSQL test database (SQLite files go with tmp_path)."""
    if url.startswith("postgresql") and PG_URL:
        await _admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh migrated database URL, once per store kind."""
    url = await new_database_url(request.param, tmp_path)
    yield url
    await drop_database_url(url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The engines of a fresh migrated database."""
    database = create_database(database_url)
    yield database
    await database.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the PostgreSQL template database made for this run."""
    if _template and PG_URL:
        import asyncio

        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_template}" WITH (FORCE)'))
