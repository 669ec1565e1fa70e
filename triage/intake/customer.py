"""The stage of customers' requests: a prepared batch becomes stored, routed messages.

In the batch's transaction: items already stored (in this source, or as a request from any
source) are counted as duplicates; items that could not be parsed or classified are quarantined
with their raw bytes; the others get their customer and thread, the facts the router decides on
(the urgency signals, the sender's recent forwards, machine mail, size and body problems), a
route, and are written with their labels and forwards in a few bulk statements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.base import Prediction
from classifiers.model import Classifier
from connectors.base import RawItem
from triage.config import Config
from triage.decide import urgency
from triage.decide.route import Route, route_columns
from triage.decide.router import AREA, URGENCY, MessageFacts, Router
from triage.deliver.outbox import outbox_row
from triage.errors import check_named
from triage.faults import crash_point
from triage.intake.normalize import ParsedEmail, lost_body
from triage.intake.prepare import Prepared, classification_text, prepare
from triage.intake.results import Outcome
from triage.store import history
from triage.store.contacts import recent_areas
from triage.store.database import Database
from triage.store.history import Identity
from triage.store.schema import INTAKE_STATUSES, Message, channel_key, utcnow

log = logging.getLogger(__name__)


@dataclass
class _Parsed:
    item: RawItem
    key: str
    raw_key: str
    email: ParsedEmail | None = None
    error: str | None = None
    predictions: dict[str, Prediction] | None = None
    route: Route | None = None

    @classmethod
    def of(cls, item: RawItem, prepared: Prepared) -> _Parsed:
        return cls(
            item, prepared.key, prepared.raw_key, prepared.email, prepared.error,
            prepared.predictions,
        )  # fmt: skip


class CustomerIntake:
    """Records batches of customers' requests; the default stage of every source."""

    prepares = True  # its items are parsed and classified in the parsing processes first

    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router

    def record(
        self,
        session: Session,
        source: str,
        items: list[RawItem],
        prepared: list[Prepared] | None,
        model: Classifier | None,
    ) -> list[Outcome]:
        """Route and store prepared ``items`` in the caller's transaction."""
        assert prepared is not None
        parsed = [_Parsed.of(item, p) for item, p in zip(items, prepared, strict=True)]
        fresh, outcomes = _drop_known(session, source, parsed)
        crash_point("classified")
        good = []
        for entry in fresh:
            if entry.email is None or entry.error:
                channel = self.config.channel_of(source, entry.item.format)
                outcomes.append(_quarantine(session, entry, entry.error or "not parsed", channel))
            else:
                good.append(entry)
        outcomes.extend(self._store(session, good, model))
        return outcomes

    def committed(self) -> None:
        """Nothing is owed once a batch of requests is committed: its forwards are queued."""

    def retry_quarantined(
        self, db: Database, message_ids: Sequence[int] | None, model: Classifier | None
    ) -> list[Outcome]:
        """Process quarantined messages again (after a fix); None retries all of them, and
        ids that name no quarantined message refuse the whole call.

        The old rows are replaced in the same transaction, so a crash leaves them quarantined.
        """
        outcomes: list[Outcome] = []
        with db.transaction() as session:
            query = select(Message).where(Message.status == "quarantined").order_by(Message.id)
            if message_ids is not None:
                query = query.where(Message.id.in_(message_ids))
            rows = session.scalars(query).all()
            if message_ids is not None:
                check_named(
                    message_ids,
                    (r.id for r in rows),
                    "quarantined message",
                    "triage quarantine list",
                )
            for row in rows:
                item = RawItem(
                    row.source,
                    row.source_id,
                    row.raw,
                    row.received_at,
                    format="rfc822" if row.channel == "email" else "post",
                    size=row.size,
                    truncated=row.truncated,
                )
                session.delete(row)
                session.flush()
                outcomes.extend(
                    self.record(session, row.source, [item], prepare([item], model), model)
                )
        return outcomes

    def _store(
        self, session: Session, entries: list[_Parsed], model: Classifier | None
    ) -> list[Outcome]:
        """Write a batch of routed messages, their labels and forwards in a few statements."""
        if not entries:
            return []
        customers = history.customer_ids(session, _identities(entries))
        threads = history.conversation_ids(session, _threads(entries, customers))
        self._decide(session, entries, customers)
        ids = history.insert_messages(
            session, [_message_row(entry, customers, threads) for entry in entries]
        )
        stored = [(id_, entry) for id_, entry in zip(ids, entries, strict=True) if id_ is not None]
        version = model.version if model is not None else None
        history.insert_classifications(
            session,
            [
                {"message_id": id_, "axis": axis, "label": p.label,
                 "confidence": p.confidence, "model_version": version}
                for id_, entry in stored
                for axis, p in (entry.predictions or {}).items()
            ],
        )  # fmt: skip
        history.insert_forwards(
            session,
            [
                outbox_row(id_, entry.route, self.config.forwarding.from_address)
                for id_, entry in stored
                if entry.route is not None and entry.route.department
            ],
        )
        return [
            _stored_outcome(entry)
            if id_ is not None
            else Outcome(entry.item.source_id, "", "", "duplicate")  # another poller was first
            for id_, entry in zip(ids, entries, strict=True)
        ]

    def _decide(
        self, session: Session, entries: list[_Parsed], customers: dict[tuple[str, str], int]
    ) -> None:
        """Route each entry: the facts about it, then the router's decision. The loop guard's
        count goes on within the batch, so a flood in one batch is capped too."""
        contacts = self._recent_contacts(session, entries)
        owners = {id(e): customers.get(_identity(e)) for e in entries}
        counts = history.forwards_since(
            session, [c for c in owners.values() if c is not None], utcnow() - timedelta(hours=1)
        )
        for entry in entries:
            customer = owners[id(entry)]
            sent = counts.get(customer, 0) if customer is not None else 0
            entry.route = self.router.decide(self._facts(entry, contacts, sent))
            if customer is not None and entry.route.department:
                counts[customer] = sent + 1

    def _facts(
        self,
        entry: _Parsed,
        contacts: dict[Identity, list[tuple[str, datetime]]],
        sender_forwards: int,
    ) -> MessageFacts:
        assert entry.email is not None
        if entry.item.truncated:
            return MessageFacts(
                entry.predictions, oversized=entry.item.size, sender_forwards=sender_forwards
            )
        return MessageFacts(
            entry.predictions,
            self._urgency(entry, contacts),
            entry.email.auto_reason,
            unreadable=lost_body(entry.email) or None,
            sender_forwards=sender_forwards,
        )

    def _recent_contacts(
        self, session: Session, entries: list[_Parsed]
    ) -> dict[Identity, list[tuple[str, datetime]]]:
        """The batch's senders' recent (area, received at) contacts: one query per batch."""
        senders = {_identity(e) for e in entries if e.email and e.email.sender_address}
        times = [e.item.received_at for e in entries]
        if not senders or not times:
            return {}
        window = timedelta(days=self.config.urgency.repeat_window_days)
        return recent_areas(session, senders, min(times) - window, urgency.RECENT_CONTACTS_COUNTED)

    def _urgency(
        self, entry: _Parsed, contacts: dict[Identity, list[tuple[str, datetime]]]
    ) -> urgency.Assessment:
        """The urgency the signals and the model decide. Without a model the markers, VIPs and
        channels still decide."""
        assert entry.email is not None
        settings = self.config.urgency
        area = entry.predictions.get(AREA) if entry.predictions else None
        area_label = area.label if area is not None else None
        seen = contacts.setdefault(_identity(entry), [])
        window = timedelta(days=settings.repeat_window_days)
        recent = urgency.count_recent(seen, area_label, entry.item.received_at, window)
        if area_label is not None:
            seen.append((area_label, entry.item.received_at))  # later messages of the batch
        return urgency.assess(
            entry.predictions.get(URGENCY) if entry.predictions else None,
            classification_text(entry.email),
            _urgency_channel(entry),
            entry.email.sender_address,
            recent,
            settings,
            self.config.routing.urgent_labels,
            area_label,
        )


def _drop_known(
    session: Session, source: str, parsed: list[_Parsed]
) -> tuple[list[_Parsed], list[Outcome]]:
    """Split a batch into new items and those already stored (by index, never by scan): any
    item of this source, and a customer's request from any source (who writes to two support
    addresses sent one request). Mail as it was stored before trace headers left the key only
    matches in its own source. Two pollers that both find a mail new here are decided by the
    database's unique index when they store it (``history.insert_messages``)."""
    keys = [entry.key for entry in parsed]
    legacy = [entry.raw_key for entry in parsed]
    known = {
        *session.scalars(
            select(Message.content_key).where(
                Message.content_key.in_(keys), Message.status.in_(INTAKE_STATUSES)
            )
        ),
        *session.scalars(
            select(Message.content_key).where(
                Message.source == source, Message.content_key.in_(keys + legacy)
            )
        ),
    }
    fresh, outcomes = [], []
    for entry in parsed:
        if entry.key in known or entry.raw_key in known:
            outcomes.append(Outcome(entry.item.source_id, "", "", "duplicate"))
            continue
        known.add(entry.key)
        fresh.append(entry)
    return fresh, outcomes


def _urgency_channel(entry: _Parsed) -> str:
    """The channel, with the kind of a post ("x:mention", "telegram:dm") for escalate_channels."""
    assert entry.email is not None
    return channel_key(entry.email.channel, entry.email.post_kind)


def _quarantine(session: Session, entry: _Parsed, error: str, channel: str) -> Outcome:
    session.add(
        Message(
            source=entry.item.source,
            source_id=entry.item.source_id,
            content_key=entry.key,
            channel=channel,
            received_at=entry.item.received_at,
            size=entry.item.size or len(entry.item.raw),
            truncated=entry.item.truncated,
            status="quarantined",
            error=error,
            raw=entry.item.raw,
        )
    )
    return Outcome(entry.item.source_id, "", "", "quarantined", error=error)


def _identity(entry: _Parsed) -> tuple[str, str]:
    assert entry.email is not None
    return entry.email.channel, entry.email.sender_address


def _identities(entries: list[_Parsed]) -> dict[tuple[str, str], str]:
    return {
        _identity(e): e.email.sender_name for e in entries if e.email and e.email.sender_address
    }


def _threads(
    entries: list[_Parsed], customers: dict[tuple[str, str], int]
) -> dict[str, tuple[int, str, datetime]]:
    threads: dict[str, tuple[int, str, datetime]] = {}
    for entry in entries:
        customer = customers.get(_identity(entry))
        if customer is None or entry.email is None:
            continue
        key = f"{entry.email.channel}:{entry.email.thread_key}"
        at = entry.item.received_at
        if key not in threads or at > threads[key][2]:
            first = threads.get(key, (customer, entry.email.subject, at))
            threads[key] = (first[0], first[1], at)
    return threads


def _message_row(
    entry: _Parsed, customers: dict[tuple[str, str], int], threads: dict[str, int]
) -> dict[str, Any]:
    email, item = entry.email, entry.item
    assert email is not None and entry.route is not None
    return {
        "source": item.source,
        "source_id": item.source_id,
        "content_key": entry.key,
        "channel": email.channel,
        "post_kind": email.post_kind,
        "customer_id": customers.get(_identity(entry)),
        "conversation_id": threads.get(f"{email.channel}:{email.thread_key}"),
        "header_message_id": email.message_id,
        "subject": email.subject,
        "body": email.body_text,
        "text": email.text_for_classification,
        "language": email.language,
        "received_at": item.received_at,
        "sent_at": email.date,
        "size": item.size or len(item.raw),
        "truncated": item.truncated,
        "auto_reason": email.auto_reason,
        "warnings": list(email.warnings),
        "status": "classified" if entry.predictions else "stored",
        **route_columns(entry.route),
        "raw": item.raw,
        "created_at": utcnow(),
    }


def _stored_outcome(entry: _Parsed) -> Outcome:
    assert entry.email is not None
    log.debug("%s classified %s -> %s", entry.item.source_id, entry.predictions, entry.route)
    return Outcome(
        entry.item.source_id,
        entry.email.sender_address,
        entry.email.subject,
        "stored",
        entry.predictions,
        entry.route,
    )
