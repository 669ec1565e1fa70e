"""Prometheus metrics: store-wide gauges computed from the database at each scrape, plus the
poll timings of this process.

The gauges come from the database, not from counters kept in memory, so every worker on every
host reports the same truth and nothing is lost at a restart; only what happens inside one
process (how long its polls took, how many failed) is kept here, per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from triage.config import Config
from triage.intake.results import PollResult
from triage.store.database import Database
from triage.store.queries import review_count
from triage.store.schema import Classification, Forward, Message
from triage.views import status

log = logging.getLogger(__name__)

POLL_SECONDS = Histogram(
    "triage_poll_duration_seconds",
    "How long a poll of a source took in this process (fetch, classify, store).",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=None,
)
POLL_ERRORS = Counter(
    "triage_poll_errors",
    "Polls of a source that failed in this process.",
    ["source"],
    registry=None,
)


def observe_poll(result: PollResult, seconds: float) -> None:
    """Record one poll of this process."""
    POLL_SECONDS.labels(result.source).observe(seconds)
    if result.error:
        POLL_ERRORS.labels(result.source).inc()


class StoreCollector(Collector):
    """Gauges read from the database at each scrape."""

    def __init__(
        self, config: Callable[[], Config], db: Database, started: datetime | None = None
    ) -> None:
        self.config = config
        self.db = db
        self.started = started

    def collect(self) -> Iterator[Metric]:
        began = time.monotonic()
        up = GaugeMetricFamily("triage_database_up", "1 when the database answered this scrape.")
        try:
            metrics = list(self._store_metrics())
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: the database does not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics
        took = GaugeMetricFamily(
            "triage_scrape_duration_seconds", "Time spent reading the database for this scrape."
        )
        took.add_metric([], time.monotonic() - began)
        yield took

    def _store_metrics(self) -> Iterator[Metric]:
        config = self.config()
        yield from _messages(self.db)
        yield from _forwards(self.db)
        yield from _sources(config, self.db, self.started)
        yield from _model(self.db)


def _messages(db: Database) -> Iterator[Metric]:
    with db.session() as session:
        by_source = session.execute(
            select(Message.source, Message.status, func.count()).group_by(
                Message.source, Message.status
            )
        ).all()
        labels = session.execute(
            select(Classification.axis, Classification.label, func.count()).group_by(
                Classification.axis, Classification.label
            )
        ).all()
        review = review_count(session)
    yield _counted(
        "triage_messages_ingested",
        "Messages stored, by source and status (stored, quarantined, ...).",
        ["source", "status"],
        by_source,
    )
    yield _counted(
        "triage_messages_classified",
        "Classifications stored, by axis (kind, area, urgency) and label.",
        ["axis", "label"],
        labels,
    )
    yield GaugeMetricFamily(
        "triage_review_messages", "Messages sent to the review department.", value=review or 0
    )


def _forwards(db: Database) -> Iterator[Metric]:
    with db.session() as session:
        rows = session.execute(
            select(Forward.department, Forward.status, func.count()).group_by(
                Forward.department, Forward.status
            )
        ).all()
        retrying = session.execute(
            select(Forward.department, func.count())
            .where(Forward.status == "pending", Forward.attempts > 0)
            .group_by(Forward.department)
        ).all()
    yield _counted(
        "triage_forwards",
        "Forwards by department and status (pending, sent, failed).",
        ["department", "status"],
        rows,
    )
    yield _counted(
        "triage_forwards_retrying",
        "Pending forwards that have failed at least one attempt.",
        ["department"],
        retrying,
    )


def _sources(config: Config, db: Database, started: datetime | None) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "triage_source_lag_seconds",
        "Seconds since the source's last successful poll (absent: never polled).",
        labels=["source"],
    )
    last = GaugeMetricFamily(
        "triage_source_last_success_timestamp_seconds",
        "Unix time of the source's last successful poll.",
        labels=["source"],
    )
    streak = GaugeMetricFamily(
        "triage_source_error_streak",
        "Failed polls in a row (0: the last poll succeeded).",
        labels=["source"],
    )
    healthy = GaugeMetricFamily(
        "triage_source_healthy",
        "1 when the source polled within [alerts] stale_after_minutes and is not failing.",
        labels=["source"],
    )
    paused = GaugeMetricFamily(
        "triage_source_paused", "1 while a rate limit pauses the source.", labels=["source"]
    )
    for source in status.source_health(config, db, started=started):
        if source.last_success_at is not None:
            lag.add_metric([source.name], source.lag_seconds or 0.0)
            last.add_metric([source.name], source.last_success_at.timestamp())
        streak.add_metric([source.name], source.error_streak)
        healthy.add_metric([source.name], 1 if source.healthy else 0)
        paused.add_metric([source.name], 1 if source.paused_until else 0)
    yield from (lag, last, streak, healthy, paused)


def _model(db: Database) -> Iterator[Metric]:
    row = status.active_model_row(db)
    info = GaugeMetricFamily(
        "triage_active_model", "The active model version (value 1).", labels=["version"]
    )
    if row is not None:
        info.add_metric([row.version], 1)
    yield info


def registry_for(
    config: Callable[[], Config], db: Database, started: datetime | None = None
) -> CollectorRegistry:
    """A registry with the store gauges and this process's poll metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(config, db, started))
    registry.register(POLL_SECONDS)
    registry.register(POLL_ERRORS)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(registry)


def _counted(name: str, documentation: str, labels: list[str], rows: Iterable[Any]) -> Metric:
    """A gauge from query rows of (label values..., count)."""
    gauge = GaugeMetricFamily(name, documentation, labels=labels)
    for *values, count in rows:
        gauge.add_metric(list(values), count)
    return gauge
