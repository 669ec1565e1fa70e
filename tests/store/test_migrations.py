"""Schema management on SQLite and PostgreSQL: fresh at head, migrations walk to the same schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from triage.store.database import Database, _alembic_config
from triage.store.schema import Base, utcnow


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


def test_0008_keeps_copies_an_earlier_build_stored_twice_and_reads_post_kinds(
    db_url: str,
) -> None:
    """A database an earlier build wrote: one mail stored from two sources (the race), posts
    whose kind is only in their JSON, a quarantined post filed under "social"."""
    db = Database(db_url)
    with db.engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0007")
        rows = [
            (1, "support", "k1", "email", "classified", b"mail"),
            (2, "billing", "k1", "email", "classified", b"mail"),  # the race's second copy
            (3, "billing", "k2", "email", "quarantined", b"junk"),
            (4, "support", "k2", "email", "classified", b"mail"),  # not a copy of a request
            (5, "x-support", "k3", "x", "classified", b'{"channel": "x", "kind": "dm"}'),
            (6, "tg", "k4", "social", "quarantined", b'{"channel": "telegram", "kind": "dm"'),
            (7, "tg", "k5", "social", "quarantined", b'{"channel": "telegram", "kind": "dm"}'),
        ]
        for id_, source, key, channel, status, raw in rows:
            connection.execute(
                text(
                    "INSERT INTO messages (id, source, source_id, content_key, channel, subject,"
                    " body, text, language, received_at, size, truncated, warnings, status,"
                    " routing, raw, created_at) VALUES (:id, :source, :sid, :key, :channel, '',"
                    " '', '', 'und', :now, 0, false, '[]', :status, 'forwarded to billing',"
                    " :raw, :now)"
                ),
                {"id": id_, "source": source, "sid": f"{source}:{id_}", "key": key,
                 "channel": channel, "status": status, "raw": raw, "now": utcnow()},
            )  # fmt: skip
        command.upgrade(_alembic_config(connection), "head")
        after = connection.execute(
            text("SELECT id, status, routing, channel, post_kind FROM messages ORDER BY id")
        ).all()
    db.dispose()
    assert [tuple(row) for row in after] == [
        (1, "classified", "forwarded to billing", "email", None),
        (2, "duplicate", "a copy of message 1, stored twice by an earlier build", "email", None),
        (3, "quarantined", "forwarded to billing", "email", None),
        (4, "classified", "forwarded to billing", "email", None),
        (5, "classified", "forwarded to billing", "x", "dm"),
        (6, "quarantined", "forwarded to billing", "social", None),  # not JSON: left as it was
        (7, "quarantined", "forwarded to billing", "telegram", "dm"),
    ]
