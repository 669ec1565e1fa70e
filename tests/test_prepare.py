"""The Preparer: worker processes give the same results as the polling process, in order."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest

from classifiers.base import Prediction
from classifiers.model import Classifier
from connectors.base import RawItem
from tests.conftest import tiny_text
from triage.intake.prepare import (
    MIN_POOL_BATCH,
    Preparer,
    _pickle_as_constructor_call,
    freeze_long_lived,
    prepare,
)

KINDS = ("complaint", "feedback", "question")
AREAS = ("billing", "delivery")


def _items(count: int) -> list[RawItem]:
    items = []
    for index in range(count):
        subject, body = tiny_text(KINDS[index % 3], AREAS[index % 2])
        raw = (
            f"From: c{index}@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <m{index}@example.com>\r\n\r\n{body}\r\n"
        ).encode()
        items.append(RawItem("mail", f"imap:x/INBOX:1:{index}", raw, datetime.now(UTC)))
    items.append(RawItem("mail", "imap:x/INBOX:1:bad", b"\xff", datetime.now(UTC), format="post"))
    return items


def _summary(prepared: list) -> list[tuple]:
    return [
        (
            p.email.subject if p.email else None,
            p.error is not None,
            {axis: q.label for axis, q in (p.predictions or {}).items()},
        )
        for p in prepared
    ]


@pytest.fixture
def preparer() -> Preparer:
    preparer = Preparer(2)
    yield preparer
    preparer.close()


def test_worker_processes_prepare_what_the_polling_process_would(
    tiny_model: tuple[Classifier, Path], preparer: Preparer
) -> None:
    model, path = tiny_model
    items = _items(MIN_POOL_BATCH * 2)
    pooled = preparer.submit(items, model, path).result(timeout=120)
    assert pooled == prepare(items, model)  # every field survives the trip between processes
    assert pooled[-1].error is not None and pooled[-1].email is None
    assert {p.predictions["kind"].label for p in pooled[:-1]} == set(KINDS)


def test_items_and_results_cross_processes_whole() -> None:
    item = RawItem("mail", "imap:x/INBOX:1:7", b"raw", datetime.now(UTC), extra={"uid": 7})
    result = prepare([item], None)[0]
    for value in (item, result, result.email, Prediction("billing", 0.75, abstained=True)):
        assert pickle.loads(ForkingPickler.dumps(value)) == value


def test_only_plain_slots_dataclasses_are_sent_as_constructor_calls() -> None:
    @dataclass
    class Loose:
        a: int
        b: int

    with pytest.raises(TypeError, match="Loose is not a slots dataclass"):
        _pickle_as_constructor_call(Loose)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freezing_long_lived_objects_still_collects_what_they_replaced() -> None:
    kept = _Cycle()
    dropped = weakref.ref(kept)
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
        del kept
        gc.collect()
        assert dropped() is not None  # frozen: the collector no longer looks at it
        freeze_long_lived()  # as after a reload
        assert dropped() is None
    finally:
        gc.unfreeze()


def test_worker_processes_freeze_their_model(
    tiny_model: tuple[Classifier, Path], preparer: Preparer
) -> None:
    model, path = tiny_model
    preparer.start(model, path)
    assert preparer._executor().submit(gc.get_freeze_count).result(timeout=60) > 0


def test_small_batches_and_no_model_are_prepared_in_this_process(
    tiny_model: tuple[Classifier, Path],
) -> None:
    preparer = Preparer(2)
    model, path = tiny_model
    future = preparer.submit(_items(3), model, path)
    assert future.done() and preparer._pool is None
    unclassified = Preparer(0).submit(_items(MIN_POOL_BATCH), None, None).result()
    assert all(p.predictions is None for p in unclassified)
    assert all(p.email is not None for p in unclassified[:-1])


def test_a_killed_worker_costs_no_batch(
    tiny_model: tuple[Classifier, Path], preparer: Preparer
) -> None:
    model, path = tiny_model
    items = _items(MIN_POOL_BATCH)
    preparer.start(model, path)
    for pid in list(preparer._pool._processes):  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
    future = preparer.submit(items, model, path)
    assert _summary(preparer.collect(future, items, model)) == _summary(prepare(items, model))
    again = preparer.submit(items, model, path)  # a new pool
    assert _summary(preparer.collect(again, items, model)) == _summary(prepare(items, model))
