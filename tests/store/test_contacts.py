"""The repeat-contact reads: per sender and area, linked identities together, bounded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, update

from tests import seed
from triage.store import history
from triage.store.contacts import recent_areas
from triage.store.database import Database
from triage.store.schema import Classification, Customer, utcnow


def test_recent_areas_per_sender_with_linked_identities_latest_label_and_cap(
    db: Database,
) -> None:
    now = utcnow()
    at = [now - timedelta(hours=hours) for hours in range(10)]
    seed.message(db, sender="olena@example.com", received_at=at[1], labels={"area": "billing"})
    relabelled = seed.message(
        db, sender="olena@example.com", received_at=at[2], labels={"area": "billing"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[3], labels={"area": "delivery"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[4], labels={"area": "delivery"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[5], labels={"area": "delivery"}
    )
    seed.message(db, sender="ivan@example.com", received_at=at[1], labels={"area": "billing"})
    seed.message(db, sender="ivan@example.com", received_at=now - timedelta(days=60),
                 labels={"area": "billing"})  # fmt: skip
    seed.message(db, sender="taras@example.com", received_at=at[1])  # never classified
    with db.transaction() as session:
        # A newer model version moved one of Olena's messages to delivery.
        session.add(Classification(message_id=relabelled, axis="area", label="delivery",
                                   confidence=0.8, model_version="u"))  # fmt: skip
        session.execute(  # both of Olena's addresses are one person
            update(Customer)
            .where(Customer.address.in_(["olena@example.com", "olena.work@example.com"]))
            .values(person_id=1)
        )
    senders = [("email", "olena@example.com"), ("email", "ivan@example.com"),
               ("email", "taras@example.com"), ("email", "nobody@example.com")]  # fmt: skip

    with db.session() as session:
        found = recent_areas(session, senders, now - timedelta(days=30), per_area=2)

    assert sorted(found) == [("email", "ivan@example.com"), ("email", "olena@example.com")]
    assert found[("email", "ivan@example.com")] == [("billing", at[1])]  # the old one is out
    # Olena: her billing message, and the latest two delivery ones of all her identities
    # (the relabelled one counts once, as delivery).
    assert sorted(found[("email", "olena@example.com")], key=lambda row: row[1]) == [
        ("delivery", at[3]),
        ("delivery", at[2]),
        ("billing", at[1]),
    ]


def test_per_batch_history_reads_search_indexes_never_scan(tmp_path: Path) -> None:
    """SQLite's plans for the reads each batch makes: every table is searched through an index,
    so their cost follows the batch, not the size of the history (a row-value IN over
    customers, or a join led by classifications, scanned them all)."""
    db = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    db.upgrade()
    for n in range(3):
        seed.message(db, sender=f"c{n}@example.com", labels={"area": "billing"})
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    identities = [("email", "c0@example.com"), ("email", "c1@example.com"), ("x", "@c2")]
    with db.session() as session:
        history.customer_ids(session, dict.fromkeys(identities[:2], ""))
        recent_areas(session, identities, utcnow() - timedelta(days=30), per_area=20)
    event.remove(db.engine, "before_cursor_execute", capture)

    assert len(statements) >= 2
    with db.engine.connect() as connection:
        for statement, parameters in statements:
            plan = [row[3] for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters
            )]  # fmt: skip
            scans = [step for step in plan if step.startswith("SCAN ") and "subquery" not in step
                     and not step.startswith("SCAN anon")]  # fmt: skip
            assert scans == [], (statement, plan)
    db.dispose()
