"""Parse and classify batches, here or in worker processes, so both cores do work.

Parsing mail (the ``email`` package) and the classifier's n-gram features are pure-Python CPU
work that the GIL keeps on one core. A poll hands each fetched batch to a ``Preparer`` and goes
on fetching and storing while worker processes parse and classify it; results come back in
batch order, and nothing is written by them, so a crash loses only work that will be redone.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import multiprocessing
import re
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from multiprocessing.reduction import ForkingPickler
from operator import attrgetter
from pathlib import Path
from typing import Any

from classifiers.base import Prediction
from classifiers.model import Classifier
from connectors.base import RawItem
from triage.intake._multiprocessing import kill_workers
from triage.intake.normalize import ParsedEmail, parse_email
from triage.intake.posts import parse_post
from triage.worker.stopping import Stop, Stopped

log = logging.getLogger(__name__)

NORMALIZERS = {"rfc822": parse_email, "post": parse_post}
"""How each RawItem format becomes a normalized record; a new format is one entry."""

STOP_CHECK_SECONDS = 0.1
"""How often a poll waiting for a batch's preparation looks at the stop request."""

MIN_POOL_BATCH = 32
"""Smaller batches (an IDLE push, a quiet mailbox) are prepared in the polling process: the
round trip to a worker would cost more than it saves."""


@dataclass(slots=True)
class Prepared:
    """One item after parsing and classification; ``error`` says why it must be quarantined."""

    key: str  # the content key (see content_key), hashed here to spare the poller
    raw_key: str  # SHA-256 of the raw bytes: the content key of earlier builds
    email: ParsedEmail | None = None
    error: str | None = None
    predictions: dict[str, Prediction] | None = None


def classification_text(email: ParsedEmail) -> str:
    """Subject and trimmed body, joined as the training files join their text columns."""
    return f"{email.subject}\n{email.text_for_classification}"


def prepare(items: Sequence[RawItem], model: Classifier | None) -> list[Prepared]:
    """Normalize every item, then classify the parsed ones in one model call."""
    prepared = [_normalize(item) for item in items]
    good = [(item, p) for item, p in zip(items, prepared, strict=True) if p.email is not None]
    if model is None or not good:
        return prepared
    try:
        results = model.predict([classification_text(p.email) for _, p in good])  # type: ignore[arg-type]
    except Exception:
        log.exception("classifying a batch failed; classifying its messages one by one")
        for item, entry in good:
            _classify_one(item, entry, model)
        return prepared
    for (_, entry), predictions in zip(good, results, strict=True):
        entry.predictions = predictions
    return prepared


TRACE_HEADERS = re.compile(
    rb"^(?:received|delivered-to|x-original-to|x-delivered-to|return-path|envelope-to"
    rb"|authentication-results|received-spf|arc-[a-z-]+|x-spam-[a-z-]+|x-virus-[a-z-]+"
    rb"|x-rspamd-[a-z-]+)[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*",
    re.IGNORECASE | re.MULTILINE,
)
"""Headers each hop adds on delivery: they differ between two deliveries of one mail."""


def content_key(raw: bytes) -> str:
    """What deduplicates an item, in its source and across sources: replays, re-fetches after
    a crash, and one mail delivered twice (an MTA's retry, a copy to another support address
    or folder), which differs only in the trace headers of its hops and perhaps its line
    endings."""
    raw = raw.replace(b"\r\n", b"\n")
    end = raw.find(b"\n\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 1], raw[end + 1 :])
    return hashlib.sha256(TRACE_HEADERS.sub(b"", head) + body).hexdigest()


def raw_key(raw: bytes) -> str:
    """The content key earlier builds stored, still matched so no message is stored twice."""
    return hashlib.sha256(raw).hexdigest()


def _normalize(item: RawItem) -> Prepared:
    key, legacy = content_key(item.raw), raw_key(item.raw)
    try:
        return Prepared(key, legacy, NORMALIZERS[item.format](item.raw))
    except Exception as exc:  # a poison message must not block the batch
        log.warning("%s cannot be parsed, quarantined: %s", item.source_id, exc)
        return Prepared(key, legacy, error=f"{type(exc).__name__}: {exc}")


def _classify_one(item: RawItem, entry: Prepared, model: Classifier) -> None:
    assert entry.email is not None
    try:
        entry.predictions = model.predict([classification_text(entry.email)])[0]
    except Exception as exc:  # a poison message must not block the batch
        log.warning("%s cannot be classified, quarantined: %s", item.source_id, exc)
        entry.error = f"classification failed: {type(exc).__name__}: {exc}"


class Preparer:
    """Prepares batches in a pool of ``processes`` worker processes (0: in this process).

    The pool starts at the first large batch; each worker loads the model from its artifact
    folder once per version (a fitted model is megabytes: it is never sent with a batch).
    """

    def __init__(self, processes: int, stop: Stop | None = None) -> None:
        self.processes = processes
        self.stop = stop or Stop()
        self._pool: ProcessPoolExecutor | None = None

    def submit(
        self, items: Sequence[RawItem], model: Classifier | None, model_path: Path | None
    ) -> Future[list[Prepared]]:
        """Start preparing ``items``; the future holds one Prepared per item, in order."""
        if self.processes < 1 or len(items) < MIN_POOL_BATCH:
            return _done(prepare(items, model))
        path = str(model_path) if model is not None and model_path is not None else None
        version = model.version if path is not None and model is not None else None
        try:
            return self._executor().submit(_prepare_in_worker, list(items), path, version)
        except BrokenProcessPool:  # a worker died since the last batch: start anew
            self._pool = None
            return self._executor().submit(_prepare_in_worker, list(items), path, version)

    def collect(
        self, future: Future[list[Prepared]], items: Sequence[RawItem], model: Classifier | None
    ) -> list[Prepared]:
        """The future's result; if the worker failed (killed, model unreadable), prepare here.

        Raises:
            Stopped: a stop was requested while the batch was being prepared.
        """
        try:
            return self._wait(future)
        except Stopped:
            raise
        except Exception as exc:
            if self.stop.is_set():
                raise Stopped() from None
            log.error("a parsing worker failed (%s); preparing the batch in this process", exc)
            if isinstance(exc, BrokenProcessPool):
                self._pool = None  # started anew at the next batch
            return prepare(items, model)

    def _wait(self, future: Future[list[Prepared]]) -> list[Prepared]:
        """The result, looking at the stop request while it is not there yet."""
        while True:
            try:
                return future.result(timeout=STOP_CHECK_SECONDS)
            except TimeoutError:
                if self.stop.is_set():
                    future.cancel()
                    raise Stopped() from None

    def start(self, model: Classifier | None, model_path: Path | None) -> None:
        """Start every worker and load the model in it now, rather than in the first poll."""
        if self.processes < 1:
            return
        path = str(model_path) if model is not None and model_path is not None else None
        version = model.version if path is not None and model is not None else None
        executor = self._executor()
        waits = [executor.submit(_load_in_worker, path, version) for _ in range(self.processes)]
        for wait in waits:
            wait.result()

    def close(self) -> None:
        """Stop the worker processes and reap them. After a stop request they are killed:
        nobody will store what they prepare, and they may still be loading the model."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self.stop.is_set():
            kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers fork from a clean server process, never from this one with
            # its scheduler, IDLE and web threads (forking a threaded process can deadlock).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
        return self._pool


def _pickle_as_constructor_call(cls: type) -> None:
    """Send ``cls`` between processes as ``cls(*fields)``.

    A frozen dataclass with slots pickles its state by looking up its fields for every object
    (``dataclasses.fields``), ~8% of the poller's time at full speed, where every message
    crosses twice (a RawItem out; a ParsedEmail and three Predictions back).
    """
    names = tuple(f.name for f in fields(cls) if f.init)
    if names != getattr(cls, "__slots__", None) or len(names) < 2:
        raise TypeError(f"{cls.__name__} is not a slots dataclass of two or more init fields")
    values = attrgetter(*names)

    def reduce(obj: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, values(obj)

    ForkingPickler.register(cls, reduce)


for _sent in (RawItem, ParsedEmail, Prediction, Prepared):
    _pickle_as_constructor_call(_sent)


def freeze_long_lived() -> None:
    """Exempt the objects that exist now (modules, config, model) from garbage collection.

    They live as long as the process, yet each full collection walked all of them (~180,000
    in the polling process): three collections during a poll of 10,000 mails stopped every
    thread for 0.35 s. Call it once set up, and again after a reload or a new model: what
    those replaced is collected first (a full collection, ~80 ms, spared to the first call).
    """
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def _done(result: list[Prepared]) -> Future[list[Prepared]]:
    future: Future[list[Prepared]] = Future()
    future.set_result(result)
    return future


_loaded: Classifier | None = None  # the model of this worker process


def _load_in_worker(path: str | None, version: str | None) -> None:
    global _loaded
    if path is None:
        return
    if _loaded is None or _loaded.version != version:
        _loaded = Classifier.load(Path(path))
        freeze_long_lived()


def _prepare_in_worker(
    items: list[RawItem], path: str | None, version: str | None
) -> list[Prepared]:
    _load_in_worker(path, version)
    return prepare(items, _loaded if path is not None else None)
