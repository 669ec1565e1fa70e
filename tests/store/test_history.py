"""Bulk writes of the history, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from triage.store import history
from triage.store.database import Database
from triage.store.schema import Classification, Message, utcnow


def test_labels_are_stored_as_given(db: Database) -> None:
    earlier = utcnow() - timedelta(days=2)
    with db.transaction() as session:
        session.execute(insert(Message), [
            {"source": "s", "source_id": str(i), "content_key": str(i), "raw": b"x",
             "subject": "", "channel": "email", "status": "classified", "received_at": earlier}
            for i in range(2)
        ])  # fmt: skip
        first, second = session.scalars(select(Message.id).order_by(Message.id)).all()
        history.insert_classifications(session, [
            {"message_id": first, "axis": "kind", "label": "complaint", "confidence": 0.875,
             "model_version": "v1"},
            {"message_id": second, "axis": "urgency", "label": "urgent", "confidence": 1.0,
             "model_version": "v2"},
        ])  # fmt: skip
        history.insert_classifications(session, [])
    with db.session() as session:
        rows = session.execute(
            select(
                Classification.message_id, Classification.axis, Classification.label,
                Classification.confidence, Classification.model_version, Classification.created_at,
            ).order_by(Classification.id)
        ).all()  # fmt: skip
    assert [tuple(row[:5]) for row in rows] == [
        (first, "kind", "complaint", 0.875, "v1"),
        (second, "urgency", "urgent", 1.0, "v2"),
    ]
    assert all(row.created_at > earlier + timedelta(days=1) for row in rows)


@pytest.mark.live
def test_a_customer_created_by_a_racing_worker_is_found(postgres_url: str) -> None:
    """Worker B inserts the same new identity as worker A, whose transaction is still open:
    B's INSERT waits, skips it when A commits, and B still answers with A's customer."""
    db = Database(postgres_url)
    db.upgrade()
    olena = ("email", "olena@example.com")
    answers: list[dict[tuple[str, str], int]] = []
    with db.transaction() as first:
        created = history.customer_ids(first, {olena: "Olena"})
        racing = threading.Thread(target=lambda: answers.append(_customers(db, olena)))
        racing.start()
        racing.join(0.5)
        assert racing.is_alive()  # waiting on the row A has not committed
    racing.join(10)
    db.dispose()
    assert answers == [created]


def _customers(db: Database, identity: tuple[str, str]) -> dict[tuple[str, str], int]:
    with db.transaction() as session:
        return history.customer_ids(session, {identity: "Olena P."})


@pytest.mark.live
def test_a_conversation_created_by_a_racing_worker_is_found(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    with db.transaction() as session:
        customer = history.customer_ids(session, {("email", "o@example.com"): "O"})
    thread = {"email:<root@example.com>": (*customer.values(), "Refund", utcnow())}
    answers: list[dict[str, int]] = []

    def race() -> None:
        with db.transaction() as session:
            answers.append(history.conversation_ids(session, thread))

    with db.transaction() as first:
        created = history.conversation_ids(first, thread)
        racing = threading.Thread(target=race)
        racing.start()
        racing.join(0.5)
        assert racing.is_alive()
    racing.join(10)
    db.dispose()
    assert answers == [created]
