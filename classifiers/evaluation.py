"""Scoring a model on labelled rows, per axis: accuracy, macro-F1, per-class precision and
recall, the calibration error of its confidences and, on an axis with an out-of-scope label,
the abstain numbers. Used on held-out rows, on an evaluation file, and by the gate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from classifiers import calibration
from classifiers.base import DatasetError
from classifiers.datasets import LabelledData
from classifiers.model import Classifier

log = logging.getLogger(__name__)


def evaluate(classifier: Classifier, data: LabelledData) -> dict[str, dict[str, Any]]:
    """Score `classifier` on labelled data, per axis, using the rows labelled on that axis.

    Args:
        classifier: The model to score.
        data: Held-out texts and labels; its axes must be a subset of the model's.

    Returns:
        Axis name to {"accuracy", "macro_f1", "ece", "n", "per_class": {label: {"precision",
        "recall", "f1", "support"}}}; accuracy, macro_f1 and ece are None when n is 0.
        An abstention counts as a prediction of the axis's out-of-scope label. Axes with one
        also get "in_scope_accuracy", "oos_recall" (None without such rows),
        "abstain_threshold" and "abstained" (the fraction of rows abstained on). ECE is
        measured on the top label, abstained or not.

    Raises:
        DatasetError: If the data has an axis the model does not know (both lists named).
    """
    results: dict[str, dict[str, Any]] = {}
    for axis, outcome in predict_labelled(classifier, data).items():
        results[axis] = label_scores(outcome.truth, outcome.decided)
        hits = [p == t for p, t in zip(outcome.predicted, outcome.truth, strict=True)]
        results[axis]["ece"] = calibration.expected_calibration_error(outcome.confidence, hits)
        if outcome.oos_label is not None:
            in_scope, recall = calibration.abstain_scores(
                outcome.predicted,
                outcome.confidence,
                outcome.truth,
                outcome.oos_label,
                outcome.threshold or 0.0,
            )
            results[axis].update(
                in_scope_accuracy=in_scope,
                oos_recall=recall,
                abstain_threshold=outcome.threshold,
                abstained=sum(outcome.abstained) / len(outcome.abstained)
                if outcome.abstained
                else None,
            )
        log.info(
            "evaluated %s axis %s: accuracy %s, macro-F1 %s (n=%d)",
            classifier.version,
            axis,
            fmt_score(results[axis]["accuracy"]),
            fmt_score(results[axis]["macro_f1"]),
            results[axis]["n"],
        )
    return results


@dataclass(frozen=True, slots=True)
class AxisOutcome:
    """What a model said about the rows of one axis, next to the truth.

    Attributes:
        rows: Row numbers in the data.
        truth: True labels.
        predicted: Top labels.
        confidence: Their calibrated probabilities.
        abstained: Whether each prediction abstained.
        decided: The label acted on: the out-of-scope label when abstained (if the axis has
            one), else the top label.
        oos_label: The axis's out-of-scope label, or None.
        threshold: The abstain threshold, or None.
    """

    rows: list[int]
    truth: list[str]
    predicted: list[str]
    confidence: list[float]
    abstained: list[bool]
    decided: list[str]
    oos_label: str | None
    threshold: float | None


def predict_labelled(classifier: Classifier, data: LabelledData) -> dict[str, AxisOutcome]:
    """Predict every labelled row once and line the answers up with the truth, per axis.

    Raises:
        DatasetError: If the data has an axis the model does not know.
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
    outcomes: dict[str, AxisOutcome] = {}
    for axis, (axis_rows, truth) in labelled.items():
        threshold, oos = classifier.abstain_rule(axis)
        answers = [predictions[row][axis] for row in axis_rows]
        outcomes[axis] = AxisOutcome(
            rows=axis_rows,
            truth=truth,
            predicted=[p.label for p in answers],
            confidence=[p.confidence for p in answers],
            abstained=[p.abstained for p in answers],
            decided=[oos if (p.abstained and oos is not None) else p.label for p in answers],
            oos_label=oos,
            threshold=threshold,
        )
    return outcomes


def label_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
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


def fmt_score(value: float | None) -> str:
    """Format a score for the log; None means it was not estimated."""
    return "n/a" if value is None else f"{value:.3f}"
