"""The read model: the questions every view and command asks of the store, asked in one place.

The latest model label and the latest human label of a message, the review queue, why a message
was routed as it was. Each answer reads columns (never whole rows with their raw bytes) in a few
indexed queries, and the views (status, metrics, the page, the CLI, forwards, exports) call
these instead of writing their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from triage.decide.route import Disposition, explain, reasons_of, signals_of, urgent_line
from triage.store.schema import Alert, Classification, Customer, Label, Message, utcnow


class Guess(NamedTuple):
    """The model's latest answer on one axis."""

    label: str
    confidence: float
    version: str


def model_labels(session: Session, message_ids: Sequence[int]) -> dict[int, dict[str, Guess]]:
    """Message id to axis to the newest label the model stored for it (one query)."""
    found: dict[int, dict[str, Guess]] = {}
    if not message_ids:
        return found
    rows = session.execute(
        select(
            Classification.message_id,
            Classification.axis,
            Classification.label,
            Classification.confidence,
            Classification.model_version,
        )
        .where(Classification.message_id.in_(list(message_ids)))
        .order_by(Classification.id)
    )
    for message_id, axis, label, confidence, version in rows:
        found.setdefault(message_id, {})[axis] = Guess(label, confidence, version)
    return found


def human_labels(
    session: Session, message_ids: Sequence[int] | None = None
) -> dict[int, dict[str, str]]:
    """Message id to axis to its newest human label (every labelled message when ids is None)."""
    query = select(Label.message_id, Label.axis, Label.label).order_by(Label.id)
    if message_ids is not None:
        if not message_ids:
            return {}
        query = query.where(Label.message_id.in_(list(message_ids)))
    found: dict[int, dict[str, str]] = {}
    for message_id, axis, label in session.execute(query):
        found.setdefault(message_id, {})[axis] = label
    return found


def current_labels(session: Session, message_id: int) -> dict[str, str]:
    """A message's labels now: the model's latest guesses, overridden by human labels."""
    labels = {
        axis: g.label for axis, g in model_labels(session, [message_id]).get(message_id, {}).items()
    }
    labels.update(human_labels(session, [message_id]).get(message_id, {}))
    return labels


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A message in the review queue: who, what, why, the model's guesses, the labels so far."""

    id: int
    received_at: datetime
    sender: str
    subject: str
    routing: str  # the route, in a sentence
    why: str  # why it went to review
    guesses: dict[str, Guess]
    labels: dict[str, str]


IN_REVIEW = Message.disposition == Disposition.REVIEW.value
"""The review queue's condition (indexed): what the router sent to a person."""


def review_queue(
    session: Session, *, unlabelled_only: bool = False, limit: int = 100
) -> list[ReviewRow]:
    """Messages routed to review, newest first (at most ``limit``, counted in SQL)."""
    query = (
        select(
            Message.id, Message.received_at, Customer.address, Message.subject,
            Message.disposition, Message.department, Message.reasons, Message.urgent,
        )
        .outerjoin(Customer, Customer.id == Message.customer_id)
        .where(IN_REVIEW)
        .order_by(Message.received_at.desc(), Message.id.desc())
        .limit(limit)
    )  # fmt: skip
    if unlabelled_only:
        query = query.where(~exists().where(Label.message_id == Message.id))
    rows = session.execute(query).all()
    ids = [row.id for row in rows]
    guesses, labels = model_labels(session, ids), human_labels(session, ids)
    return [
        ReviewRow(
            id=row.id,
            received_at=row.received_at,
            sender=row.address or "",
            subject=row.subject,
            routing=explain(row.disposition, row.department, reasons_of(row.reasons), row.urgent),
            why="; ".join(r.text() for r in reasons_of(row.reasons))
            + ("; urgent" if row.urgent else ""),
            guesses=guesses.get(row.id, {}),
            labels=labels.get(row.id, {}),
        )
        for row in rows
    ]


def review_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Message).where(IN_REVIEW)) or 0)


def why(session: Session, message_id: int) -> str | None:
    """Why the message was routed so, as a person reads it (with the urgency line when it is
    urgent); None when there is no such message or it was never routed."""
    row = session.execute(
        select(
            Message.disposition, Message.department, Message.reasons, Message.urgent,
            Message.urgent_reasons,
        ).where(Message.id == message_id)
    ).first()  # fmt: skip
    if row is None or row.disposition is None:
        return None
    sentence = explain(row.disposition, row.department, reasons_of(row.reasons), row.urgent)
    because = urgent_line(signals_of(row.urgent_reasons))
    return f"{sentence}. {because}" if because else sentence


def routing_of(message: Message) -> str:
    """The route of a message already loaded, in a sentence (its status when never routed)."""
    if message.disposition is None:
        return message.status
    return explain(
        message.disposition, message.department, reasons_of(message.reasons), message.urgent
    )


RETRY_ALERTS_FOR = timedelta(days=7)
"""An alert not mailed is tried again for this long (triage/deliver/alerts.py); then it is only
in the store, and no longer a problem to report."""


def unsent_alerts(session: Session) -> list[Alert]:
    """The alerts of the last days that could not be mailed, the latest first."""
    return list(
        session.scalars(
            select(Alert)
            .where(
                Alert.sent_at.is_(None),
                Alert.error.is_not(None),
                Alert.created_at > utcnow() - RETRY_ALERTS_FOR,
            )
            .order_by(Alert.id.desc())
        )
    )
