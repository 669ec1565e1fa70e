"""Bulk writes of the history, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

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
