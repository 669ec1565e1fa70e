"""Schema management on SQLite and PostgreSQL: fresh at head, migrations walk to the same schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from triage.store import queries
from triage.store.database import Database, _alembic_config
from triage.store.schema import Base, Forward, Message, utcnow


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
        command.upgrade(_alembic_config(connection), "0008")
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


WORDINGS = [  # (status, what an earlier build wrote, disposition, the sentence rendered again)
    ("classified", "forwarded to billing (owns billing)", "forwarded", None),
    ("classified", ("forwarded to logistics (owns delivery), escalated as urgent. Urgent because: "
     'asks for urgency ("asap"); VIP customer (ceo@x.test)'), "forwarded", None),
    ("classified", "forwarded to review (rule feedback/*)", "forwarded", None),
    ("classified", "sent to review (low confidence: complaint 0.31)", "review", None),
    ("classified", "sent to review (low confidence: kind complaint 0.31)", "review",
     "sent to review (low confidence: complaint 0.31)"),
    ("classified", "sent to review (out of scope: best guess billing 0.42)", "review", None),
    ("stored", ("sent to review (no active model), escalated as urgent. Urgent because: VIP "
     "customer (ceo@x.test)"), "review", None),
    ("classified", "sent to review (no department owns area 'returns')", "review", None),
    ("classified", ("sent to review (message of 30000000 bytes is over the size limit; headers "
     "kept)"), "review", None),
    ("classified", "sent to review (the body could not be read: nested (3 levels))", "review",
     None),
    ("classified", "sent to review (the model has no 'kind' axis)", "review", None),
    ("classified", "not forwarded: question is not a forwarded kind", "recorded", None),
    ("classified", "not forwarded: machine-sent (Auto-Submitted: auto-replied)", "machine", None),
    ("classified", "not forwarded: over 10 forwards from this sender in an hour", "capped", None),
    ("classified", ("not forwarded: low confidence: complaint 0.31; no review department "
     "configured"), "recorded", None),
    ("classified", "forwarded to logistics (owns delivery); corrected by finance@dept.test",
     "forwarded", None),
    ("classified", ("sent to review (finance@dept.test says: not ours); corrected by "
     "finance@dept.test"), "review", None),
    ("reply", "ignored: no command found", "ignored", None),
    ("reply", "ignored: x@y.test is not a department", "ignored", None),
    ("reply", ("correction of message 3: area = delivery (the model said billing); re-routed to "
     "logistics"), "correction", None),
    ("duplicate", "a copy of message 1, stored twice by an earlier build", "duplicate", None),
    ("classified", "something no build ever wrote", "unknown", None),
]  # fmt: skip


def test_0009_reads_every_routing_sentence_earlier_builds_wrote(db_url: str) -> None:
    """Each sentence becomes a disposition with reasons as data, and the sentence rendered from
    that data is the one the earlier build wrote (an older wording, in today's words)."""
    db = Database(db_url)
    with db.engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0008")
        for id_, (status, routing, _, _) in enumerate(WORDINGS, start=1):
            _insert_message(connection, id_, status, routing)
        connection.execute(
            text(
                "INSERT INTO forwards (id, message_id, department, to_addrs, cc_addrs, urgent,"
                " reason, rfc_message_id, status, attempts, next_attempt_at, created_at)"
                " VALUES (1, 2, 'logistics', '[]', '[]', true, :reason, '<f1@t>', 'sent', 1,"
                " :now, :now)"
            ),
            {"reason": WORDINGS[1][1], "now": utcnow()},
        )
        command.upgrade(_alembic_config(connection), "head")
    with db.session() as session:
        for id_, (_, routing, disposition, again) in enumerate(WORDINGS, start=1):
            assert session.get(Message, id_).disposition == disposition, routing
            assert queries.why(session, id_) == (again or routing)
        forward = session.get(Forward, 1)
        assert (forward.disposition, forward.reasons) == (
            "forwarded", [{"code": "owns_area", "area": "delivery"}],
        )  # fmt: skip
        assert [r["text"] for r in forward.urgent_reasons] == [
            'asks for urgency ("asap")', "VIP customer (ceo@x.test)",
        ]  # fmt: skip
    db.dispose()


def _insert_message(connection: Connection, id_: int, status: str, routing: str) -> None:
    connection.execute(
        text(
            "INSERT INTO messages (id, source, source_id, content_key, channel, subject, body,"
            " text, language, received_at, size, truncated, warnings, status, routing, raw,"
            " created_at) VALUES (:id, 's', :sid, :key, 'email', '', '', '', 'und', :now, 0,"
            " false, '[]', :status, :routing, :raw, :now)"
        ),
        {"id": id_, "sid": f"s:{id_}", "key": f"k{id_}", "status": status, "routing": routing,
         "raw": b"x", "now": utcnow()},
    )  # fmt: skip
