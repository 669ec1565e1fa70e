"""Calibration error, the abstain threshold, and abstaining predictions of a trained model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from classifiers import calibration
from classifiers.base import Prediction
from classifiers.datasets import LabelledData, holdout_split
from classifiers.evaluation import evaluate
from classifiers.gate import regressions
from classifiers.model import Classifier
from classifiers.training import train
from tests.classifiers.conftest import make_tiny_data

NONSENSE = [
    "what is the weather on mars tomorrow",
    "recommend a good pizza recipe with olives",
    "how tall is the highest mountain in the world",
    "який сьогодні курс біткоїна на біржі",
    "порадь фільм на вечір про космос",
    "tell me a joke about penguins and ice",
]


def with_out_of_scope(n_rows: int = 60, n_oos: int = 18, seed: int = 0) -> LabelledData:
    """The tiny kind data plus rows that belong to no kind, labelled "oos"."""
    data = make_tiny_data(n_rows=n_rows, seed=seed)
    rng = random.Random(seed)
    extra = [f"{rng.choice(NONSENSE)} {rng.choice(NONSENSE)}" for _ in range(n_oos)]
    return LabelledData(
        texts=[*data.texts, *extra], labels={"kind": [*data.labels["kind"], *["oos"] * n_oos]}
    )


def test_ece_of_an_overconfident_model_is_the_gap() -> None:
    confidence = [0.9] * 10
    correct = [True] * 5 + [False] * 5

    assert calibration.expected_calibration_error(confidence, correct) == pytest.approx(0.4)


def test_ece_of_a_calibrated_model_is_small() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 20_000)
    correct = rng.uniform(size=confidence.size) < confidence

    assert calibration.expected_calibration_error(confidence, correct) < 0.02
    assert calibration.expected_calibration_error([], []) is None


def test_reliability_bins_cover_every_prediction() -> None:
    confidence = [0.0, 0.05, 0.5, 0.51, 1.0]
    bins = calibration.reliability(confidence, [True, False, True, True, False], bins=10)

    assert sum(count for *_, count in bins) == 5
    assert bins[0][:2] == (0.0, 0.1) and bins[0][4] == 2
    assert bins[-1][3] == 0.0  # the one prediction at 1.0 was wrong


def test_threshold_is_the_largest_within_the_accuracy_budget() -> None:
    # In-scope rows: right with high confidence, except some right ones at 0.3-0.4.
    # Out-of-scope rows: wrong guesses at 0.2-0.5.
    truth = ["a"] * 100 + ["oos"] * 20
    predicted = ["a"] * 100 + ["a"] * 20
    confidence = [0.95] * 97 + [0.35] * 3 + list(np.linspace(0.2, 0.5, 20))

    loose = calibration.choose_abstain_threshold(predicted, confidence, truth, "oos", 0.05, None)
    tight = calibration.choose_abstain_threshold(predicted, confidence, truth, "oos", 0.01, None)

    assert loose is not None and tight is not None
    assert tight.threshold <= 0.35 < loose.threshold  # abstaining on 0.35 costs 3 points
    assert tight.in_scope_accuracy >= 0.99 and loose.in_scope_accuracy >= 0.95
    assert loose.oos_recall > tight.oos_recall
    assert (tight.n_in_scope, tight.n_oos) == (100, 20)
    assert calibration.choose_abstain_threshold(["a"], [0.9], ["a"], "oos") is None


def test_threshold_stops_where_the_recall_goal_is_reached_with_confidence() -> None:
    # In-scope rows are right at 0.9; out-of-scope rows are guessed at 0.01 .. 1.00.
    truth = ["a"] * 1000 + ["oos"] * 100
    predicted = ["a"] * 1100
    confidence = [0.9] * 1000 + list(np.arange(1, 101) / 100)

    choice = calibration.choose_abstain_threshold(predicted, confidence, truth, "oos", 0.01, 0.6)
    budget_only = calibration.choose_abstain_threshold(
        predicted, confidence, truth, "oos", 0.01, None
    )

    assert choice is not None and budget_only is not None
    # 0.69 of 100 rows is the least recall whose 95% lower bound reaches 0.6.
    assert (choice.threshold, choice.oos_recall) == (0.70, 0.69)
    assert choice.oos_recall_lower_bound >= 0.6 > calibration.recall_lower_bound(0.68, 100)
    assert budget_only.threshold == 0.90  # abstaining on 0.9 would cost every in-scope row
    # Out of reach within the budget: the budget decides.
    unreachable = calibration.choose_abstain_threshold(
        predicted, confidence, truth, "oos", 0.01, 0.95
    )
    assert unreachable is not None and unreachable.threshold == budget_only.threshold


def test_prediction_stays_backward_compatible() -> None:
    prediction = Prediction("billing", 0.8)

    assert prediction.abstained is False
    assert prediction == Prediction("billing", 0.8, False)


@pytest.fixture(scope="module")
def oos_model() -> Classifier:
    return train(with_out_of_scope(), random_state=0, cv_folds=3)


def test_out_of_scope_axis_gets_a_threshold_chosen_on_training_rows(oos_model: Classifier) -> None:
    rule = oos_model.metadata["abstain"]["kind"]

    assert rule["label"] == "oos"
    assert "3-fold cross-validation" in rule["chosen_by"]
    assert 0 <= rule["threshold"] < 1
    assert oos_model.metadata["abstain_threshold"] == {"kind": rule["threshold"]}
    assert oos_model.abstain_rule("kind") == (rule["threshold"], "oos")
    assert oos_model.metadata["metrics"]["cv"]["kind"]["ece"] is not None


def test_model_abstains_on_out_of_scope_and_low_confidence(oos_model: Classifier) -> None:
    threshold, _ = oos_model.abstain_rule("kind")
    texts = ["порадь фільм на вечір про космос", "це неприпустимо, я обурений", "zzz qqq"]

    predictions = [p["kind"] for p in oos_model.predict(texts)]

    assert predictions[0].label == "oos" and predictions[0].abstained
    assert predictions[1].label == "complaint" and not predictions[1].abstained
    for p in predictions:
        assert p.abstained == (p.label == "oos" or p.confidence < (threshold or 0))


def test_evaluate_reports_in_scope_accuracy_oos_recall_and_ece(oos_model: Classifier) -> None:
    held_out = with_out_of_scope(n_rows=30, n_oos=10, seed=7)

    scores = evaluate(oos_model, held_out)["kind"]

    predictions = [p["kind"] for p in oos_model.predict(held_out.texts)]
    truth = held_out.labels["kind"]
    oos_rows = [p for p, t in zip(predictions, truth, strict=True) if t == "oos"]
    assert scores["oos_recall"] == sum(p.abstained for p in oos_rows) / 10
    in_rows = [(p, t) for p, t in zip(predictions, truth, strict=True) if t != "oos"]
    assert scores["in_scope_accuracy"] == sum(
        p.label == t and not p.abstained for p, t in in_rows
    ) / len(in_rows)
    assert 0 <= scores["ece"] <= 1
    assert scores["oos_recall"] >= 0.8  # nonsense is easy to tell apart here


def test_abstain_rule_survives_save_and_load(oos_model: Classifier, tmp_path: Path) -> None:
    loaded = Classifier.load(oos_model.save(tmp_path))
    texts = [*NONSENSE, "дякую, чудова робота з доставкою"]

    assert loaded.predict(texts) == oos_model.predict(texts)
    assert loaded.abstain_rule("kind") == oos_model.abstain_rule("kind")


def test_threshold_can_come_from_a_validation_file() -> None:
    validation = with_out_of_scope(n_rows=30, n_oos=10, seed=3)

    model = train(with_out_of_scope(), cv_folds=0, validation=validation)

    assert model.metadata["abstain"]["kind"]["chosen_by"] == "validation data (40 rows)"


def test_axes_without_an_out_of_scope_label_never_abstain(tiny_classifier: Classifier) -> None:
    assert tiny_classifier.metadata["abstain_threshold"] == {"kind": None, "area": None}
    assert tiny_classifier.abstain_rule("kind") == (None, None)
    predictions = tiny_classifier.predict(["zzz", "щось незрозуміле"])
    assert not any(p.abstained for row in predictions for p in row.values())


def test_holdout_split_is_stratified_reproducible_and_keeps_rare_classes() -> None:
    data = make_tiny_data(n_rows=60)
    kinds = [*data.labels["kind"][:-3], "spam", "spam", "spam"]
    data = LabelledData(data.texts, {"kind": kinds, "area": data.labels["area"]})

    training, held = holdout_split(data, 0.2, random_state=1)
    again, held_again = holdout_split(data, 0.2, random_state=1)

    assert held is not None and held_again is not None
    assert held.texts == held_again.texts and training.texts == again.texts
    assert len(training) + len(held) == 60
    assert "spam" not in held.labels["kind"]  # 3 examples: too few to hold any out
    assert training.labels["kind"].count("spam") == 3
    for kind in ("complaint", "question", "feedback"):
        assert held.labels["kind"].count(kind) in (3, 4)
    assert holdout_split(data, 0) == (data, None)


def test_holdout_split_keeps_the_rows_of_one_text_on_one_side() -> None:
    data = make_tiny_data(n_rows=60)
    doubled = LabelledData(data.texts * 2, {"kind": data.labels["kind"] * 2})

    training, held = holdout_split(doubled, 0.2, random_state=1)

    assert held is not None
    assert not set(held.texts) & set(training.texts)
    assert 0.15 <= len(held) / len(doubled) <= 0.25


def test_regressions_name_the_axis_and_the_drop() -> None:
    active = {"kind": {"macro_f1": 0.90}, "area": {"macro_f1": 0.80}}
    candidate = {"kind": {"macro_f1": 0.895}, "area": {"macro_f1": 0.75}, "new": {"macro_f1": 0}}

    found = regressions(candidate, active)

    assert [r.axis for r in found] == ["area"]
    assert str(found[0]) == "axis area: macro-F1 0.750 vs 0.800 active (5.00 points lower)"
