"""Alembic environment: runs on the connection that ``Database.upgrade`` hands in."""

from __future__ import annotations

from alembic import context

from triage.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
