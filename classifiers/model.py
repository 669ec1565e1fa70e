"""The trained model of all axes as one object: batch prediction, save and load.

An artifact is a folder `models/<version>/` holding `model.joblib` (the fitted scikit-learn
objects) and `model.json` (the sidecar: versions, labels, data fingerprint, scores and the
sha256 of `model.joblib`). The folder is written under a temporary name and renamed into place,
so a reader sees a whole artifact or none. `load()` trusts the sidecar only after checking that
it matches the running scikit-learn and that `model.joblib` still has the recorded sha256: a
joblib file is a pickle, and unpickling runs code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import platform
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy
import sklearn
from scipy.special import expit
from sklearn.exceptions import InconsistentVersionWarning

from classifiers import embeddings
from classifiers.base import ModelError, Prediction

log = logging.getLogger(__name__)

FORMAT = 1
ARTIFACT = "model.joblib"
SIDECAR = "model.json"
RETRAIN = "retrain with `triage train`"
_CHUNK = 1 << 20
_SIDECAR_KEYS = ("version", "sha256", "library_versions", "axes")


def library_versions() -> dict[str, str]:
    """Versions that decide whether a pickled model can be trusted, recorded in every sidecar."""
    return {
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "joblib": joblib.__version__,
        "python": platform.python_version(),
    }


class Classifier:
    """Fitted feature transform plus one calibrated classifier per axis, with their metadata.

    Attributes:
        version: Artifact name, "<UTC timestamp>-<data fingerprint prefix>".
        axes: Axis names, in training order.
        metadata: The sidecar content (after `load`) or what `save` will write.
        features: The fitted FeatureUnion shared by all axes.
        estimators: Axis name to its fitted CalibratedClassifierCV.
    """

    def __init__(
        self, features: Any, estimators: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        """Wrap fitted objects; `train()` and `load()` are the usual ways to get one."""
        if not estimators:
            raise ValueError("a Classifier needs at least one axis")
        self.features = features
        self.estimators = dict(estimators)
        self.metadata = dict(metadata)
        self.version = str(self.metadata["version"])
        self.axes = tuple(self.estimators)
        # Plain str labels, computed once: numpy str_ would leak into Prediction otherwise.
        self._labels = {axis: [str(c) for c in est.classes_] for axis, est in estimators.items()}
        self._abstain = _abstain_rules(self.metadata)
        self._sigmoids = {axis: _sigmoid_parameters(est) for axis, est in self.estimators.items()}

    def __repr__(self) -> str:
        return f"Classifier(version={self.version!r}, axes={self.axes!r})"

    def labels(self, axis: str) -> list[str]:
        """Return the labels of `axis`, in the column order of `predict_proba`.

        Raises:
            ModelError: If the model has no such axis.
        """
        self._check_axis(axis)
        return list(self._labels[axis])

    def predict_proba(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Return, per axis, calibrated probabilities of shape (len(texts), len(labels(axis))).

        The features are computed once for the whole batch and shared by all axes.
        """
        texts = _as_text_list(texts)
        if not texts:
            return {axis: np.empty((0, len(self._labels[axis]))) for axis in self.axes}
        matrix = self.features.transform(texts)
        return {
            axis: _sigmoid_proba(est, matrix, self._sigmoids.get(axis))
            for axis, est in self.estimators.items()
        }

    def predict(self, texts: Sequence[str]) -> list[dict[str, Prediction]]:
        """Classify a batch on every axis; does no I/O.

        Args:
            texts: Message texts (subject and body joined with a newline, as in training).

        Returns:
            One dict per text, axis name to its most probable label, that label's calibrated
            probability, and whether the model abstains (see `abstain_rule`).
        """
        texts = _as_text_list(texts)
        results: list[dict[str, Prediction]] = [{} for _ in texts]
        for axis, proba in self.predict_proba(texts).items():
            labels = self._labels[axis]
            threshold, oos_label = self._abstain.get(axis, (None, None))
            best = proba.argmax(axis=1)
            confidence = proba[np.arange(len(texts)), best]
            for result, index, value in zip(
                results, best.tolist(), confidence.tolist(), strict=True
            ):
                label = labels[index]
                abstained = label == oos_label or (threshold is not None and value < threshold)
                result[axis] = Prediction(label, value, abstained)
        return results

    def abstain_rule(self, axis: str) -> tuple[float | None, str | None]:
        """Return (threshold, out-of-scope label) of `axis`; each None when it has none.

        A prediction abstains when its label is the out-of-scope label or its confidence is
        below the threshold. Both come from the sidecar (`abstain_threshold`, `abstain`),
        chosen at training time on held-out rows.
        """
        self._check_axis(axis)
        return self._abstain.get(axis, (None, None))

    def save(self, models_dir: Path) -> Path:
        """Write the artifact to `models_dir/<version>/`, all or nothing.

        Files are written and fsynced in `models_dir/.tmp-<version>-<random>/`, which is then
        renamed into place, so a crash or a concurrent reader never sees half an artifact.

        Args:
            models_dir: Folder of all versions; created if missing.

        Returns:
            The version folder.

        Raises:
            ModelError: If the version folder exists already or cannot be written.
        """
        models_dir = Path(models_dir)
        target = models_dir / self.version
        if target.exists():
            raise ModelError(f"{target} already exists; a model version is written only once.")
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
            temp = _make_temp_dir(models_dir, self.version)
        except OSError as exc:
            raise ModelError(f"Cannot create a model folder in {models_dir}: {exc}.") from exc
        try:
            self._write(temp)
            os.replace(temp, target)
        except BaseException as exc:
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ModelError(f"Cannot write model {target}: {exc}.") from exc
            raise
        _fsync_dir(models_dir)
        log.info("saved model %s to %s", self.version, target)
        return target

    @classmethod
    def load(cls, path: Path) -> Classifier:
        """Load the artifact in version folder `path`, refusing anything that does not check out.

        The sidecar is read first; `model.joblib` is unpickled only if the running
        scikit-learn is the one that wrote it and its sha256 matches the sidecar. This detects
        corruption and accidental edits; it is no defence against someone who can rewrite both
        files, so load only artifacts you wrote.

        Args:
            path: A version folder, e.g. `models/20250101T000000Z-1a2b3c4d`.

        Returns:
            The classifier, with the sidecar as its metadata.

        Raises:
            ModelError: If the folder, sidecar or artifact is missing or unreadable, the
                sha256 differs, or scikit-learn versions differ; or, in the embeddings mode,
                the embedding model directory is missing or its files changed.
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"There is no model folder at {path}; {RETRAIN} or pick another.")
        sidecar = _read_sidecar(path / SIDECAR)
        _check_sklearn_version(path, sidecar)
        embeddings.check_sidecar(path, sidecar, RETRAIN)
        artifact = path / ARTIFACT
        try:
            digest = _sha256(artifact)
        except OSError as exc:
            raise ModelError(f"Cannot read {artifact} ({exc.strerror}); {RETRAIN}.") from exc
        if digest != sidecar["sha256"]:
            raise ModelError(
                f"The sha256 of {artifact} does not match {SIDECAR}, so the file was changed "
                f"or corrupted and is not loaded; {RETRAIN}."
            )
        payload = _unpickle(artifact)
        _check_payload(path, payload, sidecar)
        classifier = cls(payload["features"], payload["axes"], sidecar)
        log.info("loaded model %s from %s", classifier.version, path)
        return classifier

    def _write(self, folder: Path) -> None:
        """Write and fsync both files into `folder`; the sidecar records the artifact's sha256."""
        artifact = folder / ARTIFACT
        with artifact.open("wb") as handle:
            try:
                joblib.dump({"features": self.features, "axes": self.estimators}, handle)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise ModelError(f"Model {self.version} cannot be pickled: {exc}.") from exc
            handle.flush()
            os.fsync(handle.fileno())
        sidecar = {
            "format": FORMAT,
            "version": self.version,
            "sha256": _sha256(artifact),
            **{k: v for k, v in self.metadata.items() if k not in ("format", "version", "sha256")},
        }
        try:
            text = json.dumps(sidecar, ensure_ascii=False, indent=2) + "\n"
        except (TypeError, ValueError) as exc:
            raise ModelError(f"Metadata of model {self.version} is not JSON: {exc}.") from exc
        with (folder / SIDECAR).open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(folder)

    def _check_axis(self, axis: str) -> None:
        """Name the model's axes when asked for another one."""
        if axis not in self.estimators:
            raise ModelError(
                f"Model {self.version} has no axis {axis!r}; its axes are {', '.join(self.axes)}."
            )


def _sigmoid_parameters(estimator: Any) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(linear model, a, b) of a one-model sigmoid-calibrated classifier, else None.

    CalibratedClassifierCV.predict_proba applies one sigmoid per class in a Python loop, which
    is most of the time of a one-message prediction with 77 or 150 classes. The same
    arithmetic on all classes at once gives the same numbers several times faster.
    """
    calibrated = getattr(estimator, "calibrated_classifiers_", None)
    if getattr(estimator, "method", None) != "sigmoid" or not calibrated or len(calibrated) != 1:
        return None
    model = calibrated[0]
    calibrators = model.calibrators
    if not all(hasattr(c, "a_") and hasattr(c, "b_") for c in calibrators):
        return None
    if list(model.estimator.classes_) != list(estimator.classes_):
        return None
    a = np.array([c.a_ for c in calibrators], dtype=float)
    b = np.array([c.b_ for c in calibrators], dtype=float)
    return model.estimator, a, b


def _sigmoid_proba(
    estimator: Any, matrix: Any, sigmoid: tuple[Any, np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """estimator.predict_proba(matrix), vectorized over classes when `sigmoid` allows it."""
    if sigmoid is None:
        return np.asarray(estimator.predict_proba(matrix))
    model, a, b = sigmoid
    scores = np.asarray(model.decision_function(matrix), dtype=float)
    if scores.ndim == 1:  # binary: one score, for the second class
        positive = expit(-(a[0] * scores + b[0]))
        return np.column_stack([1.0 - positive, positive])
    proba = expit(-(a * scores + b))
    denominator = proba.sum(axis=1)[:, np.newaxis]
    uniform = np.full_like(proba, 1 / proba.shape[1])
    normalized: np.ndarray = np.divide(proba, denominator, out=uniform, where=denominator != 0)
    return normalized


def _abstain_rules(metadata: Mapping[str, Any]) -> dict[str, tuple[float | None, str | None]]:
    """Axis to (threshold, out-of-scope label) from the sidecar; older sidecars have neither."""
    thresholds = metadata.get("abstain_threshold") or {}
    details = metadata.get("abstain") or {}
    rules: dict[str, tuple[float | None, str | None]] = {}
    for axis in set(thresholds) | set(details):
        threshold = thresholds.get(axis)
        label = (details.get(axis) or {}).get("label")
        rules[axis] = (
            float(threshold) if threshold is not None else None,
            str(label) if label is not None else None,
        )
    return rules


def _as_text_list(texts: Sequence[str]) -> list[str]:
    """Refuse a bare string, which would otherwise be classified character by character."""
    if isinstance(texts, str):
        raise TypeError("predict() takes a sequence of texts, not a single string")
    return list(texts)


def _make_temp_dir(parent: Path, version: str) -> Path:
    """Create `.tmp-<version>-<random>` in `parent`, with the umask's permissions.

    tempfile.mkdtemp would make it 0700, and the renamed version folder would then be
    unreadable to a worker running as another user than the trainer.
    """
    while True:
        temp = parent / f".tmp-{version}-{secrets.token_hex(4)}"
        try:
            temp.mkdir()
        except FileExistsError:
            continue
        return temp


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename or new file in `path` durable: the directory entry has its own block."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Read and shape-check model.json, so later checks can index it safely."""
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing, so the model cannot be checked; {RETRAIN}.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc}); {RETRAIN}.") from exc
    if not isinstance(sidecar, dict):
        raise ModelError(f"{path} is not a JSON object; {RETRAIN}.")
    if sidecar.get("format") != FORMAT:
        raise ModelError(
            f"{path} has format {sidecar.get('format')!r}, this program reads format {FORMAT}; "
            f"{RETRAIN}."
        )
    missing = [key for key in _SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}; {RETRAIN}.")
    if not isinstance(sidecar["library_versions"], dict) or not isinstance(sidecar["axes"], dict):
        raise ModelError(f"{path} has malformed library_versions or axes; {RETRAIN}.")
    return sidecar


def _check_sklearn_version(path: Path, sidecar: Mapping[str, Any]) -> None:
    """Refuse a model pickled by another scikit-learn: it may unpickle and predict wrongly."""
    saved = sidecar["library_versions"].get("sklearn")
    if saved != sklearn.__version__:
        raise ModelError(
            f"Model {path} was trained with scikit-learn {saved} but {sklearn.__version__} is "
            f"installed; {RETRAIN} (or install scikit-learn {saved})."
        )


def _unpickle(artifact: Path) -> Any:
    """joblib.load, with scikit-learn's version warning and unpickling failures as ModelError."""
    # catch_warnings changes process-wide state; loading is rare and done before serving.
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return joblib.load(artifact)
        except InconsistentVersionWarning as exc:
            raise ModelError(
                f"{artifact} holds a {exc.estimator_name} pickled by scikit-learn "
                f"{exc.original_sklearn_version}, but {exc.current_sklearn_version} is "
                f"installed; {RETRAIN}."
            ) from exc
        except (
            OSError,
            EOFError,
            pickle.UnpicklingError,
            ImportError,
            AttributeError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
        ) as exc:
            raise ModelError(f"{artifact} cannot be unpickled ({exc!r}); {RETRAIN}.") from exc


def _check_payload(path: Path, payload: Any, sidecar: Mapping[str, Any]) -> None:
    """Check the unpickled objects are the ones the sidecar describes."""
    if not (isinstance(payload, dict) and {"features", "axes"} <= payload.keys()):
        raise ModelError(f"{path / ARTIFACT} is not a triage model; {RETRAIN}.")
    estimators = payload["axes"]
    if not isinstance(estimators, dict) or list(estimators) != list(sidecar["axes"]):
        raise ModelError(f"{path / ARTIFACT} has other axes than {SIDECAR}; {RETRAIN}.")
    for axis, est in estimators.items():
        if [str(c) for c in getattr(est, "classes_", [])] != list(sidecar["axes"][axis]):
            raise ModelError(
                f"Axis {axis!r} of {path / ARTIFACT} has other labels than {SIDECAR}; {RETRAIN}."
            )
