"""Alembic environment: migrations run on the connection dicomvault passes in."""

from __future__ import annotations

from alembic import context

from dicomvault.index.schema import METADATA

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "dicomvault migrations run from 'dicomvault serve', which passes the database connection"
    )

context.configure(
    connection=connection,
    target_metadata=METADATA,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
