"""A batch's senders' recent messages and their product areas, for the repeat-contact signal.

One query per batch, never one per message: every recent message of every sender in the batch
(and of the identities linked to them, so a customer writing on email and X counts once).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from triage.store.schema import Classification, Customer, Message

Identity = tuple[str, str]
"""(channel, address) of a customer."""


def recent_areas(
    session: Session, identities: Collection[Identity], since: datetime, per_area: int
) -> dict[Identity, list[tuple[str, datetime]]]:
    """(area label, received at) of the latest ``per_area`` stored messages about each area
    since ``since``, per sender identity: bounded, however busy a sender is.

    A message classified by several model versions counts once, with the latest label.
    """
    if not identities:
        return {}
    sender, author = aliased(Customer), aliased(Customer)
    labelled = (
        select(
            sender.channel,
            sender.address,
            Classification.label,
            Message.received_at,
            func.row_number()
            .over(
                partition_by=(sender.channel, sender.address, Message.id),
                order_by=Classification.id.desc(),
            )
            .label("newest_label"),
        )
        .select_from(sender)
        .join(
            author,
            or_(
                author.id == sender.id,
                and_(sender.person_id.is_not(None), author.person_id == sender.person_id),
            ),
        )
        .join(Message, Message.customer_id == author.id)
        .join(
            Classification,
            and_(Classification.message_id == Message.id, Classification.axis == "area"),
        )
        .where(
            tuple_(sender.channel, sender.address).in_(list(identities)),
            Message.received_at >= since,
        )
        .subquery()
    )
    latest = (
        select(
            labelled.c.channel,
            labelled.c.address,
            labelled.c.label,
            labelled.c.received_at,
            func.row_number()
            .over(
                partition_by=(labelled.c.channel, labelled.c.address, labelled.c.label),
                order_by=labelled.c.received_at.desc(),
            )
            .label("recency"),
        )
        .where(labelled.c.newest_label == 1)
        .subquery()
    )
    rows = session.execute(
        select(latest.c.channel, latest.c.address, latest.c.label, latest.c.received_at).where(
            latest.c.recency <= per_area
        )
    )
    found: dict[Identity, list[tuple[str, datetime]]] = {}
    for channel, address, label, received_at in rows:
        found.setdefault((channel, address), []).append((label, received_at))
    return found
