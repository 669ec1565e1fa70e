"""One poll of one source: fetch → normalize → dedup → classify → route → store + outbox.

Each batch is written in ONE transaction together with the source's checkpoint, so a crash
replays the batch and the unique content key absorbs the replay. A message that cannot be parsed
or classified is quarantined with its error and raw bytes; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from classifiers.base import Prediction
from classifiers.model import Classifier
from connectors.base import (
    Checkpoint,
    Connector,
    ConnectorAuthError,
    ConnectorError,
    ConnectorRateLimited,
    RawItem,
)
from triage.config import Config
from triage.decide import urgency
from triage.decide.route import Route, route_columns
from triage.decide.router import AREA, URGENCY, MessageFacts, Router
from triage.errors import check_named
from triage.faults import crash_point
from triage.forwarding import outbox_row
from triage.normalize import ParsedEmail, lost_body
from triage.prepare import Prepared, Preparer, classification_text, prepare
from triage.registry import ActiveClassifier
from triage.stopping import Stop, Stopped
from triage.store import history
from triage.store.contacts import recent_areas
from triage.store.database import Database
from triage.store.history import Identity
from triage.store.schema import (
    INTAKE_STATUSES,
    Message,
    SourceState,
    channel_key,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_SOURCE_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item, for the run report."""

    source_id: str
    sender: str
    subject: str
    status: str  # "stored", "duplicate", "quarantined"
    predictions: dict[str, Prediction] | None = None
    route: Route | None = None
    error: str | None = None


KEPT_OUTCOMES = 500
"""Outcomes a poll result keeps for display; beyond them it only counts, so a poll of a
100,000-message mailbox holds no more in memory than a poll of a small one."""


@dataclass
class PollResult:
    """The summary of one poll of one source."""

    source: str
    outcomes: list[Outcome] = field(default_factory=list)  # the first KEPT_OUTCOMES
    error: str | None = None
    streak: int = 0  # failed polls in a row, this one included
    permanent: bool = False  # the failure needs a fix (login refused, revoked token)
    recovered_from: int = 0  # the streak this successful poll ended
    paused_until: datetime | None = None  # rate-limited: not polled again before this
    busy_with: str | None = None  # not polled: this other worker holds the source now
    stopped: bool = False  # a stop request ended the poll; what was not committed is re-read
    counts: Counter[str] = field(default_factory=Counter)  # by status, and "forwarded"

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.counts[outcome.status] += 1
            if outcome.route is not None and outcome.route.department:
                self.counts["forwarded"] += 1
            if len(self.outcomes) < KEPT_OUTCOMES:
                self.outcomes.append(outcome)

    def count(self, status: str) -> int:
        return self.counts[status]

    @property
    def forwarded(self) -> int:
        return self.counts["forwarded"]

    @property
    def total(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "forwarded")


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


_InFlight = tuple[list[tuple[RawItem, Checkpoint]], "Future[list[Prepared]] | None"]


class Pipeline:
    """Runs polls for the sources of one config against one database."""

    def __init__(
        self,
        db: Database,
        config: Config,
        router: Router,
        classifier: ActiveClassifier,
        stop: Stop | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.router = router
        self.classifier = classifier
        self.stop = stop or Stop()
        self.clock: Callable[[], datetime] = utcnow  # tests move time past a rate-limit pause
        # Called first in each batch's transaction: the worker's lease renewal, which raises
        # (rolling the batch back) when another worker took the source over; triage/store/leases.py.
        self.fence: Callable[[Session, str], None] | None = None
        # Sources whose items are not customer mail: source name -> the stage that records a
        # batch in the caller's transaction instead of `_record` (triage/corrections.py).
        self.stages: dict[str, Callable[[Session, str, list[RawItem]], list[Outcome]]] = {}
        # Parses and classifies batches (in worker processes when configured) while this
        # process fetches the next batch and stores the previous one.
        self.preparer = Preparer(0, self.stop)
        # Called after a batch that queued forwards is committed: the worker delivers them
        # while the next batches are read, not when a long first poll of a mailbox ends.
        self.on_queued: Callable[[], None] | None = None
        # Crashed polls in a row per source, for when the database cannot count them.
        self._crashes: dict[str, int] = {}

    def poll(self, name: str, connector: Connector, batch_size: int = 500) -> PollResult:
        """Read everything new from ``connector`` and record it; never raises for source errors.

        A source the service rate-limited is skipped until its pause ends, without blocking
        other sources; what was read before the limit hit is committed.
        """
        result = PollResult(name)
        if paused := self._paused_until(name):
            connector.close()
            result.paused_until = paused
            log.debug("%s: rate-limited, not polled before %s", name, paused)
            return result
        try:
            with self.stop.interruptible(connector.interrupt):
                self._ingest(name, connector, batch_size, result)
        except Stopped as exc:
            return self._stopped(name, result, exc.abandoned)
        except ConnectorError as exc:
            if self.stop.is_set():  # the stop cut the connection: not the source's fault
                return self._stopped(name, result, 0)
            return self._failed(name, result, exc)
        finally:
            connector.close()
        result.recovered_from = self._record_success(name)
        log.info(
            "%s: %d new, %d already stored, %d quarantined, %d queued for forwarding",
            name,
            result.count("stored"),
            result.count("duplicate"),
            result.count("quarantined"),
            result.forwarded,
        )
        return result

    def _failed(self, name: str, result: PollResult, exc: ConnectorError) -> PollResult:
        """A poll the source failed; a rate limit pauses the source instead (no streak)."""
        if isinstance(exc, ConnectorRateLimited):
            result.paused_until = self._record_pause(name, exc)
            log.warning("%s: %s", name, exc)
            return result
        result.error = str(exc)
        result.permanent = isinstance(exc, ConnectorAuthError)
        result.streak = self._record_failure(name, str(exc))
        log.warning("%s: poll failed (%d in a row): %s", name, result.streak, exc)
        return result

    def _stopped(self, name: str, result: PollResult, abandoned: int) -> PollResult:
        """A poll a stop request ended: what it committed stays, the rest is read next time."""
        result.stopped = True
        left = (
            f"{abandoned} fetched message(s) left uncommitted"
            if abandoned
            else "the batch being read left"
        )
        self.stop.note(
            f"{name}: {result.total} message(s) committed, {left}, to be read at the next start"
        )
        return result

    def _ingest(self, name: str, connector: Connector, batch_size: int, result: PollResult) -> None:
        """Fetch, prepare and commit batch after batch, with batches prepared ahead of the commit
        (one per worker process), so fetching, parsing and storing overlap.

        On a connector error the batches already read are committed first, then it is raised.
        """
        model = self.classifier.current()
        in_flight: deque[_InFlight] = deque()
        try:
            for batch in _batched(connector.fetch(self._checkpoint(name)), batch_size):
                in_flight.append((batch, self._submit(name, batch, model)))
                if len(in_flight) > max(1, self.preparer.processes):
                    self._commit(name, connector, *in_flight.popleft(), model, result)
            while in_flight:
                self._commit(name, connector, *in_flight.popleft(), model, result)
        except ConnectorError:
            if self.stop.is_set():
                raise Stopped(_held(in_flight)) from None
            while in_flight:
                self._commit(name, connector, *in_flight.popleft(), model, result)
            raise
        except Stopped:
            raise Stopped(_held(in_flight)) from None

    def _submit(
        self, name: str, batch: list[tuple[RawItem, Checkpoint]], model: Classifier | None
    ) -> Future[list[Prepared]] | None:
        if name in self.stages:
            return None  # a stage reads its items itself
        path = self.classifier.path if model is not None else None
        future = self.preparer.submit([item for item, _ in batch], model, path)
        crash_point("submitted")
        return future

    def _commit(
        self,
        name: str,
        connector: Connector,
        batch: list[tuple[RawItem, Checkpoint]],
        future: Future[list[Prepared]] | None,
        model: Classifier | None,
        result: PollResult,
    ) -> None:
        self.stop.check()  # a stop abandons what is not committed yet
        items = [item for item, _ in batch]
        prepared = self.preparer.collect(future, items, model) if future is not None else None
        self.stop.check()
        outcomes = self._process(name, batch, prepared, model)
        connector.acknowledge(items)  # only after the commit
        queued = result.forwarded
        result.add(outcomes)
        if result.forwarded > queued and self.on_queued is not None:
            self.on_queued()

    def _checkpoint(self, name: str) -> Checkpoint | None:
        with self.db.session() as session:
            state = session.get(SourceState, name)
            return state.checkpoint if state else None

    def _process(
        self,
        source: str,
        batch: list[tuple[RawItem, Checkpoint]],
        prepared: list[Prepared] | None,
        model: Classifier | None,
    ) -> list[Outcome]:
        crash_point("fetched")
        with self.db.transaction() as session:
            if self.fence is not None:
                self.fence(session, source)
            items = [item for item, _ in batch]
            if stage := self.stages.get(source):
                outcomes = stage(session, source, items)
            else:
                assert prepared is not None
                outcomes = self._record(session, source, items, prepared, model)
            _save_checkpoint(session, source, batch[-1][1])
        crash_point("committed")
        return outcomes

    def _record(
        self,
        session: Session,
        source: str,
        items: list[RawItem],
        prepared: list[Prepared],
        model: Classifier | None,
    ) -> list[Outcome]:
        """Route and store prepared ``items`` in the caller's transaction."""
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

    def retry_quarantined(self, message_ids: Sequence[int] | None) -> list[Outcome]:
        """Process quarantined messages again (after a fix); None retries all of them, and
        ids that name no quarantined message refuse the whole call.

        The old rows are replaced in the same transaction, so a crash leaves them quarantined.
        """
        model = self.classifier.current()
        outcomes: list[Outcome] = []
        with self.db.transaction() as session:
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
                    self._record(session, row.source, [item], prepare([item], model), model)
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

    def _record_success(self, name: str) -> int:
        """Mark the source healthy; returns the failure streak this success ended."""
        with self.db.transaction() as session:
            state = _state(session, name)
            streak = state.error_streak
            state.last_success_at, state.error_streak, state.last_error = utcnow(), 0, None
            state.paused_until = None
        self._crashes.pop(name, None)
        return streak

    def _paused_until(self, name: str) -> datetime | None:
        with self.db.session() as session:
            state = session.get(SourceState, name)
            paused = state.paused_until if state else None
        return paused if paused is not None and self.clock() < paused else None

    def _record_pause(self, name: str, exc: ConnectorRateLimited) -> datetime:
        """Remember the service's pause; a rate limit is not a failure (no streak, no alert)."""
        with self.db.transaction() as session:
            state = _state(session, name)
            state.paused_until, state.last_error = exc.retry_at, str(exc)
            state.updated_at = utcnow()
        return exc.retry_at

    def crashed(self, name: str, exc: Exception) -> PollResult:
        """The result of a poll that raised what no source error explains (a bug, a database
        fault): a failed poll, so the backoff, `status`, /healthz and the alerts all see it."""
        result = PollResult(name)
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        result.error = f"poll crashed: {type(cause).__name__}: {reason}"
        self._crashes[name] = self._crashes.get(name, 0) + 1
        try:
            result.streak = self._record_failure(name, result.error)
        except Exception:  # the store itself is failing: count in memory meanwhile
            log.warning("%s: the failed poll cannot be recorded in the database either", name)
            result.streak = self._crashes[name]
        return result

    def _record_failure(self, name: str, error: str) -> int:
        """Count a failed poll; returns the streak, which sets the backoff."""
        with self.db.transaction() as session:
            state = _state(session, name)
            state.error_streak += 1
            state.last_error = error
            state.updated_at = utcnow()
            return state.error_streak

    def last_successes(self, names: list[str]) -> dict[str, datetime | None]:
        """The last successful poll of each source (None: never)."""
        with self.db.session() as session:
            states = {s.source: s for s in session.scalars(select(SourceState))}
        return {name: states[name].last_success_at if name in states else None for name in names}

    def backoff_until(self, name: str, base_seconds: float) -> datetime | None:
        """When a failing source may be polled again (exponential, jittered); None if healthy."""
        with self.db.session() as session:
            state = session.get(SourceState, name)
            if state is None or state.error_streak == 0:
                return None
            # Jitter fixed per (source, streak), so every check agrees on the same instant.
            jitter = random.Random(f"{name}:{state.error_streak}").uniform(0.5, 1.0)
            delay = min(MAX_SOURCE_BACKOFF, base_seconds * 2 ** (state.error_streak - 1))
            return state.updated_at + timedelta(seconds=delay * jitter)


BATCH_BYTES = 64 * 1024 * 1024
"""A batch ends early at this many raw bytes: 500 mails with 20 MB attachments, several
batches in flight, would take gigabytes."""


def _batched(
    items: Iterable[tuple[RawItem, Checkpoint]], size: int, max_bytes: int = BATCH_BYTES
) -> Iterator[list[tuple[RawItem, Checkpoint]]]:
    """Batches of ``size`` items or ``max_bytes`` raw bytes, whichever comes first. A
    connector error first hands over the items read before it (each carries a checkpoint
    valid up to itself), so a source failing part-way still progresses."""
    iterator = iter(items)
    while True:
        batch: list[tuple[RawItem, Checkpoint]] = []
        held = 0
        try:
            for item in islice(iterator, size):
                batch.append(item)
                held += len(item[0].raw)
                if held >= max_bytes:
                    break
        except ConnectorError:
            if batch:
                yield batch
            raise
        if not batch:
            return
        yield batch


def _held(in_flight: Iterable[_InFlight]) -> int:
    """How many fetched items the batches in flight hold."""
    return sum(len(batch) for batch, _ in in_flight)


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


def _state(session: Session, name: str) -> SourceState:
    state = session.get(SourceState, name)
    if state is None:
        state = SourceState(source=name, error_streak=0)
        session.add(state)
    return state


def _save_checkpoint(session: Session, name: str, checkpoint: Checkpoint) -> None:
    state = _state(session, name)
    state.checkpoint = dict(checkpoint)
    state.updated_at = utcnow()
