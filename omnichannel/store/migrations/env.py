"""Alembic environment: runs on the connection handed over by `omnichannel.store.migrate`."""

from __future__ import annotations

from alembic import context

from omnichannel.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode does that for us.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
