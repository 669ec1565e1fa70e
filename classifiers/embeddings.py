"""Sentence-embedding features: the optional `embeddings` mode of the classifier.

A local sentence-transformers model directory (any one an admin downloaded; nothing is fetched
at run time) turns each text into an L2-normalised vector, which `pipeline.build_features`
appends to the TF-IDF blocks, scaled by `embedding_weight`, for the same calibrated LinearSVC.
Measured in the issue: TF-IDF + all-MiniLM-L6-v2 (weight 2) gives 0.938 on banking77 against
0.917 for TF-IDF alone.

torch and sentence-transformers are the `embeddings` extra, so this module imports them only
when a model is first used: a default-mode install can import it, unpickle nothing from it, and
`unavailable()` can say why the mode cannot run. A pickled `SentenceEmbedder` holds the
directory and settings only; the model is loaded again on first use after loading.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from classifiers.base import ModelError, TrainingError

DEFAULT_WEIGHT = 2.0
BATCH_SIZE = 64
_CHUNK = 1 << 20
# Files a sentence-transformers directory always has; its weights may be in several formats.
_MARKER = "modules.json"


def unavailable(model_dir: str | os.PathLike[str] | None) -> str | None:
    """Why the embedding mode cannot run with `model_dir`, or None when it can."""
    if not model_dir:
        return "no embedding model directory given (classifier.embedding_model)"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        return f"the embeddings extra is not installed ({exc}); pip install 'triage[embeddings]'"
    return check_model_dir(Path(model_dir))


def check_model_dir(model_dir: Path) -> str | None:
    """Why `model_dir` is not a sentence-transformers model directory, or None if it is."""
    if not model_dir.is_dir():
        return f"the embedding model directory {model_dir} does not exist"
    if not (model_dir / _MARKER).is_file():
        return f"{model_dir} is not a sentence-transformers model directory (no {_MARKER})"
    return None


def fingerprint(model_dir: Path) -> str:
    """sha256 over the relative path and content of every file of the model directory.

    Recorded in the sidecar, so a model trained on one set of embedding weights is never
    served with another (the vectors would mean something else).
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if relative.startswith(".") or "/." in relative or relative.endswith(".md"):
            continue  # .gitattributes, caches, model cards: they do not change the vectors
        digest.update(relative.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: texts to L2-normalised sentence embeddings (dense float32).

    Fitting learns nothing (the model is pre-trained), so vectors can be memoised by text:
    `remember()` lets training encode each text once and reuse it in every CV fold.
    """

    def __init__(self, model_dir: str = "", batch_size: int = BATCH_SIZE) -> None:
        self.model_dir = model_dir
        self.batch_size = batch_size

    def fit(self, texts: Iterable[str], y: Any = None) -> SentenceEmbedder:
        """Check the directory; there is nothing to learn."""
        problem = check_model_dir(Path(self.model_dir))
        if problem:
            raise TrainingError(problem[0].upper() + problem[1:] + ".")
        return self

    def transform(self, texts: Iterable[str]) -> np.ndarray:
        """Encode `texts` in batches of `batch_size`, reusing remembered vectors."""
        texts = list(texts)
        memo: dict[str, np.ndarray] = self.__dict__.get("_memo") or {}
        missing = sorted({t for t in texts if t not in memo})
        fresh = dict(zip(missing, self._encode(missing), strict=True)) if missing else {}
        out = np.empty((len(texts), self.dimension()), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = memo[text] if text in memo else fresh[text]
        return out

    def remember(self, texts: Iterable[str]) -> None:
        """Encode `texts` once and keep their vectors until `forget()` (training only)."""
        unique = sorted(set(texts))
        self._memo = dict(zip(unique, self._encode(unique), strict=True)) if unique else {}

    def forget(self) -> None:
        """Drop remembered vectors, e.g. before the model is saved."""
        self.__dict__.pop("_memo", None)

    def dimension(self) -> int:
        """Length of one embedding vector."""
        model = self._model()
        # sentence-transformers 5.x renamed the method; older releases have only the first.
        method = getattr(model, "get_embedding_dimension", None)
        return int((method or model.get_sentence_embedding_dimension)())

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names "embedding0".., for FeatureUnion.get_feature_names_out."""
        return np.asarray([f"embedding{i}" for i in range(self.dimension())], dtype=object)

    def __getstate__(self) -> dict[str, Any]:
        """Leave the loaded model out of pickles: the artifact stores the directory only."""
        state = dict(super().__getstate__())
        state.pop("_loaded", None)
        return state

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of `texts`, normalised so the weight alone sets the block's scale."""
        vectors = self._model().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def _model(self) -> Any:
        """The sentence-transformers model, loaded from the directory on first use."""
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            loaded = self._loaded = load_model(Path(self.model_dir))
        return loaded


def load_model(model_dir: Path) -> Any:
    """Load a local sentence-transformers model on the CPU, never reaching for a hub."""
    problem = check_model_dir(model_dir)
    if problem:
        raise ModelError(problem[0].upper() + problem[1:] + ".")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelError(
            f"The embedding mode needs the embeddings extra ({exc}); "
            "pip install 'triage[embeddings]'."
        ) from exc
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def sidecar_entry(model_dir: Path, weight: float) -> dict[str, Any]:
    """What the sidecar records about the embedding block."""
    return {
        "model_dir": str(model_dir),
        "fingerprint": fingerprint(model_dir),
        "weight": weight,
    }


def check_sidecar(path: Path, sidecar: Mapping[str, Any], retrain: str) -> None:
    """Refuse to load an embeddings-mode model whose embedding directory is gone or changed."""
    if sidecar.get("mode", "tfidf") != "embeddings":
        return
    entry = sidecar.get("embeddings")
    if not isinstance(entry, dict) or not entry.get("model_dir"):
        raise ModelError(f"{path} is an embeddings-mode model without its embedding directory.")
    model_dir = Path(entry["model_dir"])
    problem = check_model_dir(model_dir)
    if problem:
        raise ModelError(
            f"Model {path} uses sentence embeddings from {model_dir}, but {problem}; restore "
            f"that directory or {retrain}."
        )
    if fingerprint(model_dir) != entry.get("fingerprint"):
        raise ModelError(
            f"The files in {model_dir} changed since model {path} was trained, so its "
            f"embeddings would mean something else; restore them or {retrain}."
        )
