"""Training and evaluation: from LabelledData to a Classifier with honest quality estimates.

`train` refuses data that cannot make a useful model, fits the shared features on all texts and
one calibrated classifier per axis, and estimates each axis with stratified k-fold
cross-validation of the *whole* pipeline (features refitted inside every fold, so no
vocabulary or IDF leaks from the held-out rows). The final fits and all folds of all axes run
as one pool of jobs, which keeps both cores busy and lets the CLI draw a progress bar.
`evaluate` scores a model on held-out data, per axis, and `refit` fits an evaluated model's
settings again on all rows (held-out ones included) for the artifact that serves, keeping the
scores and thresholds measured before.

Confidence is checked too: the expected calibration error (ECE) of the out-of-fold predictions is
kept with the CV scores and `evaluate` reports it on held-out data. An axis whose labels include
an out-of-scope label ("oos": none of our categories) gets an abstain threshold, chosen on the
out-of-fold probabilities of the training rows (or on a validation file when one is given),
never on test data; see `classifiers.calibration`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from classifiers import calibration, embeddings, pipeline
from classifiers.base import TrainingError, quoted
from classifiers.datasets import LabelledData
from classifiers.evaluation import fmt_score, label_scores
from classifiers.model import Classifier, library_versions

log = logging.getLogger(__name__)


MODES = ("tfidf", "embeddings")


ProgressCallback = Callable[[str, int, int], None]
"""Called as (description, steps done, steps in total): once at the start with 0 done, then
after each step. The description is the same for the whole run (e.g. "training kind, area"),
so a CLI can key its progress bar on it; each step is logged at DEBUG."""


MIN_EXAMPLES_PER_CLASS = 2


# Below this many labelled (row, axis) pairs, starting worker processes costs more than it saves.
_PARALLEL_MIN_ROWS = 1000


# Recorded in metrics["refit"] of a refitted model, for a reader of its sidecar.
REFIT_NOTE = (
    "cv and holdout were measured on evaluated_version, trained on evaluated_n_samples rows "
    "without the held-out split; this model was then refitted on all n_samples rows with the "
    "same settings and abstain thresholds"
)


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
        "abstain",
        "abstain_threshold",
        "mode",
        "embeddings",
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
    repeated: int  # rows whose text an earlier row of the axis has


def train(
    data: LabelledData,
    *,
    progress: ProgressCallback | None = None,
    cv_folds: int = 5,
    random_state: int = 0,
    source: str = "",
    metadata: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
    validation: LabelledData | None = None,
    abstain_budget: float = calibration.ABSTAIN_BUDGET,
    min_oos_recall: float | None = calibration.MIN_OOS_RECALL,
    mode: str = "tfidf",
    embedding_model: str | os.PathLike[str] | None = None,
    embedding_weight: float = embeddings.DEFAULT_WEIGHT,
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
        validation: Held-out labelled rows (e.g. clinc150 val + oos_val) to choose the abstain
            threshold on, instead of the out-of-fold predictions of the training rows.
        abstain_budget: In-scope accuracy the abstain threshold may cost (see
            `calibration.choose_abstain_threshold`).
        min_oos_recall: Out-of-scope recall the abstain threshold should reach, within
            the budget; None takes the largest threshold within the budget.
        mode: "tfidf" (pure scikit-learn) or "embeddings" (TF-IDF plus sentence embeddings
            from `embedding_model`, a local sentence-transformers directory; needs the
            `embeddings` extra). The sidecar records the mode and the directory's fingerprint.
        embedding_weight: Multiplier of the L2-normalised embedding block.

    Returns:
        The fitted Classifier; its metadata["metrics"]["cv"][axis] holds accuracy, macro_f1,
        ece, n, labels, folds and per_class scores (accuracy None when the estimate was
        skipped). An axis with an out-of-scope label has metadata["abstain_threshold"][axis]
        and metadata["abstain"][axis] (label, threshold, how it was chosen, and the in-scope
        accuracy and out-of-scope recall it gave there); other axes have threshold None.

    Raises:
        TrainingError: If there are no rows or axes, or an axis has no labelled rows, one
            class only, or a class with fewer than 2 examples; or the embeddings mode cannot
            run (no extra, no model directory).
    """
    embedder = _embedder(mode, embedding_model)
    if embedder is not None:
        # Encode every text once, here with all cores, instead of once per CV fold.
        embedder.remember([*data.texts, *(validation.texts if validation else [])])
    features = pipeline.build_features(embedder, embedding_weight)
    # Multithreaded BLAS makes sigmoid calibration (77 tiny fits on banking77) 30x slower
    # here: thread start-up swamps 10,000-element dot products. Worker processes of the
    # pool below are already limited to one thread each by joblib.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(
            data,
            features,
            progress,
            cv_folds,
            random_state,
            source,
            metadata,
            n_jobs,
            validation,
            abstain_budget,
            min_oos_recall,
        )


def _train(
    data: LabelledData,
    features: Any,
    progress: ProgressCallback | None,
    cv_folds: int,
    random_state: int,
    source: str,
    metadata: Mapping[str, Any] | None,
    n_jobs: int | None,
    validation: LabelledData | None,
    abstain_budget: float,
    min_oos_recall: float | None,
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
                    *_embedding_step(features),
                )
            )
    estimators, fold_predictions = _run(jobs, _n_jobs(n_jobs, axes), report)

    outcomes = {axis.name: _cv_outcome(axis, fold_predictions) for axis in axes}
    metrics = {name: outcome[0] for name, outcome in outcomes.items()}
    abstain: dict[str, dict[str, Any]] = {}
    for axis in axes:
        oos = calibration.out_of_scope_label(metrics[axis.name]["labels"])
        if oos is None:
            continue
        if validation is not None and axis.name in validation.axes:
            predicted, confidence, truth = _predict_axis(
                features, estimators[axis.name], validation, axis.name
            )
            chosen_by = f"validation data ({len(truth)} rows)"
        else:
            predicted, confidence = outcomes[axis.name][1], outcomes[axis.name][2]
            truth = axis.labels.tolist()
            chosen_by = f"out-of-fold predictions of {len(axis.folds)}-fold cross-validation"
        choice = (
            calibration.choose_abstain_threshold(
                predicted, confidence, truth, oos, abstain_budget, min_oos_recall
            )
            if len(predicted)
            else None
        )
        if choice is None:
            log.warning("axis %s: no abstain threshold: no held-out %r predictions", axis.name, oos)
            abstain[axis.name] = {"label": oos, "threshold": None, "chosen_by": "none"}
            continue
        abstain[axis.name] = {
            "label": oos,
            "threshold": choice.threshold,
            "chosen_by": chosen_by,
            "budget": abstain_budget,
            "min_oos_recall": min_oos_recall,
            "in_scope_accuracy": choice.in_scope_accuracy,
            "oos_recall": choice.oos_recall,
            "oos_recall_lower_bound": choice.oos_recall_lower_bound,
            "n_in_scope": choice.n_in_scope,
            "n_oos": choice.n_oos,
        }
    if validation is not None and not any(
        entry.get("chosen_by", "").startswith("validation") for entry in abstain.values()
    ):
        log.warning(
            "the validation rows were not used: no axis they label has an out-of-scope "
            "label (%s) to choose an abstain threshold for",
            "/".join(calibration.OUT_OF_SCOPE_LABELS),
        )
    sidecar: dict[str, Any] = {
        **_new_version(data),
        "library_versions": library_versions(),
        "axes": {axis.name: [str(c) for c in estimators[axis.name].classes_] for axis in axes},
        "n_samples": len(data.texts),
        "data_fingerprint": data.fingerprint,
        "source": source,
        "metrics": {"cv": metrics},
        "abstain_threshold": {
            axis.name: abstain.get(axis.name, {}).get("threshold") for axis in axes
        },
        "abstain": abstain,
        "training": {
            "seconds": round(time.monotonic() - started, 1),
            "cv_folds": cv_folds,
            "random_state": random_state,
            "C": pipeline.C,
            "class_weight": pipeline.CLASS_WEIGHT,
            "word_weight": pipeline.WORD_WEIGHT,
        },
        **_mode_entries(features),
        **extra,
    }
    _forget(features)
    # Keep the axis order of the data, whatever order the jobs finished in.
    classifier = Classifier(features, {axis.name: estimators[axis.name] for axis in axes}, sidecar)
    for name, scores in metrics.items():
        log.info(
            "trained %s axis %s: cv accuracy %s, macro-F1 %s (n=%d, %d folds)",
            classifier.version,
            name,
            fmt_score(scores["accuracy"]),
            fmt_score(scores["macro_f1"]),
            scores["n"],
            scores["folds"],
        )
    return classifier


def refit(
    evaluated: Classifier,
    data: LabelledData,
    *,
    progress: ProgressCallback | None = None,
    n_jobs: int | None = None,
) -> Classifier:
    """Fit an evaluated model's features and axes again on more rows, keeping its scores.

    A held-out split makes the recorded quality honest, but a model that serves should learn
    from every labelled row: on the demo data, holding out 20% cost 6 points of kind accuracy
    on the sample mailbox. So the settings that were evaluated are fitted again on all rows;
    the CV and held-out metrics, the abstain thresholds and every other sidecar entry stay as
    measured and chosen, and metrics["refit"] records that they describe the model before
    this refit (its version and row count), so no one reads them as scores of the refit.

    Args:
        evaluated: A model from `train`, already scored (e.g. metrics["holdout"] added).
        data: All rows, usually the evaluated model's training rows plus the held-out ones;
            it must label the same axes.
        progress: Called after each step, for a progress bar (see ProgressCallback).
        n_jobs: Worker processes; None uses all cores, or one for small data.

    Returns:
        A new Classifier (new version, n_samples and data_fingerprint of `data`).

    Raises:
        TrainingError: If `data` cannot make a model (see `train`).
        ValueError: If `data` does not label exactly the evaluated model's axes.
    """
    if set(_check_data(data)) != set(evaluated.axes):
        raise ValueError(
            f"refit data has axes {', '.join(data.axes)}, the model {', '.join(evaluated.axes)}"
        )
    started = time.monotonic()
    embedder, weight = _embedding_step(evaluated.features)
    # The same embedder (not a clone): its directory was fingerprinted into the sidecar.
    features = pipeline.build_features(embedder, weight)
    settings = evaluated.metadata.get("training", {})
    random_state = int(settings.get("random_state", 0))
    axes = [_plan_axis(data, name, 0, random_state) for name in evaluated.axes]
    report = _reporter(progress, f"refitting on all {len(data)} rows", 1 + len(axes))
    report("validated data", 0)
    with threadpool_limits(limits=1, user_api="blas"):
        matrix = features.fit_transform(data.texts)
        report("fitted features", 1)
        jobs = [
            delayed(_fit_axis)(a.name, matrix[a.rows], a.labels, a.smallest, random_state)
            for a in axes
        ]
        estimators, _ = _run(jobs, _n_jobs(n_jobs, axes), report)
    metrics = evaluated.metadata.get("metrics", {})
    sidecar = {
        **evaluated.metadata,
        **_new_version(data),
        "axes": {a.name: [str(c) for c in estimators[a.name].classes_] for a in axes},
        "n_samples": len(data.texts),
        "data_fingerprint": data.fingerprint,
        "metrics": {
            **metrics,
            "refit": {
                "evaluated_version": evaluated.version,
                "evaluated_n_samples": evaluated.metadata.get("n_samples"),
                "n_samples": len(data.texts),
                "note": REFIT_NOTE,
            },
        },
        "training": {
            **settings,
            "seconds": round(settings.get("seconds", 0) + time.monotonic() - started, 1),
        },
    }
    _forget(features)
    classifier = Classifier(features, {a.name: estimators[a.name] for a in axes}, sidecar)
    log.info(
        "refitted %s as %s on all %d rows (evaluated on %s)",
        evaluated.version,
        classifier.version,
        len(data.texts),
        evaluated.metadata.get("n_samples"),
    )
    return classifier


def _predict_axis(
    features: Any, estimator: Any, data: LabelledData, axis: str
) -> tuple[list[str], list[float], list[str]]:
    """Top labels, their probabilities and the truth of `data`'s rows labelled on `axis`."""
    rows, truth = data.labelled(axis)
    if not rows:
        return [], [], []
    proba = estimator.predict_proba(features.transform([data.texts[r] for r in rows]))
    best = proba.argmax(axis=1)
    labels = [str(c) for c in estimator.classes_]
    return [labels[i] for i in best], proba.max(axis=1).tolist(), truth


def _new_version(data: LabelledData) -> dict[str, str]:
    """Sidecar "version" and "created_at" of a model fitted now on `data`."""
    created = datetime.now(UTC)
    # Milliseconds: two trainings on the same data in one second are still two versions.
    stamp = f"{created:%Y%m%dT%H%M%S}.{created.microsecond // 1000:03d}Z"
    return {
        "version": f"{stamp}-{data.fingerprint[:8]}",
        "created_at": created.isoformat(timespec="seconds"),
    }


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
    labels = _one_spelling(name, labels)
    counts = Counter(labels)
    if len(counts) < 2:
        raise TrainingError(
            f"Axis {name!r} has only one class ({labels[0]!r}); it needs at least two."
        )
    rare = sorted(label for label, count in counts.items() if count < MIN_EXAMPLES_PER_CLASS)
    if rare:
        which = f"class {rare[0]!r} has" if len(rare) == 1 else f"classes {quoted(rare)} have"
        raise TrainingError(
            f"Axis {name!r}: {which} fewer than {MIN_EXAMPLES_PER_CLASS} examples; "
            "label more or merge into another class."
        )
    y = np.asarray(labels, dtype=object)
    smallest = min(counts.values())
    _, texts = np.unique(np.asarray([data.texts[row] for row in rows], dtype=object),
                         return_inverse=True)  # fmt: skip
    folds, skipped = _folds(y, texts, min(cv_folds, smallest), random_state)
    repeated = len(y) - int(texts.max()) - 1
    return _Axis(name, np.asarray(rows), y, smallest, folds, skipped, repeated)


def _one_spelling(axis: str, labels: list[str]) -> list[str]:
    """One label written several ways ('Complaint', 'complaint ') as its most common spelling:
    two classes would split its examples, and routing, which compares exactly, would miss
    one of them. Warned of, since the data should say it one way."""
    counts = Counter(labels)
    spellings: dict[str, list[str]] = {}
    for label, _ in counts.most_common():
        spellings.setdefault(" ".join(label.split()).casefold(), []).append(label)
    merged = {}
    for first, *others in spellings.values():
        for other in others:
            merged[other] = first
            log.warning(
                "axis %s: %r (%d rows) taken as %r (%d rows), one label written two ways",
                axis, other, counts[other], first, counts[first],
            )  # fmt: skip
    return [merged.get(label, label) for label in labels] if merged else labels


def _folds(
    y: np.ndarray, texts: np.ndarray, n_folds: int, random_state: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Stratified folds whose training part still has 2 examples per class for calibration.

    Rows repeating one text (``texts`` numbers the distinct texts) stay in one fold: a copy
    in the training part would make the score of its twin a memory test.
    """
    if n_folds < 2:
        return [], "cross-validation is disabled (cv_folds < 2)"
    repeated = len(np.unique(texts)) < len(texts)
    splitter = (
        StratifiedGroupKFold(n_folds, shuffle=True, random_state=random_state)
        if repeated
        else StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
    )
    folds = list(splitter.split(np.zeros(len(y)), y, groups=texts if repeated else None))
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
    embedder: embeddings.SentenceEmbedder | None,
    embedding_weight: float,
) -> tuple[str, str, int, tuple[np.ndarray, np.ndarray]]:
    """Fit features and classifier on one fold's training rows; predict its held-out rows.

    Returns the fold's classes and the calibrated probabilities of its held-out rows, so the
    caller can score labels, calibration and abstention from the same predictions.
    """
    smallest = min(Counter(train_labels).values())
    model = Pipeline(
        [
            ("features", pipeline.build_features(embedder, embedding_weight)),
            ("clf", pipeline.build_axis_classifier(smallest, random_state)),
        ]
    )
    model.fit(list(train_texts), train_labels)
    classes = np.asarray([str(c) for c in model.classes_], dtype=object)
    return "fold", name, number, (classes, model.predict_proba(list(test_texts)))


def _embedder(
    mode: str, model_dir: str | os.PathLike[str] | None
) -> embeddings.SentenceEmbedder | None:
    """The embedding step of `mode`, None for "tfidf"; refuses a mode that cannot run."""
    if mode not in MODES:
        raise TrainingError(f"Unknown classifier mode {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "tfidf":
        return None
    problem = embeddings.unavailable(model_dir)
    if problem:
        raise TrainingError(f"The embeddings mode cannot run: {problem}.")
    return embeddings.SentenceEmbedder(str(Path(str(model_dir)).resolve()))


def _embedding_step(features: Any) -> tuple[embeddings.SentenceEmbedder | None, float]:
    """(embedder, weight) of a feature union; (None, 1.0) in the TF-IDF mode.

    CV folds share the embedder rather than a clone: it learns nothing when fitted, and
    cloning would drop the vectors remembered for the training texts.
    """
    step = dict(features.transformer_list).get("embedding")
    return step, float((features.transformer_weights or {}).get("embedding", 1.0))


def _mode_entries(features: Any) -> dict[str, Any]:
    """Sidecar entries of the feature mode: the embedding directory and its fingerprint."""
    step, weight = _embedding_step(features)
    if step is None:
        return {"mode": "tfidf"}
    entry = embeddings.sidecar_entry(Path(step.model_dir), weight)
    return {"mode": "embeddings", "embeddings": entry}


def _forget(features: Any) -> None:
    """Drop the vectors remembered for training, so the artifact stores no texts."""
    step, _ = _embedding_step(features)
    if step is not None:
        step.forget()


def _run(
    jobs: list[Any], n_jobs: int, report: Callable[[str, int], None]
) -> tuple[dict[str, Any], dict[str, dict[int, Any]]]:
    """Run fit and fold jobs in one pool, reporting each as it finishes."""
    estimators: dict[str, Any] = {}
    folds: dict[str, dict[int, Any]] = {}
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


def _cv_outcome(
    axis: _Axis, fold_predictions: Mapping[str, Mapping[int, Any]]
) -> tuple[dict[str, Any], list[str], list[float]]:
    """Assemble out-of-fold predictions of one axis into its scores.

    Returns:
        (scores, out-of-fold top labels, their probabilities); the lists are empty when
        cross-validation was skipped.
    """
    labels = sorted(set(axis.labels.tolist()))
    if not axis.folds:
        log.warning("axis %s: no cross-validation estimate: %s", axis.name, axis.cv_skipped)
        scores = {
            **label_scores([], []),
            "ece": None,
            "n": len(axis.labels),
            "labels": labels,
            "folds": 0,
            "skipped": axis.cv_skipped,
            "repeated_texts": axis.repeated,
        }
        return scores, [], []
    predicted = np.empty(len(axis.labels), dtype=object)
    confidence = np.empty(len(axis.labels), dtype=float)
    for number, (_, test_rows) in enumerate(axis.folds):
        classes, proba = fold_predictions[axis.name][number]
        best = proba.argmax(axis=1)
        predicted[test_rows] = classes[best]
        confidence[test_rows] = proba[np.arange(len(best)), best]
    truth = axis.labels.tolist()
    scores = label_scores(truth, predicted.tolist())
    scores["ece"] = calibration.expected_calibration_error(confidence, predicted == axis.labels)
    return (
        {**scores, "labels": labels, "folds": len(axis.folds), "repeated_texts": axis.repeated},
        predicted.tolist(),
        confidence.tolist(),
    )


def _reporter(
    progress: ProgressCallback | None, description: str, total: int
) -> Callable[[str, int], None]:
    """Bind the description and step count, so callers only say which step finished."""

    def report(step: str, done: int) -> None:
        log.debug("%s: %s (%d/%d)", description, step, done, total)
        if progress is not None:
            progress(description, done, total)

    return report
