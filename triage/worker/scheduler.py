"""The worker: one APScheduler job per source plus one that flushes the outbox.

``run_once`` does one pass over every source, delivering forwards as their batches commit, and
then drains the outbox, which is what ``triage run --once`` and the tests call; ``serve`` runs
the same jobs on a schedule until SIGTERM or SIGINT. A stop is prompt at any moment
(triage/worker/stopping.py): a batch being committed is finished, a forward being sent goes out, what
is being fetched or parsed is abandoned to be read again at the next start, every child process
is reaped and the leases released. SIGHUP re-reads the config file and re-syncs the jobs (an
invalid file is refused and the running config kept). Under systemd it reports READY=1 and keeps
the watchdog fed from a job of its own; the status page, /metrics and /healthz are served on
``[web] listen``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from triage.config import AnySource, Config, check_secrets, load_config
from triage.decide.router import Router
from triage.deliver.alerts import Alerter
from triage.deliver.outbox import FlushResult, Forwarder, Leftover
from triage.deliver.transports import make_transport
from triage.errors import ConfigError
from triage.intake._multiprocessing import kill_descendants, stop_helpers
from triage.intake.corrections import Corrections
from triage.intake.customer import CustomerIntake
from triage.intake.pipeline import Pipeline, Stage
from triage.intake.prepare import Preparer, freeze_long_lived
from triage.intake.results import Outcome, PollResult
from triage.intake.sources import make_connector, make_watcher
from triage.lifecycle.registry import ActiveClassifier, ModelRegistry
from triage.store.database import Database
from triage.store.leases import LeaseLost, Leases
from triage.store.privacy import purge_before
from triage.store.sources import SourceStates
from triage.views import metrics, web
from triage.worker import notify
from triage.worker.stopping import Stop, on_signals

log = logging.getLogger(__name__)

OUTBOX_JOB = "flush-outbox"
PURGE_JOB = "purge-retention"
STALE_JOB = "check-stale"
WATCHDOG_JOB = "watchdog"

STOP_GRACE_SECONDS = 20.0
"""How long a stop waits for the jobs in hand (a commit, a forward being sent, a Telegram long
poll); then it stops without them (a cold stop). Well below systemd's TimeoutStopSec."""


class Wakes:
    """Runs a scheduled job now on request, and never loses a request made while it runs.

    APScheduler runs one instance of a job at a time (``max_instances=1``) and drops a run that
    comes due while the previous one is still going (EVENT_JOB_MAX_INSTANCES); the next run is
    then a whole interval away. But a wake-up means there is work the run in hand may have
    missed: mail that IDLE reported after the poll's FETCH, a forward queued after the flush
    chose what to send. So a job woken while it runs runs again as soon as it ends, in the same
    thread. Jobs are added with ``job(id, func)`` in place of ``func``.
    """

    def __init__(self, scheduler: BackgroundScheduler) -> None:
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: set[str] = set()
        self._pending: set[str] = set()  # woken since its last run began
        self._closed = False
        scheduler.add_listener(self._ended, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def job(self, job_id: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` as the job ``job_id`` runs it: again and again while it is woken meanwhile."""

        def run(*args: Any) -> Any:
            with self._lock:
                self._running.add(job_id)
            try:
                while True:
                    with self._lock:
                        self._pending.discard(job_id)
                    result = func(*args)
                    with self._lock:  # checked under the lock wake() takes: no request slips by
                        if job_id not in self._pending or self._closed:
                            return result
            finally:
                with self._lock:
                    self._running.discard(job_id)
                    self._idle.notify_all()

        return run

    def close(self) -> None:
        """Wake nothing from now on (a stop): the scheduler is being shut down, and asking it
        to run a job would wait on the lock its shutdown holds."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def wait_idle(self, timeout: float) -> list[str]:
        """Wait until no job runs, at most ``timeout`` seconds; returns the jobs still running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            return sorted(self._running)

    def wake(self, job_id: str) -> None:
        """Run the job now; if it is running, run it again right after."""
        with self._lock:
            if self._closed:
                return
            self._pending.add(job_id)
            if job_id in self._running:
                return  # the running job sees the request when it ends
        try:
            self.scheduler.modify_job(job_id, next_run_time=_now())
        except JobLookupError:
            log.debug("no job %s to wake", job_id)

    def _ended(self, event: JobExecutionEvent) -> None:
        # A request made just after the job's last look but before APScheduler counted the run
        # as finished was dropped as "still running": make it again now that it counts as done.
        with self._lock:
            again = event.job_id in self._pending and event.job_id not in self._running
        if again:
            self.wake(event.job_id)


@dataclass
class PassResult:
    """What one pass over every source did, and the forwards it queued that are not delivered."""

    polls: list[PollResult] = field(default_factory=list)
    outbox: FlushResult = field(default_factory=FlushResult)
    left: Leftover = field(default_factory=Leftover)
    stopped: bool = False  # a stop request cut the pass short

    @property
    def failed(self) -> bool:
        """Something did not work: a poll, or a forward this pass queued or tried."""
        return any(poll.error for poll in self.polls) or bool(self.outbox.failed or self.left.count)


class BackgroundFlush(threading.Thread):
    """Flushes the outbox each time it is woken, until stopped; adds up what the flushes did."""

    def __init__(self, flush: Callable[[], FlushResult]) -> None:
        super().__init__(name="outbox", daemon=True)
        self._flush = flush
        self._woken = threading.Event()
        self._stopping = False
        self._total = FlushResult()

    def wake(self) -> None:
        self._woken.set()

    def stop(self) -> FlushResult:
        """Finish the flush in hand, then end; returns the sum of every flush."""
        self._stopping = True
        self._woken.set()
        self.join()
        return self._total

    def run(self) -> None:
        while True:
            self._woken.wait()
            self._woken.clear()
            if self._stopping:
                return
            try:
                self._total += self._flush()
            except Exception:  # the flush after the polls tries again
                log.exception("delivering forwards during the poll failed")


class Worker:
    """Everything one process needs: the database, the model, the pipeline and the forwarder."""

    def __init__(
        self,
        config: Config,
        db: Database | None = None,
        config_path: Path | None = None,
        worker_id: str | None = None,
        stop: Stop | None = None,
    ) -> None:
        self.db = db or Database(config.database.url)
        self.config_path = config_path  # re-read at SIGHUP
        self.stop = stop or Stop()  # shared by every part: one request stops them all
        # A source is polled by one worker at a time; the worker id is the lease owner.
        self.leases = Leases(self.db, worker_id, config.schedule.lease_seconds)
        self.states = SourceStates(self.db)
        self._configure(config, previous=None)
        self._flush_lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._wakes: Wakes | None = None
        self._background_flush: BackgroundFlush | None = None  # during run_once
        self._watchers: dict[str, tuple[threading.Thread, threading.Event, AnySource]] = {}
        self._started = _now()

    def _configure(self, config: Config, previous: tuple[Config, Pipeline] | None) -> None:
        """Build what depends on the config, at start and again at a reload (``previous``: the
        config and pipeline running until now, whose model and parsing processes are kept
        when their settings did not change)."""
        alerter = Alerter(config, make_transport(config), self.db)
        if previous is not None and previous[0].classifier == config.classifier:
            classifier = previous[1].classifier  # the loaded model, and the problems already told
            classifier.on_problem = alerter.model_problem
        else:
            registry = ModelRegistry(self.db, config.classifier.models_dir)
            classifier = ActiveClassifier(registry, on_problem=alerter.model_problem)
        # Replies of departments: their mailbox is recorded by the corrections stage.
        stages: dict[str, Stage] = {}
        if config.corrections is not None:
            stages[config.corrections.source] = Corrections(config, make_transport(config))
        router = Router(config)
        # Each part is swapped whole: jobs already running finish with what they started with.
        self.registry = classifier.registry
        self.alerter = alerter
        self.intake = CustomerIntake(config, router)
        self.pipeline = Pipeline(
            self.db,
            self.intake,
            classifier,
            _preparer(previous[1] if previous else None, config.schedule.parse_workers, self.stop),
            self.states,
            self.stop,
            stages=stages,
            fence=self.leases.fence,
            on_queued=self._forwards_queued,
        )
        self.leases.ttl = config.schedule.lease_seconds
        self.forwarder = Forwarder(self.db, config, make_transport(config), self.stop)
        self.config = config

    def poll(self, name: str) -> PollResult:
        """One poll of the source called ``name``, now, whatever its backoff.

        Skipped (an empty result) while another worker holds the source's lease.
        """
        if not self.leases.claim(name):
            holder = self.leases.holder(name) or "another worker"
            log.debug("%s: polled by %s now, skipped", name, holder)
            return PollResult(name, busy_with=holder)
        source = self.config.source(name)
        began = time.monotonic()
        try:
            connector = make_connector(self.config, name)
            result = self.pipeline.poll(name, connector, source.batch_size)
        except LeaseLost as exc:
            log.warning("%s; the batch in hand was rolled back", exc)
            return PollResult(name)
        except Exception as exc:  # a bug or a store fault: a failed poll all the same
            log.exception("%s: poll crashed", name)
            result = self.pipeline.crashed(name, exc)
        finally:
            self.leases.release(name)
        metrics.observe_poll(result, time.monotonic() - began)
        self.alerter.after_poll(result)
        return result

    def retry_quarantined(self, message_ids: list[int] | None) -> list[Outcome]:
        """Process quarantined messages again (after a fix); None: all of them."""
        model = self.pipeline.classifier.current()
        return self.intake.retry_quarantined(self.db, message_ids, model)

    def _sync_watchers(self) -> None:
        """One IDLE thread per source that supports push; each wakes its source's poll job.

        A source removed or changed by a reload has its watcher stopped (and restarted anew).
        """
        wanted = {source.name: source for source in self.config.sources}
        for name, (_, stop, source) in list(self._watchers.items()):
            if wanted.get(name) != source:
                stop.set()
                del self._watchers[name]
        for name, source in wanted.items():
            if name in self._watchers:
                continue
            watcher = make_watcher(self.config, name, partial(self._wake, f"poll:{name}"))
            if watcher is None:
                continue
            stop = threading.Event()
            thread = threading.Thread(
                target=watcher.run, args=(stop,), name=f"idle:{name}", daemon=True
            )
            thread.start()
            self._watchers[name] = (thread, stop, source)

    def _stop_watchers(self) -> None:
        for _, stop, _ in self._watchers.values():
            stop.set()
        for thread, _, _ in self._watchers.values():
            thread.join(timeout=10)
        self._watchers.clear()

    def _wake(self, job_id: str) -> None:
        """Run a scheduled job now (still one instance at a time; again after the one running)."""
        if self._wakes is not None:
            self._wakes.wake(job_id)

    def poll_if_due(self, name: str) -> PollResult | None:
        """The scheduled poll: a failing source waits out its backoff; others are not held up."""
        if self.stop.is_set() or all(source.name != name for source in self.config.sources):
            return None  # stopping, or removed by a reload while this run was due
        source = self.config.source(name)
        interval = source.poll_interval or self.config.schedule.poll_interval
        until = self.states.backoff_until(name, interval)
        if until is not None and _now() < until:
            log.debug("%s: backing off until %s", name, until)
            return None
        return self.poll(name)

    def _forwards_queued(self) -> None:
        """A committed batch queued forwards: deliver them now, not at the next interval."""
        if self._background_flush is not None:
            self._background_flush.wake()
        else:
            self._wake(OUTBOX_JOB)

    def flush_outbox(self) -> FlushResult:
        """One pass over the due forwards; one flush at a time in this process."""
        with self._flush_lock:
            result = self.forwarder.flush()
        if result.sent:  # the way out works: alerts it failed before go now
            self.alerter.retry_unsent()
        return result

    def drain_outbox(self) -> FlushResult:
        """Deliver everything deliverable now, pass after pass (``run --once``, ``poll``)."""
        with self._flush_lock:
            result = self.forwarder.drain()
        if result.sent:
            self.alerter.retry_unsent()
        return result

    def check_stale(self) -> None:
        """Alert on sources without a successful poll within [alerts] stale_after_minutes."""
        names = [source.name for source in self.config.sources]
        self.alerter.check_stale(self.states.last_successes(names), self._started)

    def purge(self) -> int:
        """Apply the retention policy now; returns how many messages were erased."""
        days = self.config.retention.raw_days
        if not days:
            return 0
        count = purge_before(self.db, _now() - timedelta(days=days))
        log.info("retention: erased the text of %d message(s) older than %d days", count, days)
        return count

    def run_once(self) -> PassResult:
        """Poll every source once, then deliver every forward that can go now.

        Forwards go out on a thread of their own while later batches are read: a department
        need not wait for the end of a first poll of a large mailbox, and delivering (waiting on
        the mail server and the database) overlaps with parsing. The result says which of the
        forwards queued since the pass began are not delivered, and why.
        """
        began = _now()
        result = PassResult()
        freeze_long_lived()
        self._background_flush = BackgroundFlush(self.flush_outbox)
        self._background_flush.start()
        try:
            for source in self.config.sources:
                if self.stop.is_set():
                    self.stop.note(f"{source.name}: not polled")
                    continue
                result.polls.append(self.poll(source.name))
        finally:
            during, self._background_flush = self._background_flush.stop(), None
        return self.finish(result, during, began)

    def finish(self, result: PassResult, during: FlushResult, began: datetime) -> PassResult:
        """Drain the outbox after a pass's polls and fill in what it left undelivered."""
        result.outbox = during + self.drain_outbox()
        result.left = self.forwarder.undelivered_since(began)
        result.stopped = self.stop.is_set()
        return result

    def close(self) -> None:
        """Release what this process holds: the parsing processes (reaped), the leases of
        sources it was polling, the database connections."""
        self._stop_watchers()
        self.pipeline.preparer.close()
        stop_helpers()
        self.leases.release_all()
        self.db.dispose()

    def cold_stop(self, code: int) -> None:
        """A second stop request: end now, with the children, without waiting for the work in
        hand (nothing is lost: uncommitted batches are read again, unsent forwards stay queued).
        Safe in a signal handler: it takes no lock."""
        killed = kill_descendants()
        log.warning("stopped without waiting (%d child process(es) killed)", killed)
        logging.shutdown()
        os._exit(code)

    def serve(self) -> None:
        """Run the jobs on their schedules until SIGTERM/SIGINT; SIGHUP re-reads the config."""
        executors = {"default": ThreadPoolExecutor(max(4, len(self.config.sources) + 2))}
        ping = notify.watchdog_interval()
        if ping:  # its own thread, so slow polls never starve the watchdog
            executors[WATCHDOG_JOB] = ThreadPoolExecutor(1)
        scheduler = BackgroundScheduler(
            executors=executors,
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        self._scheduler = scheduler
        self._wakes = Wakes(scheduler)
        self._sync_jobs()
        scheduler.add_job(
            self._wakes.job(STALE_JOB, self.check_stale), "interval", minutes=1, id=STALE_JOB
        )
        if ping:
            scheduler.add_job(
                notify.watchdog, "interval", seconds=ping, id=WATCHDOG_JOB, executor=WATCHDOG_JOB
            )
        scheduler.add_listener(
            _log_job_problem, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )
        reload, woken = threading.Event(), threading.Event()
        self.stop.on_request = woken.set

        def request_reload(_signum: int, _frame: FrameType | None) -> None:
            reload.set()
            woken.set()

        with on_signals(self.stop, cold=lambda: self.cold_stop(1)):
            signal.signal(signal.SIGHUP, request_reload)
            scheduler.start()
            self._sync_watchers()
            site = web.start(lambda: self.config, self.db, self._started)
            log.info(
                "worker started: %d source(s), %d watched with IMAP IDLE, outbox every %g s",
                len(self.config.sources),
                len(self._watchers),
                self.config.schedule.outbox_interval,
            )
            notify.notify("READY=1", f"STATUS=polling {len(self.config.sources)} source(s)")
            freeze_long_lived()
            while not self.stop.is_set():
                woken.wait()
                woken.clear()
                if reload.is_set() and not self.stop.is_set():
                    reload.clear()
                    self._reload_now()
            self._shut_down(scheduler, site)

    def _shut_down(self, scheduler: BackgroundScheduler, site: web.WebServer | None) -> None:
        """The daemon's stop: no new job starts, the ones in hand end (promptly: they look at
        the stop request), then everything this process holds is released."""
        notify.notify("STOPPING=1")
        assert self._wakes is not None
        self._wakes.close()  # before the shutdown, which holds the lock a wake-up would wait for
        scheduler.shutdown(wait=False)  # the jobs in hand are waited for below, with a limit
        if site is not None:
            site.close()
        self._stop_watchers()
        running = self._wakes.wait_idle(STOP_GRACE_SECONDS)
        if running:
            log.error(
                "still running %g s after the stop request: %s; stopping without them",
                STOP_GRACE_SECONDS,
                ", ".join(running),
            )
            self.leases.release_all()
            self.cold_stop(1)
        self.close()
        log.info("worker %s", self.stop.summary())

    def _reload_now(self) -> None:
        notify.reloading()
        try:
            self.reload()
        except Exception:  # a reload must never take the running worker down
            log.exception("config reload failed; the running config is kept")
        freeze_long_lived()
        notify.notify("READY=1", f"STATUS=polling {len(self.config.sources)} source(s)")

    def reload(self) -> bool:
        """Re-read the config file: sources and departments change without a restart.

        An invalid file (or a secret it names that cannot be read) is refused with the reason
        logged, and the running config is kept. [database] and [web] change only at a restart.
        """
        if self.config_path is None:
            log.warning("SIGHUP: no config file to re-read")
            return False
        log.info("SIGHUP received: re-reading %s", self.config_path)
        try:
            config = load_config(self.config_path)
            check_secrets(config)
        except ConfigError as exc:
            log.error("new config refused, the running one is kept: %s", exc)
            return False
        for section in ("database", "web"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("[%s] changed: that takes effect at the next restart", section)
        config = config.model_copy(
            update={"database": self.config.database, "web": self.config.web}
        )
        before = {source.name for source in self.config.sources}
        self._configure(config, previous=(self.config, self.pipeline))
        if self._scheduler is not None:
            self._sync_jobs()
            self._sync_watchers()
        after = {source.name for source in config.sources}
        log.info(
            "config reloaded: %d source(s) (added: %s; removed: %s), %d department(s)",
            len(after),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
            len(config.departments),
        )
        return True

    def _sync_jobs(self) -> None:
        """Make the scheduled jobs match the config: one poll job per source, outbox, purge."""
        assert self._scheduler is not None
        wanted = {f"poll:{source.name}": source for source in self.config.sources}
        for job in self._scheduler.get_jobs():
            if job.id.startswith("poll:") and job.id not in wanted:
                job.remove()
        for job_id, source in wanted.items():
            interval = source.poll_interval or self.config.schedule.poll_interval
            self._every(job_id, interval, self.poll_if_due, [source.name])
        self._every(OUTBOX_JOB, self.config.schedule.outbox_interval, self.flush_outbox)
        if self.config.retention.raw_days:
            self._every(PURGE_JOB, 24 * 3600, self.purge)
        elif self._scheduler.get_job(PURGE_JOB) is not None:
            self._scheduler.remove_job(PURGE_JOB)

    def _every(
        self, job_id: str, seconds: float, func: Callable[..., Any], args: list[Any] | None = None
    ) -> None:
        """Add an interval job that runs now, or re-time an existing one whose interval changed."""
        assert self._scheduler is not None and self._wakes is not None
        grace = max(1, int(seconds))
        job = self._scheduler.get_job(job_id)
        if job is None:
            self._scheduler.add_job(
                self._wakes.job(job_id, func),
                "interval",
                args=args,
                seconds=seconds,
                id=job_id,
                name=job_id,
                misfire_grace_time=grace,
                next_run_time=_now(),
            )
        elif job.trigger.interval != timedelta(seconds=seconds):
            job.modify(misfire_grace_time=grace)
            job.reschedule("interval", seconds=seconds)


def _now() -> datetime:
    return datetime.now(UTC)


def _preparer(previous: Pipeline | None, processes: int, stop: Stop) -> Preparer:
    """Keep the running worker processes across a reload unless their number changed (an
    old pool ends when the polls still using it are done and it is garbage)."""
    if previous is not None and previous.preparer.processes == processes:
        return previous.preparer
    return Preparer(processes, stop)


def _log_job_problem(event: JobExecutionEvent) -> None:
    if event.code == EVENT_JOB_ERROR:
        log.error("job %s crashed: %s", event.job_id, event.exception, exc_info=event.exception)
    elif event.code == EVENT_JOB_MISSED:
        log.warning("job %s missed its run time (the worker was busy or suspended)", event.job_id)
    else:
        # A poll or flush longer than its interval: normal during a first sync, so not a warning.
        log.info("job %s is still running; this run was skipped", event.job_id)
