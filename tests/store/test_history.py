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


def _request(source: str, key: str, status: str = "classified") -> dict[str, object]:
    return {
        "source": source, "source_id": f"{source}:1", "content_key": key, "raw": b"x",
        "subject": "", "channel": "email", "status": status, "received_at": utcnow(),
    }  # fmt: skip


def test_one_request_per_content_key_across_sources_even_when_two_pollers_race(
    db: Database,
) -> None:
    """Poller B stores the mail poller A stores from another source, A's transaction still
    open: B's INSERT waits for A (a row lock on PostgreSQL, the write lock on SQLite), then the
    database refuses B's copy: None, not an error and not a second request."""
    answers: list[list[int | None]] = []

    def race() -> None:
        with db.transaction() as session:
            answers.append(history.insert_messages(session, [_request("billing-box", "k1")]))

    with db.transaction() as first:
        (kept,) = history.insert_messages(first, [_request("support-box", "k1")])
        racing = threading.Thread(target=race)
        racing.start()
        racing.join(0.5)
        assert racing.is_alive()  # waiting for the first poller's commit
    racing.join(30)
    assert answers == [[None]]
    with db.session() as session:
        assert session.scalars(select(Message.id)).all() == [kept]


def test_the_unique_key_binds_requests_only(db: Database) -> None:
    """Quarantined mail and department replies are not requests: a copy of them elsewhere is
    stored, and a request is stored beside them; within one source every row is unique."""
    with db.transaction() as session:
        ids = history.insert_messages(
            session,
            [
                _request("a", "k", "quarantined"),
                _request("b", "k", "reply"),
                _request("c", "k"),
                _request("d", "k"),  # a second request with the same key
                _request("a", "k"),  # the same source and key as a stored row
            ],
        )
    assert [id_ is not None for id_ in ids] == [True, True, True, False, False]
