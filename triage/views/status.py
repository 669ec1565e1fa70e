"""The worker's health at a glance, read from the store: what `triage status`, `/healthz`, the
status page and `/metrics` all report, so they never disagree.

Everything is derived from the database (source states, the outbox, the messages, the model
rows), so any process on any host sees the same truth, whether or not it runs the daemon.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from triage.config import Config
from triage.decide.router import label_gaps
from triage.errors import NoActiveModel
from triage.lifecycle.registry import ModelRegistry
from triage.store.database import Database
from triage.store.queries import review_count, unsent_alerts
from triage.store.schema import Forward, Message, ModelVersion, SourceState, utcnow
from triage.store.sources import backoff_until

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """One source as the store sees it."""

    name: str
    type: str
    interval_seconds: float
    last_success_at: datetime | None
    lag_seconds: float | None  # since the last successful poll; None: never polled
    error_streak: int
    last_error: str | None
    paused_until: datetime | None  # a rate limit
    backoff_until: datetime | None  # failing: not polled before this
    next_poll: str  # as far as the store can tell: "due now", "about <time>", "paused until ..."
    next_poll_at: datetime  # the same as a time (the check's own time when overdue)
    stale: bool
    failing: bool

    @property
    def healthy(self) -> bool:
        return not (self.stale or self.failing)

    def problem(self, stale_minutes: float) -> str | None:
        if self.failing:
            return f"source {self.name}: {self.error_streak} failed poll(s) in a row: {self.last_error}"
        if self.stale:
            since = (
                f"since {self.last_success_at:%Y-%m-%d %H:%M} UTC"
                if self.last_success_at
                else "ever"
            )
            return (
                f"source {self.name}: no successful poll {since} "
                f"(the window is {stale_minutes:g} minutes)"
            )
        return None


@dataclass(frozen=True, slots=True)
class Outbox:
    pending: int = 0  # every forward not yet delivered, retrying ones included
    retrying: int = 0  # pending after at least one failed attempt
    failed: int = 0  # gave up: `triage outbox retry` re-queues them
    sent: int = 0


@dataclass(frozen=True, slots=True)
class ModelState:
    version: str | None
    usable: bool | None  # None: not checked (loading a model is not free)
    problem: str | None


@dataclass
class Status:
    """Everything `triage status` reports; ``problems`` is what needs attention."""

    checked_at: datetime
    sources: list[SourceHealth]
    outbox: Outbox
    quarantined: int
    review: int
    model: ModelState
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The `triage status --json` object; its keys are a contract (README, Operate)."""
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "checked_at": _iso(self.checked_at),
            "sources": [
                {
                    key: _iso(value) if isinstance(value, datetime) else value
                    for key, value in asdict(source).items()
                }
                for source in self.sources
            ],
            "outbox": asdict(self.outbox),
            "quarantined": self.quarantined,
            "review": self.review,
            "model": asdict(self.model),
        }


def source_health(
    config: Config, db: Database, *, started: datetime | None = None, now: datetime | None = None
) -> list[SourceHealth]:
    """Every configured source's health.

    A source is *failing* with an error streak of at least ``[alerts] after_failures``, and
    *stale* without a successful poll within ``[alerts] stale_after_minutes``; a source never
    polled counts from ``started`` (the daemon's start) when given, else it is stale at once.
    """
    now = now or utcnow()
    window = timedelta(minutes=config.alerts.stale_after_minutes)
    with db.session() as session:
        states = {s.source: s for s in session.scalars(select(SourceState))}
    result = []
    for source in config.sources:
        state = states.get(source.name)
        interval = source.poll_interval or config.schedule.poll_interval
        success = state.last_success_at if state else None
        streak = state.error_streak if state else 0
        paused = (
            state.paused_until
            if state and state.paused_until and state.paused_until > now
            else None
        )
        backoff = backoff_until(state, interval)
        next_at = _next_poll_at(now, success, interval, paused, backoff)
        result.append(
            SourceHealth(
                name=source.name,
                type=source.type,
                interval_seconds=interval,
                last_success_at=success,
                lag_seconds=(now - success).total_seconds() if success else None,
                error_streak=streak,
                last_error=state.last_error if state else None,
                paused_until=paused,
                backoff_until=backoff if backoff and backoff > now else None,
                next_poll=_next_poll(now, next_at, paused, backoff),
                next_poll_at=next_at,
                stale=now - success > window
                if success
                else started is None or now - started > window,
                failing=streak >= config.alerts.after_failures,
            )
        )
    return result


def outbox(db: Database) -> Outbox:
    with db.session() as session:
        counts = dict(
            session.execute(select(Forward.status, func.count()).group_by(Forward.status)).all()
        )
        retrying = session.scalar(
            select(func.count())
            .select_from(Forward)
            .where(Forward.status == "pending", Forward.attempts > 0)
        )
    return Outbox(
        pending=counts.get("pending", 0),
        retrying=retrying or 0,
        failed=counts.get("failed", 0),
        sent=counts.get("sent", 0),
    )


def stuck_forwards(db: Database, after_failures: int) -> str | None:
    """Forwards still retrying after ``after_failures`` failed attempts, with the latest error:
    a fault that does not mend itself (a file where the forwards folder should be, a refused
    login) would otherwise be reported only hours later, when they fail for good."""
    with db.session() as session:
        stuck = session.execute(
            select(func.count(), func.max(Forward.id)).where(
                Forward.status == "pending", Forward.attempts >= after_failures
            )
        ).one()
        if not stuck[0]:
            return None
        error = session.scalar(select(Forward.last_error).where(Forward.id == stuck[1]))
    return (
        f"outbox: {stuck[0]} forward(s) failed {after_failures}+ attempts and are retrying: {error}"
    )


def delivery_problems(config: Config, db: Database, box: Outbox | None = None) -> list[str]:
    """What goes wrong on the way out, one sentence each: forwards failed for good or stuck
    retrying, and alerts that could not be mailed (the admin may never have received them)."""
    box = box or outbox(db)
    problems = []
    if box.failed:
        problems.append(
            f"outbox: {box.failed} forward(s) failed for good; "
            "see `triage outbox list --status failed`"
        )
    if stuck := stuck_forwards(db, config.alerts.after_failures):
        problems.append(stuck)
    with db.session() as session:
        unsent = unsent_alerts(session)
    if unsent:
        latest = unsent[0]
        problems.append(
            f"alerts: {len(unsent)} alert(s) to {config.alerts.email} could not be mailed "
            f"(retried when forwards go out again); the latest, {latest.subject!r}: {latest.error}"
        )
    return problems


def message_counts(db: Database) -> tuple[int, int]:
    """(quarantined, sent to review) messages."""
    with db.session() as session:
        quarantined = session.scalar(
            select(func.count()).select_from(Message).where(Message.status == "quarantined")
        )
        review = review_count(session)
    return quarantined or 0, review


def model_state(config: Config, db: Database, *, load: bool) -> ModelState:
    """The active version; with ``load``, whether it really loads (sha256, library versions)."""
    registry = ModelRegistry(db, config.classifier.models_dir)
    if not load:
        row = registry.active()
        return ModelState(row.version if row else None, None, None if row else "no model is active")
    try:
        return ModelState(registry.load_active().version, True, None)
    except NoActiveModel as exc:
        row = registry.active()
        return ModelState(row.version if row else None, False, str(exc))


def active_model_row(db: Database) -> ModelVersion | None:
    with db.session() as session:
        return session.scalars(select(ModelVersion).where(ModelVersion.active)).first()


def collect(
    config: Config, db: Database, *, load_model: bool = True, started: datetime | None = None
) -> Status:
    """The whole picture; ``problems`` lists, one sentence each, what needs attention."""
    sources = source_health(config, db, started=started)
    box = outbox(db)
    quarantined, review = message_counts(db)
    model = model_state(config, db, load=load_model)
    problems = [p for s in sources if (p := s.problem(config.alerts.stale_after_minutes))]
    problems.extend(delivery_problems(config, db, box))
    if model.usable is False or model.version is None:
        problems.append(f"model: {model.problem}")
    elif (row := active_model_row(db)) is not None:
        gaps = label_gaps(config, row.details.get("axes", {}))
        problems.extend(f"model {row.version}: {gap}" for gap in gaps)
    return Status(utcnow(), sources, box, quarantined, review, model, problems)


def _next_poll_at(
    now: datetime,
    success: datetime | None,
    interval: float,
    paused: datetime | None,
    backoff: datetime | None,
) -> datetime:
    """When the source is polled next, as far as the store can tell; ``now`` when overdue."""
    if paused:
        return paused
    if backoff and backoff > now:
        return backoff
    due = success + timedelta(seconds=interval) if success else now
    return max(due, now)


def _next_poll(
    now: datetime, at: datetime, paused: datetime | None, backoff: datetime | None
) -> str:
    if paused:
        return f"paused until {at:%Y-%m-%d %H:%M:%S} UTC (rate limit)"
    if backoff and backoff > now:
        return f"backing off until {at:%Y-%m-%d %H:%M:%S} UTC"
    return "due now" if at <= now else f"about {at:%Y-%m-%d %H:%M:%S} UTC"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
