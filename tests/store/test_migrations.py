"""Schema management on SQLite and PostgreSQL: fresh at head, migrations walk to the same schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from triage.store.database import Database, _alembic_config
from triage.store.schema import Base


def test_fresh_database_is_created_at_head(db_url: str) -> None:
    db = Database(db_url)
    assert db.upgrade().startswith("created a new database at revision")
    assert db.is_current()
    assert db.upgrade().startswith("database is up to date")
    db.dispose()


def test_walking_every_revision_gives_the_models_schema(db_url: str) -> None:
    db = Database(db_url)
    with db.engine.begin() as connection:
        config = _alembic_config(connection)
        revisions = list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))
        assert revisions, "no migrations found"
        command.upgrade(config, "head")
        for revision in revisions:  # newest first: down to base, then up again
            command.downgrade(config, revision.down_revision or "base")
        command.upgrade(config, "head")
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert db.is_current()
    db.dispose()
