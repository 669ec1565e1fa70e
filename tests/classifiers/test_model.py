"""The Classifier and its artifact: prediction, save/load round trip, and refusing bad artifacts."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.feature_extraction.text import TfidfVectorizer

from classifiers import pipeline
from classifiers.base import ModelError, Prediction
from classifiers.datasets import LabelledData
from classifiers.model import ARTIFACT, SIDECAR, Classifier

UNSEEN = [
    "I am angry, the refund of the charge never came",
    "підкажіть, як змінити пароль",
    "дякую за швидку доставку посилки!",
    "",
]


def rewrite_sidecar(folder: Path, **changes: object) -> None:
    sidecar = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    sidecar.update(changes)
    (folder / SIDECAR).write_text(json.dumps(sidecar), encoding="utf-8")


def test_round_trip_gives_identical_predictions_and_confidences(
    tiny_classifier: Classifier, tiny_data: LabelledData, saved_model: Path
) -> None:
    loaded = Classifier.load(saved_model)
    texts = tiny_data.texts + UNSEEN

    assert loaded.predict(texts) == tiny_classifier.predict(texts)
    assert loaded.version == tiny_classifier.version == saved_model.name
    assert loaded.axes == tiny_classifier.axes == ("kind", "area")
    for axis in loaded.axes:
        assert loaded.labels(axis) == tiny_classifier.labels(axis)


def test_sidecar_describes_the_artifact(tiny_classifier: Classifier, saved_model: Path) -> None:
    sidecar = json.loads((saved_model / SIDECAR).read_text(encoding="utf-8"))

    assert sidecar["format"] == 1
    assert sidecar["version"] == tiny_classifier.version
    assert sidecar["sha256"] == hashlib.sha256((saved_model / ARTIFACT).read_bytes()).hexdigest()
    assert sidecar["library_versions"]["sklearn"] == sklearn.__version__
    assert set(sidecar["library_versions"]) == {"sklearn", "numpy", "scipy", "joblib", "python"}
    assert sidecar["axes"] == {
        "kind": ["complaint", "feedback", "question"],
        "area": ["account", "billing", "delivery"],
    }
    assert sidecar["n_samples"] == 60
    assert sidecar["source"] == "tiny.csv"
    assert set(sidecar["metrics"]["cv"]) == {"kind", "area"}
    assert Classifier.load(saved_model).metadata == sidecar


def test_save_leaves_only_the_version_folder(saved_model: Path) -> None:
    assert [p.name for p in saved_model.parent.iterdir()] == [saved_model.name]
    assert sorted(p.name for p in saved_model.iterdir()) == [ARTIFACT, SIDECAR]


def test_saved_folder_follows_the_umask(tiny_classifier: Classifier, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tiny_classifier.save(tmp_path / "models")
    finally:
        os.umask(old)

    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / ARTIFACT).stat().st_mode) == 0o644


def test_save_refuses_to_overwrite_a_version(
    tiny_classifier: Classifier, saved_model: Path
) -> None:
    before = (saved_model / ARTIFACT).read_bytes()

    with pytest.raises(ModelError, match="already exists"):
        tiny_classifier.save(saved_model.parent)

    assert (saved_model / ARTIFACT).read_bytes() == before
    assert [p.name for p in saved_model.parent.iterdir()] == [saved_model.name]


def test_failed_pickling_leaves_no_temporary_folder(
    tiny_classifier: Classifier, tmp_path: Path
) -> None:
    features = copy.deepcopy(tiny_classifier.features)
    features.lock_ = threading.Lock()  # cannot be pickled
    broken = Classifier(features, tiny_classifier.estimators, tiny_classifier.metadata)
    models = tmp_path / "models"

    with pytest.raises(ModelError, match="cannot be pickled"):
        broken.save(models)

    assert list(models.iterdir()) == []


def test_failed_sidecar_leaves_no_temporary_folder(
    tiny_classifier: Classifier, tmp_path: Path
) -> None:
    metadata = {**tiny_classifier.metadata, "note": object()}
    broken = Classifier(tiny_classifier.features, tiny_classifier.estimators, metadata)
    models = tmp_path / "models"

    with pytest.raises(ModelError, match="not JSON"):
        broken.save(models)

    assert list(models.iterdir()) == []


def test_tampered_artifact_is_refused_by_sha256(saved_model: Path) -> None:
    artifact = saved_model / ARTIFACT
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    with pytest.raises(ModelError, match="sha256") as caught:
        Classifier.load(saved_model)
    assert "retrain with `triage train`" in str(caught.value)


def test_sidecar_from_another_sklearn_is_refused(saved_model: Path) -> None:
    rewrite_sidecar(saved_model, library_versions={"sklearn": "1.0.2"})

    with pytest.raises(ModelError) as caught:
        Classifier.load(saved_model)
    message = str(caught.value)
    assert f"scikit-learn 1.0.2 but {sklearn.__version__} is installed" in message
    assert "retrain with `triage train`" in message


def test_pickle_from_another_sklearn_is_refused(saved_model: Path) -> None:
    # Forge what an older scikit-learn writes: each estimator's pickled state records the
    # version that pickled it, and unpickling under another one warns.
    artifact = saved_model / ARTIFACT
    current = sklearn.__version__.encode()
    forged = b"0" * len(current)
    data = artifact.read_bytes()
    assert current in data
    artifact.write_bytes(data.replace(current, forged))
    rewrite_sidecar(saved_model, sha256=hashlib.sha256(artifact.read_bytes()).hexdigest())

    # Outside pytest (whose config turns this warning into an error) it is only a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InconsistentVersionWarning)
        with pytest.raises(ModelError, match=f"pickled by scikit-learn {forged.decode()}"):
            Classifier.load(saved_model)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model folder at .*20990101T000000Z-deadbeef"):
        Classifier.load(tmp_path / "20990101T000000Z-deadbeef")


def test_missing_artifact_is_refused(saved_model: Path) -> None:
    (saved_model / ARTIFACT).unlink()

    with pytest.raises(ModelError, match=r"Cannot read .*model\.joblib"):
        Classifier.load(saved_model)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1}', '{"format": 99}'])
def test_unreadable_sidecar_is_refused(saved_model: Path, content: str) -> None:
    (saved_model / SIDECAR).write_text(content, encoding="utf-8")

    with pytest.raises(ModelError, match=r"model\.json"):
        Classifier.load(saved_model)


def test_missing_sidecar_is_refused(saved_model: Path) -> None:
    (saved_model / SIDECAR).unlink()

    with pytest.raises(ModelError, match=r"model\.json is missing"):
        Classifier.load(saved_model)


def test_predictions_are_calibrated_probabilities(tiny_classifier: Classifier) -> None:
    probabilities = tiny_classifier.predict_proba(UNSEEN)
    predictions = tiny_classifier.predict(UNSEEN)

    for axis, proba in probabilities.items():
        assert proba.shape == (len(UNSEEN), len(tiny_classifier.labels(axis)))
        assert np.all((proba >= 0) & (proba <= 1))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        for row, prediction in enumerate(predictions):
            assert isinstance(prediction[axis], Prediction)
            assert type(prediction[axis].label) is str
            assert type(prediction[axis].confidence) is float
            assert prediction[axis].confidence == proba[row].max()
            assert prediction[axis].label == tiny_classifier.labels(axis)[proba[row].argmax()]


def test_tiny_model_recognises_unseen_phrasings(tiny_classifier: Classifier) -> None:
    first, second, third, _ = tiny_classifier.predict(UNSEEN)

    assert (first["kind"].label, first["area"].label) == ("complaint", "billing")
    assert (second["kind"].label, second["area"].label) == ("question", "account")
    assert (third["kind"].label, third["area"].label) == ("feedback", "delivery")


def test_a_batch_predicts_like_single_texts(tiny_classifier: Classifier) -> None:
    batch = tiny_classifier.predict(UNSEEN)
    assert batch == [tiny_classifier.predict([text])[0] for text in UNSEEN]


def test_empty_batch_and_bare_string(tiny_classifier: Classifier) -> None:
    assert tiny_classifier.predict([]) == []
    with pytest.raises(TypeError, match="not a single string"):
        tiny_classifier.predict("a text")


def test_unknown_axis_names_the_model_axes(tiny_classifier: Classifier) -> None:
    with pytest.raises(ModelError, match="no axis 'urgency'; its axes are kind, area"):
        tiny_classifier.labels("urgency")


def test_char_vectorizer_matches_scikit_learn(tiny_data: LabelledData) -> None:
    params = {
        "analyzer": "char_wb",
        "preprocessor": pipeline._split_punctuation,
        "ngram_range": (2, 5),
        "sublinear_tf": True,
        "use_idf": False,
    }
    texts = [*UNSEEN, "a", "I  i\tI\n", "п’ять, п'ять пʼять!", "top-up?! (x)", "   "]
    for extra in ({}, {"use_idf": True}, {"binary": True, "ngram_range": (1, 3)}):
        reference = TfidfVectorizer(**{**params, **extra}).fit(tiny_data.texts)
        fast = pipeline._CharWbVectorizer(**{**params, **extra}).fit(tiny_data.texts)
        for _ in range(2):  # the second pass is served from the word cache
            expected, actual = reference.transform(texts), fast.transform(texts)
            assert actual.shape == expected.shape
            assert abs(expected - actual).max() < 1e-12  # the same up to the order of float sums
            assert (expected != 0).nnz == (actual != 0).nnz


def test_word_cache_stays_out_of_the_pickle(tiny_classifier: Classifier) -> None:
    char = dict(tiny_classifier.features.transformer_list)["char"]
    char.transform(UNSEEN)

    restored = pickle.loads(pickle.dumps(char))

    assert "_word_ids" in char.__dict__
    assert "_word_ids" not in restored.__dict__
    assert (restored.transform(UNSEEN) != char.transform(UNSEEN)).nnz == 0


def test_features_keep_ukrainian_words_whole() -> None:
    features = pipeline.build_features().fit(["П’ять гривень, мій рахунок", "пʼять"])
    words = dict(features.transformer_list)["word"].vocabulary_

    assert {"п'ять", "гривень", "мій", "рахунок", "п'ять гривень"} <= words.keys()


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fast_probabilities_equal_scikit_learns(tiny_data: LabelledData, n_classes: int) -> None:
    from classifiers.training import train

    kinds = tiny_data.labels["kind"]
    if n_classes == 2:
        kinds = ["complaint" if k == "complaint" else "other" for k in kinds]
    model = train(LabelledData(tiny_data.texts, {"kind": kinds}), cv_folds=0)
    texts = [*tiny_data.texts, *UNSEEN]

    ours = model.predict_proba(texts)["kind"]
    theirs = model.estimators["kind"].predict_proba(model.features.transform(texts))

    assert model._sigmoids["kind"] is not None  # the fast path is the one tested
    np.testing.assert_array_equal(ours, theirs)
