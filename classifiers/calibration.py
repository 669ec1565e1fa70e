"""How far confidences can be trusted, and when the model should abstain instead of guessing.

Two questions the router's thresholds depend on:

- Is a confidence of 0.8 right 80% of the time? `expected_calibration_error` answers with one
  number (the support-weighted gap between confidence and accuracy over equal-width bins) and
  `reliability` with the per-bin values a calibration curve is drawn from.
- Below which confidence is "none of our categories" the better answer? `choose_abstain_threshold`
  picks it from held-out probabilities (out-of-fold predictions of the training rows, or a
  validation file), never from test data: the lowest threshold that catches `min_recall` of
  the out-of-scope rows with 95% confidence, but never one costing more than `budget` of
  in-scope accuracy. Abstaining only as much as the recall goal needs keeps every answer
  that is not needed for it; the budget bounds the price when the goal is out of reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15
# Abstaining may cost at most this much in-scope accuracy (1 point). A product rule, fixed
# before looking at any test set: the review queue is cheaper than a wrong department.
ABSTAIN_BUDGET = 0.01
# Share of out-of-scope messages the threshold should catch (the product target of the
# triage-quality issue), and the one-sided 95% normal quantile of the confidence it is
# required with: a recall measured on ~100 out-of-scope rows is uncertain by +-5 points.
MIN_OOS_RECALL = 0.60
_Z_95 = 1.645
# Labels meaning "none of our categories" (clinc150 calls it "oos").
OUT_OF_SCOPE_LABELS = ("oos", "out_of_scope", "out-of-scope")
_GRID = np.round(np.arange(0.0, 1.0, 0.01), 2)


@dataclass(frozen=True, slots=True)
class AbstainChoice:
    """A chosen threshold with what it achieved on the rows it was chosen on."""

    threshold: float
    in_scope_accuracy: float
    oos_recall: float
    n_in_scope: int
    n_oos: int
    oos_recall_lower_bound: float


def expected_calibration_error(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    bins: int = DEFAULT_BINS,
) -> float | None:
    """Support-weighted mean |accuracy - confidence| over equal-width confidence bins.

    Args:
        confidence: The top-label probability of each prediction.
        correct: Whether each top label was right.
        bins: Number of equal-width bins over [0, 1].

    Returns:
        The ECE in [0, 1] (0 is perfectly calibrated), or None when there are no rows.
    """
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.size == 0:
        return None
    total = 0.0
    for _, _, mean_conf, accuracy, count in reliability(conf, hit, bins):
        total += count * abs(accuracy - mean_conf)
    return float(total / conf.size)


def reliability(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    bins: int = DEFAULT_BINS,
) -> list[tuple[float, float, float, float, int]]:
    """Per non-empty bin: (low, high, mean confidence, accuracy, count), for a calibration curve."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edge i, edge i+1]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        mask = index == i
        count = int(mask.sum())
        if count:
            rows.append(
                (
                    float(edges[i]),
                    float(edges[i + 1]),
                    float(conf[mask].mean()),
                    float(hit[mask].mean()),
                    count,
                )
            )
    return rows


def out_of_scope_label(labels: Sequence[str]) -> str | None:
    """The label among `labels` that means "none of our categories", if any."""
    for label in labels:
        if label.lower() in OUT_OF_SCOPE_LABELS:
            return label
    return None


def abstain_scores(
    predicted: Sequence[str] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    truth: Sequence[str] | np.ndarray,
    oos_label: str,
    threshold: float,
) -> tuple[float | None, float | None]:
    """In-scope accuracy and out-of-scope recall when abstaining below `threshold`.

    A prediction of `oos_label` or a confidence below the threshold is an abstention; it is
    right for an out-of-scope row and wrong for an in-scope one.

    Returns:
        (in-scope accuracy, out-of-scope recall); each None when there are no such rows.
    """
    pred = np.asarray(predicted, dtype=object)
    conf = np.asarray(confidence, dtype=float)
    true = np.asarray(truth, dtype=object)
    abstained = (pred == oos_label) | (conf < threshold)
    in_scope = true != oos_label
    accuracy = float(((pred == true) & ~abstained)[in_scope].mean()) if in_scope.any() else None
    recall = float(abstained[~in_scope].mean()) if (~in_scope).any() else None
    return accuracy, recall


def choose_abstain_threshold(
    predicted: Sequence[str] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    truth: Sequence[str] | np.ndarray,
    oos_label: str,
    budget: float = ABSTAIN_BUDGET,
    min_recall: float | None = MIN_OOS_RECALL,
) -> AbstainChoice | None:
    """The lowest threshold (0.01 steps) reaching `min_recall`, within the accuracy budget.

    The recall must be reached with 95% confidence (the one-sided Wilson lower bound of the
    measured recall), since few out-of-scope rows make it noisy. When no threshold within
    the budget reaches it, the budget decides: the largest threshold costing at most
    `budget` of in-scope accuracy.

    Args:
        predicted: Top labels of held-out rows (never test rows).
        confidence: Their calibrated top probabilities.
        truth: Their true labels, `oos_label` for out-of-scope rows.
        oos_label: The out-of-scope label.
        budget: In-scope accuracy that abstaining may cost, relative to never abstaining.
        min_recall: Out-of-scope recall to reach; None takes the budget's threshold.

    Returns:
        The choice, or None when the rows lack in-scope or out-of-scope examples.
    """
    true = np.asarray(truth, dtype=object)
    n_oos = int((true == oos_label).sum())
    n_in = int(true.size - n_oos)
    if not n_oos or not n_in:
        return None
    base, _ = abstain_scores(predicted, confidence, truth, oos_label, 0.0)
    assert base is not None
    best = 0.0
    # In-scope accuracy only falls and recall only rises as the threshold rises, so the
    # first threshold reaching the recall, or else the last one within budget, wins.
    for threshold in _GRID:
        accuracy, recall = abstain_scores(predicted, confidence, truth, oos_label, float(threshold))
        assert accuracy is not None and recall is not None
        if accuracy < base - budget - 1e-12:
            break
        best = float(threshold)
        if min_recall is not None and recall_lower_bound(recall, n_oos) >= min_recall:
            break
    accuracy, recall = abstain_scores(predicted, confidence, truth, oos_label, best)
    assert accuracy is not None and recall is not None
    return AbstainChoice(best, accuracy, recall, n_in, n_oos, recall_lower_bound(recall, n_oos))


def recall_lower_bound(recall: float, n: int, z: float = _Z_95) -> float:
    """One-sided Wilson lower confidence bound of a proportion measured on `n` rows."""
    spread = z * np.sqrt(recall * (1 - recall) / n + z * z / (4 * n * n))
    return float((recall + z * z / (2 * n) - spread) / (1 + z * z / n))
