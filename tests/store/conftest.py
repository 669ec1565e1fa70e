"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from triage.store.database import Database


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database, on SQLite and on PostgreSQL (``db_url`` runs both)."""
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()
