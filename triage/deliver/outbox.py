"""The forwarder: delivers outbox entries to departments, by SMTP or as ``.eml`` files.

Delivery is at-least-once. Each forward's Message-ID is fixed when it is queued, so the one window
no mail system can close (the server accepted, we crashed before recording it) re-sends a message
the recipient's system can collapse. 4xx replies and network errors are retried with exponential
backoff and jitter; 5xx replies mark the forward failed (a dead letter the admin can retry).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.charset import BASE64
from email.message import Message as Email
from email.utils import make_msgid
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, joinedload

from triage.config import Config, Forwarding
from triage.decide.route import (
    Route,
    reasons_json,
    signals_json,
)
from triage.deliver.compose import compose_all
from triage.deliver.mail import _UTF8_BASE64
from triage.deliver.transports import DeliveryError, Transport
from triage.errors import check_named
from triage.faults import crash_point
from triage.store.database import Database
from triage.store.schema import Forward, Message, utcnow
from triage.worker.stopping import Stop

log = logging.getLogger(__name__)


MAX_BACKOFF = timedelta(hours=1)


_UTF8_BASE64.header_encoding = BASE64  # "shortest" encodes every subject twice to compare


@dataclass
class FlushResult:
    """What flushes of the outbox did: each forward tried, by id, with the state it was left in.

    Added up over the flushes of one run, a forward's later state wins: one that failed an
    attempt and went out in a later flush counts as sent, not also as to retry.
    """

    states: dict[int, str] = field(default_factory=dict)

    def __add__(self, later: FlushResult) -> FlushResult:
        return FlushResult({**self.states, **later.states})

    def _count(self, state: str) -> int:
        return sum(1 for value in self.states.values() if value == state)

    @property
    def sent(self) -> int:
        return self._count("sent")

    @property
    def retrying(self) -> int:
        return self._count("retrying")

    @property
    def failed(self) -> int:
        return self._count("failed")


COMPOSE_CHUNK = 50
"""Forwards composed together: their messages and labels come in one query each, not one
each per forward; then each is locked, sent and recorded in a transaction of its own."""


PASS_LIMIT = 1000
"""Forwards one pass of the outbox reads; a drain makes as many passes as it takes."""


@dataclass(frozen=True, slots=True)
class Leftover:
    """Forwards queued since a moment and not delivered: why, and until when."""

    waiting: int = 0  # pending: their next attempt is due later (the server failed them)
    next_attempt_at: datetime | None = None  # the earliest of those attempts
    failed: int = 0  # gave up: `triage outbox retry` re-queues them
    last_error: str | None = None  # the latest error among them

    @property
    def count(self) -> int:
        return self.waiting + self.failed

    def describe(self) -> str:
        """One sentence for the admin; empty when nothing is left."""
        if not self.count:
            return ""
        parts = []
        if self.waiting:
            at = (
                f", the first at {self.next_attempt_at:%H:%M:%S} UTC"
                if self.next_attempt_at
                else ""
            )
            parts.append(f"{self.waiting} waiting for a retry{at}")
        if self.failed:
            parts.append(f"{self.failed} failed for good (`triage outbox retry --all-failed`)")
        error = f"; last error: {self.last_error}" if self.last_error else ""
        return f"{self.count} forward(s) not delivered: {', '.join(parts)}{error}"


class Forwarder:
    """Delivers due outbox entries, committing each outcome as soon as it is known."""

    pass_limit = PASS_LIMIT

    def __init__(
        self, db: Database, config: Config, transport: Transport, stop: Stop | None = None
    ) -> None:
        self.db = db
        self.settings: Forwarding = config.forwarding
        self.transport = transport
        self.stop = stop or Stop()
        self._outage_logged = False

    def flush(self, now: datetime | None = None, limit: int = PASS_LIMIT) -> FlushResult:
        """One pass: try the pending forwards that are due (at most ``limit``); a stop
        request ends the pass after the forward in hand."""
        result = FlushResult()
        now = now or utcnow()
        with self.db.session() as session:
            due = session.scalars(
                select(Forward.id)
                .where(Forward.status == "pending", Forward.next_attempt_at <= now)
                .order_by(Forward.id)
                .limit(limit)
            ).all()
        tried = 0
        try:
            for start in range(0, len(due), COMPOSE_CHUNK):
                if self.stop.is_set():
                    break
                for forward, email in self._compose(due[start : start + COMPOSE_CHUNK]):
                    if self.stop.is_set():
                        break
                    self._deliver(forward, email, now, result)
                    tried += 1
        finally:
            self.transport.close()
        if self.stop.is_set() and tried < len(due):
            self.stop.note(f"outbox: {len(due) - tried} due forward(s) left pending")
        if due:
            log.info(
                "outbox: %d sent, %d to retry, %d failed",
                result.sent,
                result.retrying,
                result.failed,
            )
        return result

    def drain(self) -> FlushResult:
        """Deliver everything deliverable now: pass after pass of ``pass_limit`` forwards,
        until none is due (what is left waits for a retry time, or failed) or a stop is
        requested."""
        total = FlushResult()
        while not self.stop.is_set():
            result = self.flush(limit=self.pass_limit)
            total += result
            if not result.states:  # nothing was due, or every due one is another worker's
                break
        return total

    def undelivered_since(self, since: datetime) -> Leftover:
        """The forwards queued at or after ``since`` that are not delivered, and why."""
        with self.db.session() as session:
            rows = session.execute(
                select(
                    Forward.status,
                    func.count(),
                    func.min(Forward.next_attempt_at),
                    func.max(Forward.id),
                )
                .where(Forward.created_at >= since, Forward.status != "sent")
                .group_by(Forward.status)
            ).all()
            by_status = {status: (count, first, last) for status, count, first, last in rows}
            latest = max((last for _, _, last in by_status.values()), default=None)
            error = (
                session.scalar(select(Forward.last_error).where(Forward.id == latest))
                if latest is not None
                else None
            )
        waiting = by_status.get("pending", (0, None, None))
        return Leftover(
            waiting=waiting[0],
            next_attempt_at=waiting[1],
            failed=by_status.get("failed", (0, None, None))[0],
            last_error=error,
        )

    def _compose(self, forward_ids: Sequence[int]) -> list[tuple[Forward, Email]]:
        """The forwards with their emails, read without a lock: what an email shows never
        changes once it is queued, and each forward's state is read again under its lock."""
        with self.db.session() as session:
            forwards = session.scalars(
                select(Forward)
                .where(Forward.id.in_(forward_ids))
                .options(joinedload(Forward.message).joinedload(Message.customer))
                .order_by(Forward.id)
            ).all()
            return compose_all(session, forwards, self.settings)

    def _deliver(self, forward: Forward, email: Email, now: datetime, result: FlushResult) -> None:
        with self.db.transaction() as session:
            # Another worker on the same PostgreSQL may hold this forward: skip it, never send twice;
            # it may also have been sent since it was read.
            state = session.execute(_LOCK_STATE, {"forward_id": forward.id}).first()
            if state is None or state.status != "pending":
                return
            attempts = state.attempts + 1
            crash_point("smtp-sending")
            try:
                self.transport.send(
                    email, self.settings.from_address, [*forward.to_addrs, *forward.cc_addrs]
                )
            except DeliveryError as exc:
                self._failed_attempt(session, forward, attempts, exc, now, result)
                return
            crash_point("smtp-accepted")
            _set_state(session, forward.id, status="sent", sent_at=utcnow(), last_error=None,
                       attempts=attempts)  # fmt: skip
            result.states[forward.id] = "sent"
            if self._outage_logged:
                log.info("forwarding works again")
                self._outage_logged = False
            log.debug("forward %s delivered to %s", forward.rfc_message_id, forward.department)

    def _failed_attempt(
        self,
        session: Session,
        forward: Forward,
        attempts: int,
        exc: DeliveryError,
        now: datetime,
        result: FlushResult,
    ) -> None:
        if exc.permanent or attempts >= self.settings.max_attempts:
            _set_state(session, forward.id, status="failed", attempts=attempts, last_error=str(exc))
            result.states[forward.id] = "failed"
            log.error(
                "forward %s to %s failed for good after %d attempt(s): %s "
                "(retry with `triage outbox retry %d`)",
                forward.rfc_message_id,
                forward.department,
                attempts,
                exc,
                forward.id,
            )
            return
        retry_at = now + backoff(attempts, self.settings.retry_base_seconds)
        _set_state(session, forward.id, attempts=attempts, last_error=str(exc),
                   next_attempt_at=retry_at)  # fmt: skip
        result.states[forward.id] = "retrying"
        if not self._outage_logged:
            log.warning("forwarding is failing, will retry with backoff: %s", exc)
            self._outage_logged = True


_LOCK_STATE = (
    select(Forward.status, Forward.attempts)
    .where(Forward.id == bindparam("forward_id"))
    .with_for_update(skip_locked=True)
)
"""A forward's state, locked; SKIP LOCKED: another worker holds it (built once, like the next)."""


_UPDATE_STATE = update(Forward.table()).where(Forward.table().c.id == bindparam("forward_id"))
"""Sets the columns its parameters name."""


def _set_state(session: Session, forward_id: int, **values: Any) -> None:
    """A forward's new state in one Core UPDATE: no ORM unit of work for a row nobody reads."""
    session.connection().execute(_UPDATE_STATE, {"forward_id": forward_id, **values})


def outbox_row(message_id: int, route: Route, from_address: str) -> dict[str, Any]:
    """A new outbox entry for ``route``; its Message-ID is fixed now, so a re-send keeps it."""
    return {
        "message_id": message_id,
        "department": route.department,
        "to_addrs": list(route.to_addrs),
        "cc_addrs": list(route.cc_addrs),
        "urgent": route.urgent,
        "disposition": route.disposition.value,
        "reasons": reasons_json(route.reasons),
        "urgent_reasons": signals_json(route.signals),
        "rfc_message_id": make_msgid("triage", domain=from_address.rpartition("@")[2]),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": utcnow(),
    }


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Exponential backoff with full jitter in its upper half, capped at an hour."""
    delay = min(MAX_BACKOFF.total_seconds(), base_seconds * 2 ** (attempts - 1))
    return timedelta(seconds=delay * random.uniform(0.5, 1.0))


def requeue(db: Database, forward_ids: Sequence[int], all_failed: bool) -> int:
    """Put failed forwards back in the queue, due now; returns how many were requeued.
    Ids that name no failed forward refuse the whole call."""
    with db.transaction() as session:
        query = select(Forward).where(Forward.status == "failed")
        if not all_failed:
            query = query.where(Forward.id.in_(forward_ids))
        forwards = session.scalars(query).all()
        if not all_failed:
            check_named(
                forward_ids, (f.id for f in forwards), "failed forward", "triage outbox list"
            )
        for forward in forwards:
            forward.status, forward.attempts, forward.next_attempt_at = "pending", 0, utcnow()
        return len(forwards)
