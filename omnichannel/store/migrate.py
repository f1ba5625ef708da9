"""Schema migrations (alembic), applied by `omnichannel db upgrade` and at start-up."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: Arbitrary key of the PostgreSQL advisory lock that serialises concurrent upgrades.
_UPGRADE_LOCK = 0x6F6D6E69


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: sa.Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Several workers starting together must not race to create the same tables.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
    command.upgrade(alembic_config(connection), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()
