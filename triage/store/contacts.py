"""A batch's senders' recent messages and their product areas, for the repeat-contact signal.

A few indexed queries per batch, never one per message: the senders' customer rows (and the
identities linked to them, so a customer writing on email and X counts once), then the recent
messages of those customers through the (customer, received at) index. The cost follows the
batch's senders, never the size of the history.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from triage.store.history import Identity, is_one_of
from triage.store.schema import Classification, Customer, Message


def recent_areas(
    session: Session, identities: Collection[Identity], since: datetime, per_area: int
) -> dict[Identity, list[tuple[str, datetime]]]:
    """(area label, received at) of the latest ``per_area`` stored messages about each area
    since ``since``, per sender identity: bounded, however busy a sender is.

    A message classified by several model versions counts once, with the latest label.
    """
    authors = _authors(session, identities)
    if not authors:
        return {}
    found: dict[Identity, list[tuple[str, datetime]]] = {}
    for customer, label, received_at in _latest_areas(session, list(authors), since, per_area):
        for identity in authors[customer]:
            found.setdefault(identity, []).append((label, received_at))
    # A person's linked identities each brought up to ``per_area`` per area: cap them together.
    return {identity: _cap(rows, per_area) for identity, rows in found.items()}


def _authors(session: Session, identities: Collection[Identity]) -> dict[int, list[Identity]]:
    """Customer id -> the sender identities it writes for: each sender's own row, and every
    identity linked to the same person."""
    if not identities:
        return {}
    senders = session.execute(
        select(Customer.id, Customer.channel, Customer.address, Customer.person_id).where(
            is_one_of(identities)
        )
    ).all()
    persons = {row.person_id for row in senders if row.person_id is not None}
    linked: dict[int | None, list[int]] = {}
    if persons:
        rows = session.execute(
            select(Customer.id, Customer.person_id).where(Customer.person_id.in_(persons))
        )
        for id_, person in rows:
            linked.setdefault(person, []).append(id_)
    authors: dict[int, list[Identity]] = {}
    for row in senders:
        for author in {row.id, *linked.get(row.person_id, [])}:
            authors.setdefault(author, []).append((row.channel, row.address))
    return authors


def _latest_areas(
    session: Session, customers: list[int], since: datetime, per_area: int
) -> list[tuple[int, str, datetime]]:
    """(customer, area, received at) of each customer's latest ``per_area`` messages per area."""
    labelled = (
        select(
            Message.customer_id,
            Classification.label,
            Message.received_at,
            func.row_number()
            .over(partition_by=Message.id, order_by=Classification.id.desc())
            .label("newest_label"),
        )
        .join(
            Classification,
            and_(Classification.message_id == Message.id, Classification.axis == "area"),
        )
        .where(Message.customer_id.in_(customers), Message.received_at >= since)
        .subquery()
    )
    latest = (
        select(
            labelled.c.customer_id,
            labelled.c.label,
            labelled.c.received_at,
            func.row_number()
            .over(
                partition_by=(labelled.c.customer_id, labelled.c.label),
                order_by=labelled.c.received_at.desc(),
            )
            .label("recency"),
        )
        .where(labelled.c.newest_label == 1)
        .subquery()
    )
    rows = session.execute(
        select(latest.c.customer_id, latest.c.label, latest.c.received_at).where(
            latest.c.recency <= per_area
        )
    )
    return [(customer, label, at) for customer, label, at in rows]


def _cap(rows: list[tuple[str, datetime]], per_area: int) -> list[tuple[str, datetime]]:
    """The latest ``per_area`` rows of each area."""
    kept: list[tuple[str, datetime]] = []
    counts: dict[str, int] = {}
    for label, at in sorted(rows, key=lambda row: row[1], reverse=True):
        if counts.get(label, 0) < per_area:
            counts[label] = counts.get(label, 0) + 1
            kept.append((label, at))
    return kept
