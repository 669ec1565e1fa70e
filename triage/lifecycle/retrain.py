"""Retraining, as the admin asks for it: which data, a candidate trained and scored on held-out
rows, the quality gate against the active model, and the activation (or the refusal), recorded.

`triage train` and `triage evaluate` are thin shells over `retrain` and `evaluate` here: the
policy (what --from-history means, when the gate is skipped, what an activation records,
which warnings an evaluation deserves) lives in one place, with the data it decides on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifiers.datasets import (
    LabelledData,
    concat,
    from_json,
    holdout_split,
    read_labelled,
    subset,
    to_json,
)
from classifiers.evaluation import evaluate as score
from classifiers.gate import GateResult, gate
from classifiers.model import Classifier
from classifiers.training import ProgressCallback, refit, train
from triage.config import Config
from triage.decide.router import label_gaps
from triage.errors import TriageError
from triage.lifecycle.labels import corrections, current_user
from triage.lifecycle.registry import ModelRegistry
from triage.store.database import Database

log = logging.getLogger(__name__)


class NoTrainingData(TriageError):
    """Nothing says what to train on: no --data and no active model that recorded its files."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class DataSpec:
    """The labelled files a model is trained from, and how to read them."""

    files: tuple[Path, ...]
    text_columns: tuple[str, ...]
    label_columns: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [str(path) for path in self.files],
            "text_columns": list(self.text_columns),
            "label_columns": list(self.label_columns),
        }

    @classmethod
    def of(cls, classifier: Classifier) -> DataSpec:
        """The spec recorded in a model's sidecar by `train_candidate`.

        Raises:
            NoTrainingData: The model did not record one.
        """
        value = classifier.metadata.get("training_data")
        if not isinstance(value, dict) or not value.get("files"):
            raise NoTrainingData(
                f"model {classifier.version} does not record its training files; "
                "name them with --data, --text-column and --label"
            )
        return cls(
            tuple(Path(f) for f in value["files"]),
            tuple(value["text_columns"]),
            tuple(value["label_columns"]),
        )


@dataclass
class Candidate:
    """A freshly trained model with what it was trained and held out on.

    Attributes:
        classifier: The model to save: fitted on all rows when rows were held out.
        held_out: The held-out rows (the evaluation set), or None.
        n_corrections: Human corrections among the training rows.
        evaluated: The model the scores are of, fitted without the held-out rows (the
            classifier itself when nothing was held out); the gate scores this one.
    """

    classifier: Classifier
    held_out: LabelledData | None
    n_corrections: int
    evaluated: Classifier


def train_candidate(
    spec: DataSpec,
    *,
    db: Database | None = None,
    from_history: bool = False,
    holdout: float = 0.2,
    active: Classifier | None = None,
    progress: ProgressCallback | None = None,
    options: Mapping[str, Any] | None = None,
) -> Candidate:
    """Train a model on the spec's files (plus corrections), holding out part of the files.

    Args:
        spec: The base data.
        db: The store, for the corrections.
        from_history: Add every message's latest human labels to the training part; they are
            never held out, since learning them is the point.
        holdout: Share of the base rows held out and stored as the model's evaluation set;
            the evaluated model never sees them, the refitted one does.
        active: The active model; rows of its evaluation set are kept out of the evaluated
            model's training, so the gate compares both models on rows neither had seen.
        progress: Progress callback of `train`.
        options: More keywords of `train`, e.g. the feature mode from config
            (`Classifier.train_options()`).

    Returns:
        The candidate (not saved): the model evaluated on the held-out rows, then refitted
        on all rows (base and corrections) unless every row was trained on already; its
        held-out rows and the number of corrections used.
    """
    base = concat(
        [read_labelled(path, spec.text_columns, spec.label_columns) for path in spec.files]
    )
    training, held_out = holdout_split(base, holdout)
    if active is not None and isinstance(active.metadata.get("evaluation_set"), dict):
        seen_by_gate = set(from_json(active.metadata["evaluation_set"]).texts)
        keep = [row for row, text in enumerate(training.texts) if text not in seen_by_gate]
        if len(keep) < len(training):
            log.info(
                "kept %d row(s) of the active model's evaluation set out of training",
                len(training) - len(keep),
            )
            training = subset(training, keep)
    everything, n_corrections = base, 0
    if from_history:
        if db is None:
            raise ValueError("from_history needs the database")
        fixes = corrections(db, spec.label_columns)
        n_corrections = len(fixes)
        if n_corrections:
            training = concat([training, fixes])
            everything = concat([base, fixes])
    source = ", ".join(path.name for path in spec.files)
    if n_corrections:
        source += f" + {n_corrections} correction(s)"
    metadata: dict[str, Any] = {
        "training_data": {**spec.to_json(), "holdout": holdout, "corrections": n_corrections},
    }
    if held_out is not None:
        metadata["evaluation_set"] = to_json(held_out)
    evaluated = train(
        training, progress=progress, source=source, metadata=metadata, **(options or {})
    )
    if held_out is not None:
        evaluated.metadata["metrics"]["holdout"] = score(evaluated, held_out)
    classifier = evaluated
    if len(everything) > len(training):
        classifier = refit(evaluated, everything, progress=progress)
    return Candidate(classifier, held_out, n_corrections, evaluated)


class BadRequest(TriageError):
    """The options ask for something that cannot be done; the message says what to give."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Request:
    """What the admin asked `triage train` for (see its --help)."""

    data: tuple[Path, ...] = ()
    text_columns: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()
    from_history: bool = False
    holdout: float = 0.2
    validation: Path | None = None
    out: Path | None = None
    activate: bool = False
    force: bool = False


@dataclass
class Retrained:
    """What a retraining did: the candidate, where it was saved, the gate's verdict (None:
    nothing to compare with), whether it is active now and why, and what to warn of."""

    candidate: Candidate
    path: Path
    verdict: GateResult | None = None
    activated: bool = False
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """It was to be activated, and the gate said no (and nobody forced it)."""
        return self.verdict is not None and not self.verdict.passed and not self.activated


def retrain(
    config: Config,
    request: Request,
    database: Callable[[], Database],
    progress: ProgressCallback | None = None,
) -> Retrained:
    """Train a candidate as ``request`` says, save and register it, and activate it when asked
    and the gate lets it (or it is forced); ``database`` opens the store when it is needed.

    Raises:
        BadRequest: The request names no data, or options that do not go together.
    """
    if request.force and not request.activate:
        raise BadRequest("--force only applies with --activate")
    db = database() if request.activate or request.from_history else None
    registry = ModelRegistry(db, config.classifier.models_dir) if db is not None else None
    warnings: list[str] = []
    active = None
    if registry is not None and registry.active() is not None:
        try:
            active = registry.load_active()
        except TriageError as exc:
            warnings.append(f"{exc}; the quality gate is skipped")
    spec = _spec(request, active)
    options = config.classifier.train_options()
    if request.validation is not None:
        options["validation"] = read_labelled(
            request.validation.resolve(), spec.text_columns, spec.label_columns
        )
    candidate = train_candidate(
        spec, db=db, from_history=request.from_history, holdout=request.holdout,
        active=active, progress=progress, options=options,
    )  # fmt: skip
    classifier = candidate.classifier
    path = classifier.save(request.out or config.classifier.models_dir)
    if registry is None:
        registry = ModelRegistry(database(), config.classifier.models_dir)
    registry.register(classifier, path, activate=False)
    warnings += [
        f"{gap}; fix the labels or the config"
        for gap in label_gaps(config, classifier.metadata.get("axes", {}))
    ]
    result = Retrained(candidate, path, warnings=warnings)
    if not request.activate:
        return result
    result.reason = "no model was active"
    if active is not None:
        result.verdict = gate(candidate.evaluated, active)
        if not result.verdict.passed and not request.force:
            return result
        result.reason = (
            "forced past the quality gate: " + "; ".join(map(str, result.verdict.regressions))
            if result.verdict.regressions
            else f"passed the quality gate against {result.verdict.active_version}"
        )
    registry.activate(classifier.version, by=current_user(), reason=result.reason)
    result.activated = True
    return result


def _spec(request: Request, active: Classifier | None) -> DataSpec:
    """The files and columns to train on: the request's, completed by the active model's own
    when --from-history retrains it."""
    text_columns, label_columns, files = request.text_columns, request.label_columns, request.data
    if request.from_history and active is not None and not (text_columns and label_columns):
        recorded = DataSpec.of(active)
        text_columns = text_columns or recorded.text_columns
        label_columns = label_columns or recorded.label_columns
        files = files or recorded.files
    if files:
        missing = [
            name
            for name, given in (("--text-column", text_columns), ("--label", label_columns))
            if not given
        ]
        if missing:
            raise BadRequest(f"--data needs {' and '.join(missing)} too")
        return DataSpec(tuple(p.resolve() for p in files), text_columns, label_columns)
    if request.from_history:
        raise BadRequest(
            "--from-history without --data retrains the active model on its own files, and "
            "no model is active (or it does not load); name the files with --data"
        )
    raise BadRequest("name the training data with --data (or use --from-history)")


def evaluation_warnings(
    classifier: Classifier, data: LabelledData, path: Path, text_columns: Sequence[str]
) -> list[str]:
    """What makes an evaluation's scores mean less than they seem: the training data itself,
    another text than the model reads, or labels it was never taught (each such row is an
    error)."""
    warnings = []
    trained = classifier.metadata.get("training_data") or {}
    files = {Path(name).resolve() for name in trained.get("files", ())}
    if data.fingerprint == classifier.metadata.get("data_fingerprint") or path.resolve() in files:
        warnings.append(
            f"{path.name} is the data this model was trained on, so these scores flatter it; "
            "evaluate on labelled mail it has not seen"
        )
    read = tuple(trained.get("text_columns", ()))
    if read and tuple(text_columns) != read:
        warnings.append(
            f"the model was trained on text column(s) {', '.join(read)}; scored on "
            f"{', '.join(text_columns)} it reads another text than in service"
        )
    for axis in set(data.axes) & set(classifier.axes):
        unknown = Counter(
            label for label in data.labelled(axis)[1] if label not in classifier.labels(axis)
        )
        if unknown:
            listed = ", ".join(
                f"{label!r} ({n} row{'s' * (n != 1)})" for label, n in unknown.most_common()
            )
            warnings.append(f"{axis}: labels the model does not know count as errors: {listed}")
    return warnings
