"""Bulk writes of one batch into the history store: a few statements per batch, never one per
message, so ingest keeps up with what an IMAP server can stream.

Identities and threads are inserted with ON CONFLICT DO NOTHING and read back, so several workers
sharing one PostgreSQL database can record the same new customer at once without failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Insert,
    Table,
    and_,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triage.store.schema import (
    Classification,
    Conversation,
    Customer,
    Forward,
    Message,
    utcnow,
)

Identity = tuple[str, str]
"""(channel, address) of a customer."""


def _insert_ignoring_conflicts(session: Session, table: Table) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


def _insert_new(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], *columns: Any
) -> list[tuple[Any, ...]]:
    """Insert ``rows``, skipping those another worker inserted meanwhile; ``columns`` of the
    rows inserted here."""
    statement = _insert_ignoring_conflicts(session, table).returning(*columns)
    return [tuple(row) for row in session.connection().execute(statement, rows)]


def is_one_of(identities: Iterable[Identity]) -> ColumnElement[bool]:
    """A condition on ``Customer`` matching these identities, one ``channel = ? AND address
    IN (...)`` per channel: an index search on both databases, where SQLite answers a row-value
    ``(channel, address) IN (...)`` by scanning every customer."""
    by_channel: dict[str, list[str]] = {}
    for channel, address in identities:
        by_channel.setdefault(channel, []).append(address)
    return or_(
        false(),  # matches nothing when there are no identities
        *(
            and_(Customer.channel == channel, Customer.address.in_(addresses))
            for channel, addresses in by_channel.items()
        ),
    )


def customer_ids(session: Session, names: Mapping[Identity, str]) -> dict[Identity, int]:
    """The id of every identity in ``names`` (identity -> display name), creating missing ones
    (their ids come back from the INSERT: no second read unless another worker raced us)."""
    if not names:
        return {}
    wanted = list(names)

    def known() -> dict[Identity, int]:
        rows = session.execute(
            select(Customer.channel, Customer.address, Customer.id).where(is_one_of(wanted))
        )
        return {(channel, address): id_ for channel, address, id_ in rows}

    found = known()
    missing = [
        {"channel": c, "address": a, "display_name": names[(c, a)][:255]}
        for c, a in wanted
        if (c, a) not in found
    ]
    if missing:
        inserted = _insert_new(
            session, Customer.table(), missing, Customer.channel, Customer.address, Customer.id
        )
        found.update({(channel, address): id_ for channel, address, id_ in inserted})
        if len(found) < len(wanted):  # another worker inserted some meanwhile
            found = known()
    return found


def conversation_ids(
    session: Session, threads: Mapping[str, tuple[int, str, datetime]]
) -> dict[str, int]:
    """The id of every thread key in ``threads`` (key -> customer id, subject, time of the
    message), creating missing threads and moving ``last_message_at`` forward."""
    if not threads:
        return {}
    keys = list(threads)

    def known() -> dict[str, tuple[int, datetime]]:
        rows = session.execute(
            select(Conversation.thread_key, Conversation.id, Conversation.last_message_at).where(
                Conversation.thread_key.in_(keys)
            )
        )
        return {key: (id_, last) for key, id_, last in rows}

    found = known()
    missing = [
        {
            "thread_key": key,
            "customer_id": customer,
            "subject": subject,
            "started_at": at,
            "last_message_at": at,
        }
        for key, (customer, subject, at) in threads.items()
        if key not in found
    ]
    if missing:
        columns = (Conversation.thread_key, Conversation.id, Conversation.last_message_at)
        inserted = _insert_new(session, Conversation.table(), missing, *columns)
        found.update({key: (id_, last) for key, id_, last in inserted})
        if len(found) < len(keys):  # another worker inserted some meanwhile
            found = known()
    later = [
        {"conversation": found[key][0], "at": at}
        for key, (_, _, at) in threads.items()
        if at > found[key][1]
    ]
    if later:
        session.connection().execute(
            update(Conversation.table())
            .where(Conversation.table().c.id == bindparam("conversation"))
            .values(last_message_at=bindparam("at")),
            later,
        )
    return {key: id_ for key, (id_, _) in found.items()}


def insert_messages(session: Session, rows: Sequence[dict[str, Any]]) -> list[int | None]:
    """Insert messages in one statement; returns their ids in the order of ``rows``, None for
    a row the database refused as a copy of a request stored meanwhile (another poller of
    another source committed the same mail first: it is a duplicate, not an error)."""
    if not rows:
        return []
    table = Message.table()
    if session.get_bind().dialect.name == "postgresql":
        # Ids drawn from the sequence first, then one pipelined executemany: a multi-row
        # INSERT ... RETURNING is a new SQL text per batch size, which psycopg parses anew.
        # A row that waits on another transaction's copy is skipped once that one commits.
        sequence = func.pg_get_serial_sequence(table.name, "id")
        ids = list(
            session.scalars(
                select(func.nextval(sequence)).select_from(func.generate_series(1, len(rows)))
            )
        )
        session.connection().execute(
            _insert_ignoring_conflicts(session, table),
            [{**row, "id": id_} for row, id_ in zip(rows, ids, strict=True)],
        )
        kept = set(session.scalars(select(table.c.id).where(table.c.id.in_(ids))))
        return [id_ if id_ in kept else None for id_ in ids]
    # RETURNING rows come in no promised order, and asking SQLAlchemy to sort them makes it send
    # one INSERT per row; so the ids are matched back by each row's unique (source, content_key).
    statement = _insert_ignoring_conflicts(session, table).returning(
        table.c.id, table.c.source, table.c.content_key
    )
    result = session.connection().execute(statement, rows)
    new_ids = {(source, key): id_ for id_, source, key in result}
    return [new_ids.pop((row["source"], row["content_key"]), None) for row in rows]


_LABEL_COLUMNS = ("message_id", "axis", "label", "confidence", "model_version")


def _unnest_insert(table: Table, names: Sequence[str]) -> Insert:
    """INSERT INTO table (names) SELECT * FROM unnest(:name, ...): one array per column."""
    arrays = func.unnest(*(bindparam(name, type_=ARRAY(table.c[name].type)) for name in names))
    rows = arrays.table_valued(*names).render_derived()
    return insert(table).from_select(list(names), select(*(rows.c[name] for name in names)))


_INSERT_LABELS = _unnest_insert(Classification.table(), (*_LABEL_COLUMNS, "created_at"))


def insert_classifications(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Labels, three or more a message. On PostgreSQL they go as one array per column: a
    pipelined executemany handles each row's reply in Python, and cost the polling process more
    than all its other statements."""
    if session.get_bind().dialect.name != "postgresql":
        _insert_many(session, Classification.table(), rows)
    elif rows:
        columns = {name: [row[name] for row in rows] for name in _LABEL_COLUMNS}
        session.connection().execute(
            _INSERT_LABELS, {**columns, "created_at": [utcnow()] * len(rows)}
        )


def insert_forwards(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _insert_many(session, Forward.table(), rows)


def _insert_many(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany at the Core level: no ORM bookkeeping for rows nobody reads back."""
    if rows:
        session.connection().execute(insert(table), list(rows))


def forwards_since(session: Session, customers: Sequence[int], since: datetime) -> dict[int, int]:
    """Forwards queued per customer since ``since`` (the loop guard's count)."""
    if not customers:
        return {}
    rows = session.execute(
        select(Message.customer_id, func.count())
        .join(Forward, Forward.message_id == Message.id)
        .where(Message.customer_id.in_(set(customers)), Forward.created_at > since)
        .group_by(Message.customer_id)
    )
    return {customer: count for customer, count in rows if customer is not None}
