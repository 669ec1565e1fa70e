"""A batch's senders' recent messages and their product areas, for the repeat-contact signal.

One query per batch, never one per message: every recent message of every sender in the batch
(and of the identities linked to them, so a customer writing on email and X counts once).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from triage.store.schema import Classification, Customer, Message

Identity = tuple[str, str]
"""(channel, address) of a customer."""


def recent_areas(
    session: Session, identities: Collection[Identity], since: datetime
) -> dict[Identity, list[tuple[str, datetime]]]:
    """(area label, received at) of each stored message since ``since``, per sender identity.

    A message classified by several model versions counts once, with the latest label.
    """
    if not identities:
        return {}
    sender, author = aliased(Customer), aliased(Customer)
    rows = session.execute(
        select(
            sender.channel,
            sender.address,
            Message.id,
            Classification.label,
            Message.received_at,
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
        .order_by(Classification.id)
    )
    latest: dict[tuple[Identity, int], tuple[str, datetime]] = {}
    for channel, address, message_id, label, received_at in rows:
        latest[((channel, address), message_id)] = (label, received_at)
    found: dict[Identity, list[tuple[str, datetime]]] = {}
    for (identity, _), value in latest.items():
        found.setdefault(identity, []).append(value)
    return found
