"""Training refuses useless data, records honest CV scores; evaluation scores held-out data."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from classifiers.base import DatasetError, TrainingError
from classifiers.datasets import LabelledData
from classifiers.evaluation import evaluate
from classifiers.model import Classifier
from classifiers.training import train
from tests.classifiers.conftest import make_tiny_data

METRIC_KEYS = {"accuracy", "macro_f1", "ece", "n", "per_class"}


def test_metadata_records_versions_data_and_cv_scores(
    tiny_classifier: Classifier, tiny_data: LabelledData
) -> None:
    metadata = tiny_classifier.metadata

    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}", tiny_classifier.version)
    assert tiny_classifier.version.endswith(tiny_data.fingerprint[:8])
    assert metadata["data_fingerprint"] == tiny_data.fingerprint
    assert metadata["n_samples"] == 60
    assert metadata["created_at"].endswith("+00:00")
    assert metadata["training"]["cv_folds"] == 5
    for axis in ("kind", "area"):
        scores = metadata["metrics"]["cv"][axis]
        assert METRIC_KEYS | {"labels", "folds"} <= scores.keys()
        assert scores["n"] == 60
        assert scores["folds"] == 5
        assert scores["labels"] == tiny_classifier.labels(axis)
        # The phrases are unambiguous, so out-of-fold predictions should be nearly perfect.
        assert 0.9 <= scores["accuracy"] <= 1
        assert 0.9 <= scores["macro_f1"] <= 1
        assert sum(c["support"] for c in scores["per_class"].values()) == 60


def test_same_seed_gives_the_same_model(
    tiny_classifier: Classifier, tiny_data: LabelledData
) -> None:
    again = train(tiny_data, random_state=0, cv_folds=0)
    texts = tiny_data.texts[:10]
    assert again.predict(texts) == tiny_classifier.predict(texts)


def test_progress_counts_every_step_under_one_description(tiny_data: LabelledData) -> None:
    calls: list[tuple[str, int, int]] = []

    train(tiny_data, cv_folds=2, progress=lambda *call: calls.append(call))

    total = 1 + 2 * (1 + 2)  # features, then per axis a final fit and two folds
    assert [done for _, done, _ in calls] == list(range(total + 1))
    assert {description for description, _, _ in calls} == {"training kind, area"}
    assert {steps for _, _, steps in calls} == {total}


def test_rows_unlabelled_on_an_axis_are_left_out_of_it() -> None:
    data = make_tiny_data()
    areas = [label if row % 4 else None for row, label in enumerate(data.labels["area"])]
    data = LabelledData(data.texts, {"kind": data.labels["kind"], "area": areas})

    classifier = train(data, cv_folds=3)

    assert classifier.metadata["metrics"]["cv"]["kind"]["n"] == 60
    assert classifier.metadata["metrics"]["cv"]["area"]["n"] == 45


def test_class_of_two_examples_trains_without_a_cv_estimate() -> None:
    data = make_tiny_data(n_rows=30)
    kinds = list(data.labels["kind"])
    kinds[0] = kinds[1] = "spam"
    classifier = train(LabelledData(data.texts, {"kind": kinds}))

    scores = classifier.metadata["metrics"]["cv"]["kind"]
    assert scores["accuracy"] is None and scores["folds"] == 0
    assert "too small" in scores["skipped"]
    assert "spam" in classifier.labels("kind")


def test_no_rows_are_refused() -> None:
    with pytest.raises(TrainingError, match="no rows"):
        train(LabelledData(texts=[], labels={"kind": []}))


def test_no_axis_is_refused() -> None:
    with pytest.raises(TrainingError, match="no label column"):
        train(LabelledData(texts=["a", "b"], labels={}))


def test_axis_without_labelled_rows_is_refused() -> None:
    data = make_tiny_data(n_rows=12)
    unlabelled = LabelledData(data.texts, {"kind": data.labels["kind"], "area": [None] * 12})

    with pytest.raises(TrainingError, match="Axis 'area' has no labelled rows"):
        train(unlabelled)


def test_axis_with_one_class_is_refused() -> None:
    data = make_tiny_data(n_rows=12)
    one_class = LabelledData(data.texts, {"kind": data.labels["kind"], "area": ["billing"] * 12})

    with pytest.raises(TrainingError, match="Axis 'area' has only one class \\('billing'\\)"):
        train(one_class)


def test_classes_with_one_example_are_all_named() -> None:
    data = make_tiny_data(n_rows=12)
    kinds = [*data.labels["kind"][:-2], "spam", "ads"]

    with pytest.raises(TrainingError, match="classes 'ads', 'spam' have fewer than 2"):
        train(LabelledData(data.texts, {"kind": kinds}))


def test_free_text_read_as_labels_is_refused_in_one_short_sentence() -> None:
    data = make_tiny_data(n_rows=60)

    with pytest.raises(TrainingError) as refused:
        train(LabelledData(data.texts, {"kind": data.texts}))  # the text column as label

    message = str(refused.value)
    rare = sum(1 for count in Counter(data.texts).values() if count < 2)
    assert f"…', and {rare - 10} more have fewer than 2 examples" in message
    assert len(message) < 600


def test_one_label_written_two_ways_is_learnt_as_one(caplog: pytest.LogCaptureFixture) -> None:
    data = make_tiny_data(n_rows=30)
    kinds = [
        kind.capitalize() if row % 5 == 0 else kind for row, kind in enumerate(data.labels["kind"])
    ]

    classifier = train(LabelledData(data.texts, {"kind": kinds}), cv_folds=0)

    assert classifier.labels("kind") == sorted(set(data.labels["kind"]))
    assert "'Complaint' (2 rows) taken as 'complaint' (8 rows)" in caplog.text


def test_class_with_one_example_is_refused_by_name() -> None:
    data = make_tiny_data(n_rows=12)
    kinds = [*data.labels["kind"][:-1], "spam"]

    with pytest.raises(TrainingError, match="Axis 'kind': class 'spam' has fewer than 2"):
        train(LabelledData(data.texts, {"kind": kinds}))


def test_extra_metadata_is_kept_but_may_not_replace_ours(tiny_data: LabelledData) -> None:
    classifier = train(tiny_data, cv_folds=0, metadata={"text_columns": ["subject", "body"]})
    assert classifier.metadata["text_columns"] == ["subject", "body"]

    with pytest.raises(ValueError, match="may not set metrics"):
        train(tiny_data, metadata={"metrics": {}})


def test_evaluate_scores_every_axis(tiny_classifier: Classifier) -> None:
    held_out = make_tiny_data(n_rows=30, seed=1)

    results = evaluate(tiny_classifier, held_out)

    assert set(results) == {"kind", "area"}
    for axis, scores in results.items():
        assert scores.keys() == METRIC_KEYS
        assert scores["n"] == 30
        predicted = [p[axis].label for p in tiny_classifier.predict(held_out.texts)]
        truth = held_out.labels[axis]
        assert scores["accuracy"] == sum(map(str.__eq__, predicted, truth)) / 30
        assert 0 <= scores["macro_f1"] <= 1
        assert set(scores["per_class"]) == set(truth)
        for per_class in scores["per_class"].values():
            assert per_class.keys() == {"precision", "recall", "f1", "support"}


def test_evaluate_uses_only_rows_labelled_on_the_axis(tiny_classifier: Classifier) -> None:
    held_out = make_tiny_data(n_rows=9, seed=2)
    kinds = [None, None, *held_out.labels["kind"][2:]]
    data = LabelledData(held_out.texts, {"kind": kinds})

    results = evaluate(tiny_classifier, data)

    assert set(results) == {"kind"}
    assert results["kind"]["n"] == 7


def test_evaluate_counts_an_unknown_label_as_a_miss(tiny_classifier: Classifier) -> None:
    data = LabelledData(
        ["buy cheap watches now", "дякую, чудова робота з доставкою"],
        {"kind": ["spam", "feedback"]},
    )

    scores = evaluate(tiny_classifier, data)["kind"]

    assert scores["accuracy"] == 0.5
    assert scores["per_class"]["spam"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }


def test_evaluate_refuses_an_axis_the_model_lacks(tiny_classifier: Classifier) -> None:
    data = LabelledData(["text"], {"kind": ["question"], "urgency": ["urgent"]})

    with pytest.raises(DatasetError) as caught:
        evaluate(tiny_classifier, data)
    message = str(caught.value)
    assert "urgency" in message
    assert "the data has kind, urgency, the model has kind, area" in message


def test_texts_without_words_are_refused() -> None:
    with pytest.raises(TrainingError, match="no words or characters"):
        train(LabelledData(texts=["", " ", "", "."], labels={"kind": ["a", "a", "b", "b"]}))


def test_repeated_texts_are_scored_in_one_fold_only() -> None:
    """Copies of a text in the training folds would turn the estimate into a memory test:
    on labels that are pure chance it would read near 1.0."""
    rng = random.Random(3)
    words = [f"w{n}" for n in range(400)]
    texts = [" ".join(rng.sample(words, 12)) for _ in range(60)]
    labels = [rng.choice(["a", "b"]) for _ in texts]
    data = LabelledData(texts * 4, {"kind": labels * 4})

    scores = train(data, cv_folds=4).metadata["metrics"]["cv"]["kind"]

    assert scores["repeated_texts"] == 180
    assert scores["accuracy"] < 0.75
