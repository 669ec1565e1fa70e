"""Training and evaluation: from LabelledData to a Classifier with honest quality estimates.

`train` refuses data that cannot make a useful model, fits the shared features on all texts and
one calibrated classifier per axis, and estimates each axis with stratified k-fold
cross-validation of the *whole* pipeline (features refitted inside every fold, so no
vocabulary or IDF leaks from the held-out rows). The final fits and all folds of all axes run
as one pool of jobs, which keeps both cores busy and lets the CLI draw a progress bar.
`evaluate` scores a model on held-out data, per axis.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from classifiers import pipeline
from classifiers.base import DatasetError, TrainingError
from classifiers.datasets import LabelledData
from classifiers.model import Classifier, library_versions

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""Called as (description, steps done, steps in total): once at the start with 0 done, then
after each step. The description is the same for the whole run (e.g. "training kind, area"),
so a CLI can key its progress bar on it; each step is logged at DEBUG."""

MIN_EXAMPLES_PER_CLASS = 2
# Below this many labelled (row, axis) pairs, starting worker processes costs more than it saves.
_PARALLEL_MIN_ROWS = 1000
_RESERVED_KEYS = frozenset(
    {
        "format",
        "version",
        "sha256",
        "created_at",
        "library_versions",
        "axes",
        "n_samples",
        "data_fingerprint",
        "source",
        "metrics",
        "training",
    }
)


@dataclass(frozen=True, slots=True)
class _Axis:
    """The rows labelled on one axis, and the folds that estimate its quality."""

    name: str
    rows: np.ndarray
    labels: np.ndarray
    smallest: int
    folds: list[tuple[np.ndarray, np.ndarray]]
    cv_skipped: str


def train(
    data: LabelledData,
    *,
    progress: ProgressCallback | None = None,
    cv_folds: int = 5,
    random_state: int = 0,
    source: str = "",
    metadata: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
) -> Classifier:
    """Fit a Classifier on every axis of `data` and estimate its quality by cross-validation.

    Args:
        data: Texts and per-axis labels; each axis uses only the rows labelled on it.
        progress: Called after each step, for a progress bar (see ProgressCallback).
        cv_folds: Folds of the quality estimate, lowered to the smallest class's size;
            0 or 1 skips the estimate (the model itself is the same).
        random_state: Seed of all fold shuffling and of liblinear; same data, same model.
        source: Where the data came from (e.g. the file name), kept in the sidecar.
        metadata: Extra JSON-serializable sidecar entries (e.g. {"text_columns": [...]});
            they may not replace the keys this function writes.
        n_jobs: Worker processes; None uses all cores, or one for small data.

    Returns:
        The fitted Classifier; its metadata["metrics"]["cv"][axis] holds accuracy, macro_f1,
        n, labels, folds and per_class scores (accuracy None when the estimate was skipped).

    Raises:
        TrainingError: If there are no rows or axes, or an axis has no labelled rows, one
            class only, or a class with fewer than 2 examples.
    """
    # Multithreaded BLAS makes sigmoid calibration (77 tiny fits on banking77) 30x slower
    # here: thread start-up swamps 10,000-element dot products. Worker processes of the
    # pool below are already limited to one thread each by joblib.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(data, progress, cv_folds, random_state, source, metadata, n_jobs)


def _train(
    data: LabelledData,
    progress: ProgressCallback | None,
    cv_folds: int,
    random_state: int,
    source: str,
    metadata: Mapping[str, Any] | None,
    n_jobs: int | None,
) -> Classifier:
    """Body of train(), run with BLAS limited to one thread."""
    started = time.monotonic()
    extra = dict(metadata or {})
    clash = sorted(_RESERVED_KEYS & extra.keys())
    if clash:
        raise ValueError(f"metadata may not set {', '.join(clash)}")
    axes = [_plan_axis(data, name, cv_folds, random_state) for name in _check_data(data)]
    steps = 1 + sum(1 + len(axis.folds) for axis in axes)
    report = _reporter(progress, f"training {', '.join(a.name for a in axes)}", steps)
    report("validated data", 0)

    features = pipeline.build_features()
    try:
        matrix = features.fit_transform(data.texts)
    except ValueError as exc:  # scikit-learn's "empty vocabulary"
        raise TrainingError(f"The texts have no words or characters to learn from: {exc}.") from exc
    report("fitted features", 1)

    texts = np.asarray(data.texts, dtype=object)
    jobs: list[Any] = []
    for axis in axes:
        jobs.append(
            delayed(_fit_axis)(
                axis.name, matrix[axis.rows], axis.labels, axis.smallest, random_state
            )
        )
    for axis in axes:
        for number, (train_rows, test_rows) in enumerate(axis.folds):
            jobs.append(
                delayed(_cross_validate_fold)(
                    axis.name,
                    number,
                    texts[axis.rows[train_rows]],
                    axis.labels[train_rows],
                    texts[axis.rows[test_rows]],
                    random_state,
                )
            )
    estimators, fold_predictions = _run(jobs, _n_jobs(n_jobs, axes), report)

    metrics = {axis.name: _cv_metrics(axis, fold_predictions) for axis in axes}
    created = datetime.now(UTC)
    version = f"{created:%Y%m%dT%H%M%SZ}-{data.fingerprint[:8]}"
    sidecar: dict[str, Any] = {
        "version": version,
        "created_at": created.isoformat(timespec="seconds"),
        "library_versions": library_versions(),
        "axes": {axis.name: [str(c) for c in estimators[axis.name].classes_] for axis in axes},
        "n_samples": len(data.texts),
        "data_fingerprint": data.fingerprint,
        "source": source,
        "metrics": {"cv": metrics},
        "training": {
            "seconds": round(time.monotonic() - started, 1),
            "cv_folds": cv_folds,
            "random_state": random_state,
            "C": pipeline.C,
            "class_weight": pipeline.CLASS_WEIGHT,
            "word_weight": pipeline.WORD_WEIGHT,
        },
        **extra,
    }
    # Keep the axis order of the data, whatever order the jobs finished in.
    classifier = Classifier(features, {axis.name: estimators[axis.name] for axis in axes}, sidecar)
    for name, scores in metrics.items():
        log.info(
            "trained %s axis %s: cv accuracy %s, macro-F1 %s (n=%d, %d folds)",
            version,
            name,
            _fmt(scores["accuracy"]),
            _fmt(scores["macro_f1"]),
            scores["n"],
            scores["folds"],
        )
    return classifier


def evaluate(classifier: Classifier, data: LabelledData) -> dict[str, dict[str, Any]]:
    """Score `classifier` on labelled data, per axis, using the rows labelled on that axis.

    Args:
        classifier: The model to score.
        data: Held-out texts and labels; its axes must be a subset of the model's.

    Returns:
        Axis name to {"accuracy", "macro_f1", "n", "per_class": {label: {"precision",
        "recall", "f1", "support"}}}; accuracy and macro_f1 are None when n is 0.

    Raises:
        DatasetError: If the data has an axis the model does not know (both lists named).
    """
    unknown = [axis for axis in data.axes if axis not in classifier.axes]
    if unknown:
        raise DatasetError(
            f"Axis {', '.join(unknown)} of the data is not in model {classifier.version}; "
            f"the data has {', '.join(data.axes)}, the model has {', '.join(classifier.axes)}."
        )
    labelled = {axis: data.labelled(axis) for axis in data.axes}
    rows = sorted({row for axis_rows, _ in labelled.values() for row in axis_rows})
    predictions = dict(zip(rows, classifier.predict([data.texts[r] for r in rows]), strict=True))
    results: dict[str, dict[str, Any]] = {}
    for axis, (axis_rows, truth) in labelled.items():
        predicted = [predictions[row][axis].label for row in axis_rows]
        results[axis] = _scores(truth, predicted)
        log.info(
            "evaluated %s axis %s: accuracy %s, macro-F1 %s (n=%d)",
            classifier.version,
            axis,
            _fmt(results[axis]["accuracy"]),
            _fmt(results[axis]["macro_f1"]),
            results[axis]["n"],
        )
    return results


def _check_data(data: LabelledData) -> tuple[str, ...]:
    """Refuse data without rows or axes; per-axis checks follow in _plan_axis."""
    if not data.texts:
        raise TrainingError("There are no rows to train on.")
    if not data.axes:
        raise TrainingError("The data has no label column, so there is no axis to train.")
    return data.axes


def _plan_axis(data: LabelledData, name: str, cv_folds: int, random_state: int) -> _Axis:
    """Check one axis can make a useful model and choose its cross-validation folds."""
    rows, labels = data.labelled(name)
    if not rows:
        raise TrainingError(f"Axis {name!r} has no labelled rows.")
    counts = Counter(labels)
    if len(counts) < 2:
        raise TrainingError(
            f"Axis {name!r} has only one class ({labels[0]!r}); it needs at least two."
        )
    rare = sorted(label for label, count in counts.items() if count < MIN_EXAMPLES_PER_CLASS)
    if rare:
        which = f"class {rare[0]!r} has" if len(rare) == 1 else f"classes {_quoted(rare)} have"
        raise TrainingError(
            f"Axis {name!r}: {which} fewer than {MIN_EXAMPLES_PER_CLASS} examples; "
            "label more or merge into another class."
        )
    y = np.asarray(labels, dtype=object)
    smallest = min(counts.values())
    folds, skipped = _folds(y, min(cv_folds, smallest), random_state)
    return _Axis(name, np.asarray(rows), y, smallest, folds, skipped)


def _folds(
    y: np.ndarray, n_folds: int, random_state: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Stratified folds whose training part still has 2 examples per class for calibration."""
    if n_folds < 2:
        return [], "cross-validation is disabled (cv_folds < 2)"
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
    folds = list(splitter.split(np.zeros(len(y)), y))
    for train_rows, _ in folds:
        if min(Counter(y[train_rows]).values()) < MIN_EXAMPLES_PER_CLASS:
            return [], "a class is too small to cross-validate (needs 3 examples)"
    return folds, ""


def _fit_axis(
    name: str, matrix: Any, labels: np.ndarray, smallest: int, random_state: int
) -> tuple[str, str, int, Any]:
    """Fit the final calibrated classifier of one axis on its rows of the shared features."""
    estimator = pipeline.build_axis_classifier(smallest, random_state)
    estimator.fit(matrix, labels)
    return "fit", name, -1, estimator


def _cross_validate_fold(
    name: str,
    number: int,
    train_texts: np.ndarray,
    train_labels: np.ndarray,
    test_texts: np.ndarray,
    random_state: int,
) -> tuple[str, str, int, np.ndarray]:
    """Fit features and classifier on one fold's training rows; predict its held-out rows."""
    smallest = min(Counter(train_labels).values())
    model = Pipeline(
        [
            ("features", pipeline.build_features()),
            ("clf", pipeline.build_axis_classifier(smallest, random_state)),
        ]
    )
    model.fit(list(train_texts), train_labels)
    return "fold", name, number, model.predict(list(test_texts))


def _run(
    jobs: list[Any], n_jobs: int, report: Callable[[str, int], None]
) -> tuple[dict[str, Any], dict[str, dict[int, np.ndarray]]]:
    """Run fit and fold jobs in one pool, reporting each as it finishes."""
    estimators: dict[str, Any] = {}
    folds: dict[str, dict[int, np.ndarray]] = {}
    done = 1
    results: Iterable[tuple[str, str, int, Any]] = Parallel(
        n_jobs=n_jobs, return_as="generator_unordered"
    )(jobs)
    for kind, name, number, value in results:
        done += 1
        if kind == "fit":
            estimators[name] = value
            report(f"fitted axis {name}", done)
        else:
            folds.setdefault(name, {})[number] = value
            report(f"cross-validated axis {name}, fold {number + 1}", done)
    return estimators, folds


def _n_jobs(n_jobs: int | None, axes: Sequence[_Axis]) -> int:
    """Use all cores for real data, and skip process start-up for small data."""
    if n_jobs is not None:
        return n_jobs
    return -1 if sum(len(axis.rows) for axis in axes) >= _PARALLEL_MIN_ROWS else 1


def _cv_metrics(
    axis: _Axis, fold_predictions: Mapping[str, Mapping[int, np.ndarray]]
) -> dict[str, Any]:
    """Assemble out-of-fold predictions of one axis into its scores."""
    labels = sorted(set(axis.labels.tolist()))
    if not axis.folds:
        log.warning("axis %s: no cross-validation estimate: %s", axis.name, axis.cv_skipped)
        return {
            **_scores([], []),
            "n": len(axis.labels),
            "labels": labels,
            "folds": 0,
            "skipped": axis.cv_skipped,
        }
    predicted = np.empty(len(axis.labels), dtype=object)
    for number, (_, test_rows) in enumerate(axis.folds):
        predicted[test_rows] = fold_predictions[axis.name][number]
    scores = _scores(axis.labels.tolist(), predicted.tolist())
    return {**scores, "labels": labels, "folds": len(axis.folds)}


def _scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class scores, as plain JSON-ready numbers."""
    if not truth:
        return {"accuracy": None, "macro_f1": None, "n": 0, "per_class": {}}
    # Labels predicted but absent from the truth count too: they are real mistakes.
    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
        ),
        "n": len(truth),
        "per_class": per_class,
    }


def _reporter(
    progress: ProgressCallback | None, description: str, total: int
) -> Callable[[str, int], None]:
    """Bind the description and step count, so callers only say which step finished."""

    def report(step: str, done: int) -> None:
        log.debug("%s: %s (%d/%d)", description, step, done, total)
        if progress is not None:
            progress(description, done, total)

    return report


def _quoted(names: Iterable[str]) -> str:
    """Quote names for a message: 'a', 'b'."""
    return ", ".join(repr(name) for name in names)


def _fmt(value: float | None) -> str:
    """Format a score for the log; None means it was not estimated."""
    return "n/a" if value is None else f"{value:.3f}"
