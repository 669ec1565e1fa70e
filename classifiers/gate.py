"""The quality gate: is a candidate model at least as good as the active one?

Both are scored on the fairest rows available (the active model's own evaluation set, rows
neither trained on; else each model's held-out split; else their cross-validation estimates),
and a candidate whose macro-F1 is more than ``GATE_TOLERANCE`` lower on any axis is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from classifiers.datasets import LabelledData, from_json
from classifiers.evaluation import evaluate
from classifiers.model import Classifier

GATE_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)
class Regression:
    """An axis on which a candidate model is worse than the active one by more than allowed."""

    axis: str
    candidate: float
    active: float

    @property
    def drop(self) -> float:
        """How much lower the candidate's macro-F1 is, in [0, 1]."""
        return self.active - self.candidate

    def __str__(self) -> str:
        return (
            f"axis {self.axis}: macro-F1 {self.candidate:.3f} vs {self.active:.3f} active "
            f"({100 * self.drop:.2f} points lower)"
        )


def regressions(
    candidate: Mapping[str, Mapping[str, Any]],
    active: Mapping[str, Mapping[str, Any]],
    tolerance: float = GATE_TOLERANCE,
) -> list[Regression]:
    """Axes whose candidate macro-F1 is more than `tolerance` below the active model's.

    Only axes both score (macro_f1 not None) are compared.
    """
    found = []
    for axis, scores in candidate.items():
        theirs = active.get(axis, {}).get("macro_f1")
        ours = scores.get("macro_f1")
        if ours is None or theirs is None:
            continue
        if ours < theirs - tolerance - 1e-12:
            found.append(Regression(axis, float(ours), float(theirs)))
    return found


@dataclass(frozen=True)
class GateResult:
    """The comparison of a candidate with the active model, per axis."""

    active_version: str
    compared_on: str
    candidate: dict[str, dict[str, Any]]
    active: dict[str, dict[str, Any]]
    regressions: list[Regression]

    @property
    def passed(self) -> bool:
        return not self.regressions


def gate(model: Classifier, active: Classifier, tolerance: float = GATE_TOLERANCE) -> GateResult:
    """Compare the candidate with the active model on the fairest data available.

    ``model`` is the candidate as evaluated (before its refit, when it was refitted on all
    rows). In order of preference: the active model's stored evaluation set (``model`` is
    scored on it, and so is the active model, unless it was
    refitted on those rows: then its scores there from before its refit stand for it); else
    the candidate's held-out scores against the active model's recorded held-out scores;
    else both models' cross-validation scores.
    """
    stored = active.metadata.get("evaluation_set")
    recorded = active.metadata.get("metrics", {})
    if isinstance(stored, dict):
        data = from_json(stored)
        axes = [a for a in data.axes if a in model.axes and a in active.axes]
        if axes and len(data):
            data = LabelledData(data.texts, {a: data.labels[a] for a in axes})
            mine = evaluate(model, data)
            if "refit" in recorded and "holdout" in recorded:
                # Scoring it now would reward it for having trained on these very rows.
                theirs = {a: recorded["holdout"][a] for a in axes if a in recorded["holdout"]}
            else:
                theirs = evaluate(active, data)
            where = (
                f"the active model's evaluation set ({len(data)} rows neither model had "
                "trained on when scored)"
            )
            return GateResult(
                active.version, where, mine, theirs, regressions(mine, theirs, tolerance)
            )
    metrics = model.metadata.get("metrics", {})
    if "holdout" in metrics and "holdout" in recorded:
        mine, theirs = metrics["holdout"], recorded["holdout"]
        where = "each model's own held-out split"
    else:
        mine, theirs = metrics.get("cv", {}), recorded.get("cv", {})
        where = "each model's cross-validation estimate"
        sizes = {scores.get("n") for scores in (*mine.values(), *theirs.values())}
        if len(sizes) > 1:  # e.g. an active model trained with --holdout 0 on the same file
            where += (
                " (over different rows, so a point or two either way is not a verdict on "
                "quality; train both with a held-out split to compare them on the same rows)"
            )
    return GateResult(active.version, where, mine, theirs, regressions(mine, theirs, tolerance))
