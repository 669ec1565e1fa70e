"""Seeding the store for the operator-view tests (status, metrics, the page): rows written
directly, as the pipeline would have left them, so each test states exactly what it expects."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timedelta
from typing import Any

from triage.decide.route import Disposition, Route, reason, route_columns
from triage.store.database import Database
from triage.store.schema import (
    Alert,
    Classification,
    Customer,
    Forward,
    Message,
    SourceState,
    utcnow,
)

_ids = itertools.count(1)


def message(
    db: Database,
    *,
    source: str = "box",
    subject: str = "subject",
    sender: str = "olena@example.com",
    received_at: datetime | None = None,
    labels: dict[str, str] | None = None,
    route: Route | None = None,
    status: str = "stored",
    channel: str = "email",
    post_kind: str | None = None,
) -> int:
    """One stored message with a classification per axis in ``labels``; returns its id."""
    n = next(_ids)
    with db.transaction() as session:
        customer = session.query(Customer).filter_by(channel=channel, address=sender).first()
        if customer is None:
            customer = Customer(channel=channel, address=sender)
            session.add(customer)
            session.flush()
        row = Message(
            source=source,
            source_id=f"{source}:{n}",
            content_key=hashlib.sha256(f"{source}:{n}".encode()).hexdigest(),
            customer_id=customer.id,
            subject=subject,
            text="text",
            received_at=received_at or utcnow(),
            status=status,
            **(route_columns(route) if route else {}),
            raw=b"raw",
            channel=channel,
            post_kind=post_kind,
        )
        session.add(row)
        session.flush()
        for axis, label in (labels or {}).items():
            session.add(
                Classification(
                    message_id=row.id, axis=axis, label=label, confidence=0.9, model_version="t"
                )
            )
        return row.id


def review_route(label: str = "billing", confidence: float = 0.31) -> Route:
    """A route to review for low confidence, as the router decides it."""
    why = reason("low_confidence", label=label, confidence=confidence)
    return Route(Disposition.REVIEW, (why,), "review")


def forward(
    db: Database, message_id: int, department: str, *, status: str = "pending", attempts: int = 0
) -> None:
    with db.transaction() as session:
        session.add(
            Forward(
                message_id=message_id,
                department=department,
                to_addrs=[f"{department}@dept.test"],
                status=status,
                attempts=attempts,
                rfc_message_id=f"<{next(_ids)}@triage.test>",
                last_error="550 mailbox unavailable" if status == "failed" or attempts else None,
            )
        )


def source_state(
    db: Database,
    name: str,
    *,
    ago: timedelta | None = timedelta(seconds=30),
    streak: int = 0,
    error: str | None = None,
) -> None:
    """The source's health as the pipeline records it (``ago=None``: never succeeded)."""
    now = utcnow()
    with db.transaction() as session:
        state = session.get(SourceState, name) or SourceState(source=name)
        state.last_success_at = None if ago is None else now - ago
        state.error_streak, state.last_error, state.updated_at = streak, error, now
        session.merge(state)


def alert(db: Database, subject: str, *, error: str | None = None, sent: bool = False) -> None:
    """An alert as the alerter records it: mailed, or not mailed because of ``error``."""
    with db.transaction() as session:
        session.add(
            Alert(subject=subject, body=f"{subject}: the details", error=error,
                  sent_at=utcnow() if sent else None)
        )  # fmt: skip


def settings(tmp_path: Any, **sections: Any) -> dict[str, Any]:
    """A config document with one Maildir source ``box`` (web off unless a test turns it on)."""
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "sources": [{"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}],
        "departments": [
            {"name": "billing", "email": "billing@dept.test", "areas": ["billing"]},
            {"name": "logistics", "email": "logistics@dept.test", "areas": ["delivery"]},
            {"name": "review", "email": "review@dept.test"},
        ],
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "alerts": {"after_failures": 3, "stale_after_minutes": 60},
        "web": {"enabled": False},
    }
    data.update(sections)
    return data
