"""One poll of one source: fetch, prepare, record, batch after batch.

Each batch is written in ONE transaction together with the source's checkpoint, so a crash
replays the batch and the unique content key absorbs the replay. The batch is recorded by its
source's stage (``Stage``): customers' requests by ``customer.CustomerIntake``, a corrections
mailbox by ``corrections.Corrections``. Batches are prepared ahead of their commit (one per
parsing process), so fetching, parsing and storing overlap. A stop request abandons what is not
committed; a source's failure, pause and success are recorded in its state row.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from itertools import islice
from typing import Protocol

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from classifiers.model import Classifier
from connectors.base import (
    Checkpoint,
    Connector,
    ConnectorAuthError,
    ConnectorError,
    ConnectorRateLimited,
    RawItem,
)
from triage.faults import crash_point
from triage.intake.prepare import Prepared, Preparer
from triage.intake.results import Outcome, PollResult
from triage.lifecycle.registry import ActiveClassifier
from triage.store.database import Database
from triage.store.sources import SourceStates
from triage.worker.stopping import Stop, Stopped

log = logging.getLogger(__name__)


class Stage(Protocol):
    """Records a batch of one kind of source in the caller's transaction."""

    prepares: bool  # parse and classify the items in the parsing processes first

    def record(
        self,
        session: Session,
        source: str,
        items: list[RawItem],
        prepared: list[Prepared] | None,
        model: Classifier | None,
    ) -> list[Outcome]: ...

    def committed(self) -> None:
        """Called after each batch it recorded is committed (what it owes goes out now)."""
        ...


Fence = Callable[[Session, str], None]
"""Called first in each batch's transaction: the worker's lease renewal, which raises (rolling
the batch back) when another worker took the source over (triage/store/leases.py)."""

_InFlight = tuple[list[tuple[RawItem, Checkpoint]], "Future[list[Prepared]] | None"]


class Pipeline:
    """Runs polls for the sources of one config against one database.

    Args:
        db: the store.
        intake: the stage of customers' requests, for every source ``stages`` does not name.
        classifier: the active model, read at the start of each poll.
        preparer: parses and classifies batches (in worker processes when configured).
        states: the sources' checkpoints and health.
        stop: the worker's stop request.
        stages: source name to the stage of a source that is not customer mail.
        fence: the lease check in each batch's transaction (None: a single worker).
        on_queued: called after a batch that queued forwards is committed, so they go out
            while later batches are read.
    """

    def __init__(
        self,
        db: Database,
        intake: Stage,
        classifier: ActiveClassifier,
        preparer: Preparer,
        states: SourceStates,
        stop: Stop,
        *,
        stages: Mapping[str, Stage] | None = None,
        fence: Fence | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.intake = intake
        self.classifier = classifier
        self.preparer = preparer
        self.states = states
        self.stop = stop
        self.stages = dict(stages or {})
        self.fence = fence
        self.on_queued = on_queued
        # Crashed polls in a row per source, for when the database cannot count them.
        self._crashes: dict[str, int] = {}

    def stage(self, source: str) -> Stage:
        return self.stages.get(source, self.intake)

    def poll(self, name: str, connector: Connector, batch_size: int = 500) -> PollResult:
        """Read everything new from ``connector`` and record it; never raises for source errors.

        A source the service rate-limited is skipped until its pause ends, without blocking
        other sources; what was read before the limit hit is committed.
        """
        result = PollResult(name)
        if paused := self.states.paused_until(name):
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
        result.recovered_from = self.states.record_success(name)
        self._crashes.pop(name, None)
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
            result.paused_until = self.states.record_pause(name, exc.retry_at, str(exc))
            log.warning("%s: %s", name, exc)
            return result
        result.error = str(exc)
        result.permanent = isinstance(exc, ConnectorAuthError)
        result.streak = self.states.record_failure(name, str(exc))
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
            for batch in _batched(connector.fetch(self.states.checkpoint(name)), batch_size):
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
        if not self.stage(name).prepares:
            return None  # the stage reads its items itself
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
            stage = self.stage(source)
            outcomes = stage.record(session, source, items, prepared, model)
            self.states.save_checkpoint(session, source, batch[-1][1])
        crash_point("committed")
        stage.committed()
        return outcomes

    def crashed(self, name: str, exc: Exception) -> PollResult:
        """The result of a poll that raised what no source error explains (a bug, a database
        fault): a failed poll, so the backoff, `status`, /healthz and the alerts all see it."""
        result = PollResult(name)
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        result.error = f"poll crashed: {type(cause).__name__}: {reason}"
        self._crashes[name] = self._crashes.get(name, 0) + 1
        try:
            result.streak = self.states.record_failure(name, result.error)
        except Exception:  # the store itself is failing: count in memory meanwhile
            log.warning("%s: the failed poll cannot be recorded in the database either", name)
            result.streak = self._crashes[name]
        return result


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
