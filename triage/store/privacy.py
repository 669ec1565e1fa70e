"""Personal data: the retention purge and erasing one customer on request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, delete, func, select, update
from sqlalchemy.orm import Session

from triage.store.database import Database
from triage.store.schema import Classification, Conversation, Customer, Forward, Message, utcnow


def purge_before(db: Database, cutoff: datetime) -> int:
    """Erase raw bytes and text of messages received before ``cutoff``; returns how many.

    Messages with a forward still waiting are kept until it is delivered or failed.
    """
    waiting = select(Forward.message_id).where(Forward.status == "pending")
    with db.transaction() as session:
        return _rows_changed(
            session,
            update(Message)
            .where(
                Message.received_at < cutoff,
                Message.purged_at.is_(None),
                Message.id.not_in(waiting),
            )
            .values(raw=b"", body="", text="", subject="", purged_at=utcnow()),
        )


@dataclass(frozen=True)
class Forgotten:
    """What ``forget`` removed, for the admin's answer to the customer."""

    identities: int
    conversations: int
    messages: int
    forwards: int


def forget(db: Database, address: str) -> Forgotten:
    """Erase every message, conversation and identity of the customer with ``address``."""
    with db.transaction() as session:
        customers = select(Customer.id).where(
            func.lower(Customer.address) == address.strip().lower()
        )
        messages = select(Message.id).where(Message.customer_id.in_(customers))
        forwards = _rows_changed(session, delete(Forward).where(Forward.message_id.in_(messages)))
        session.execute(delete(Classification).where(Classification.message_id.in_(messages)))
        removed = _rows_changed(session, delete(Message).where(Message.customer_id.in_(customers)))
        threads_of = select(Conversation.id).where(Conversation.customer_id.in_(customers))
        session.execute(  # others' messages in those threads stay, detached
            update(Message)
            .where(Message.conversation_id.in_(threads_of))
            .values(conversation_id=None)
        )
        threads = _rows_changed(
            session, delete(Conversation).where(Conversation.customer_id.in_(customers))
        )
        identities = _rows_changed(session, delete(Customer).where(Customer.id.in_(customers)))
    return Forgotten(identities, threads, removed, forwards)


def _rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount or 0
