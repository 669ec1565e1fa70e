"""The worker: one APScheduler job per source plus one that flushes the outbox.

``run_once`` does one pass over every source and one flush, which is what ``triage run --once``
and the tests call; ``serve`` runs the same jobs on a schedule until SIGTERM or SIGINT, then
finishes the batch in hand (a warm stop).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from types import FrameType

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from triage.alerts import Alerter
from triage.config import Config
from triage.forwarding import FlushResult, Forwarder, make_transport
from triage.pipeline import Pipeline, PollResult
from triage.privacy import purge_before
from triage.registry import ActiveClassifier, ModelRegistry
from triage.routing import Router
from triage.sources import make_connector, make_watcher
from triage.store.database import Database

log = logging.getLogger(__name__)

OUTBOX_JOB = "flush-outbox"
PURGE_JOB = "purge-retention"
STALE_JOB = "check-stale"


@dataclass
class PassResult:
    """What one pass over every source did."""

    polls: list[PollResult] = field(default_factory=list)
    outbox: FlushResult = field(default_factory=FlushResult)


class Worker:
    """Everything one process needs: the database, the model, the pipeline and the forwarder."""

    def __init__(self, config: Config, db: Database | None = None) -> None:
        self.config = config
        self.db = db or Database(config.database.url)
        self.registry = ModelRegistry(self.db, config.classifier.models_dir)
        self.alerter = Alerter(config, make_transport(config))
        classifier = ActiveClassifier(self.registry, on_problem=self.alerter.model_problem)
        self.pipeline = Pipeline(self.db, config, Router(config), classifier)
        self.forwarder = Forwarder(self.db, config, make_transport(config))
        self._flush_lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._started = _now()

    def poll(self, name: str) -> PollResult:
        """One poll of the source called ``name``, now, whatever its backoff."""
        source = self.config.source(name)
        result = self.pipeline.poll(name, make_connector(self.config, name), source.batch_size)
        self.alerter.after_poll(result)
        return result

    def _start_watchers(self, stop: threading.Event) -> list[threading.Thread]:
        """One IDLE thread per source that supports push; each wakes its source's poll job."""
        threads = []
        for source in self.config.sources:
            watcher = make_watcher(
                self.config, source.name, partial(self._wake, f"poll:{source.name}")
            )
            if watcher is None:
                continue
            thread = threading.Thread(
                target=watcher.run, args=(stop,), name=f"idle:{source.name}", daemon=True
            )
            thread.start()
            threads.append(thread)
        return threads

    def _wake(self, job_id: str) -> None:
        """Run a scheduled job now (still one instance at a time)."""
        if self._scheduler is None:
            return
        try:
            self._scheduler.modify_job(job_id, next_run_time=_now())
        except JobLookupError:
            log.debug("no job %s to wake", job_id)

    def poll_if_due(self, name: str) -> PollResult | None:
        """The scheduled poll: a failing source waits out its backoff; others are not held up."""
        source = self.config.source(name)
        interval = source.poll_interval or self.config.schedule.poll_interval
        until = self.pipeline.backoff_until(name, interval)
        if until is not None and _now() < until:
            log.debug("%s: backing off until %s", name, until)
            return None
        result = self.poll(name)
        if result.forwarded:
            self._wake(OUTBOX_JOB)  # deliver now, not at the next outbox interval
        return result

    def flush_outbox(self) -> FlushResult:
        """Deliver what is due; one flush at a time in this process."""
        with self._flush_lock:
            return self.forwarder.flush()

    def check_stale(self) -> None:
        """Alert on sources without a successful poll within [alerts] stale_after_minutes."""
        names = [source.name for source in self.config.sources]
        self.alerter.check_stale(self.pipeline.last_successes(names), self._started)

    def purge(self) -> int:
        """Apply the retention policy now; returns how many messages were erased."""
        days = self.config.retention.raw_days
        if not days:
            return 0
        count = purge_before(self.db, _now() - timedelta(days=days))
        log.info("retention: erased the text of %d message(s) older than %d days", count, days)
        return count

    def run_once(self) -> PassResult:
        """Poll every source once, then flush the outbox."""
        result = PassResult()
        for source in self.config.sources:
            result.polls.append(self.poll(source.name))
        result.outbox = self.flush_outbox()
        return result

    def serve(self) -> None:
        """Run the jobs on their schedules until SIGTERM/SIGINT."""
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(2, len(self.config.sources) + 1))},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        for source in self.config.sources:
            interval = source.poll_interval or self.config.schedule.poll_interval
            scheduler.add_job(
                self.poll_if_due,
                "interval",
                args=[source.name],
                seconds=interval,
                id=f"poll:{source.name}",
                misfire_grace_time=max(1, int(interval)),
                next_run_time=_now(),
            )
        outbox = self.config.schedule.outbox_interval
        scheduler.add_job(
            self.flush_outbox,
            "interval",
            seconds=outbox,
            id=OUTBOX_JOB,
            misfire_grace_time=max(1, int(outbox)),
            next_run_time=_now(),
        )
        if self.config.retention.raw_days:
            scheduler.add_job(self.purge, "interval", hours=24, id=PURGE_JOB, next_run_time=_now())
        scheduler.add_job(self.check_stale, "interval", minutes=1, id=STALE_JOB)
        self._scheduler = scheduler
        scheduler.add_listener(
            _log_job_problem, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )
        stop = threading.Event()

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info(
                "%s received: finishing the batch in hand, then stopping",
                signal.Signals(signum).name,
            )
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        scheduler.start()
        watchers = self._start_watchers(stop)
        log.info(
            "worker started: %d source(s), %d watched with IMAP IDLE, outbox every %g s",
            len(self.config.sources),
            len(watchers),
            outbox,
        )
        stop.wait()
        for watcher in watchers:
            watcher.join(timeout=10)
        scheduler.shutdown(wait=True)
        self.db.dispose()
        log.info("worker stopped")


def _now() -> datetime:
    return datetime.now(UTC)


def _log_job_problem(event: JobExecutionEvent) -> None:
    if event.code == EVENT_JOB_ERROR:
        log.error("job %s crashed: %s", event.job_id, event.exception, exc_info=event.exception)
    elif event.code == EVENT_JOB_MISSED:
        log.warning("job %s missed its run time (the worker was busy or suspended)", event.job_id)
    else:
        log.warning("job %s is still running; this run was skipped", event.job_id)
