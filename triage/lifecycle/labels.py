"""The model lifecycle the admin drives: retraining with corrections, and the quality gate.

A support lead labels a message (`triage label`); the label is stored next to what the model had
guessed, and `triage train --from-history` adds every message's latest human labels to the base
training data, with the same text the worker classifies (subject, newline, the stored text).

Every model trained from the CLI keeps a held-out split of its base data in its sidecar
("evaluation_set") and its scores there (metrics["holdout"]), measured before the model is
refitted on all rows: the held-out rows make the scores honest, and the refit keeps them from
costing the served model accuracy. `triage train --activate` compares the candidate with the
active model on the active model's evaluation set, rows neither had trained on when it was
scored (they are kept out of the candidate's training part; a refitted active model is
represented by the scores it recorded there before its refit), and refuses to activate a
candidate whose macro-F1 is more than one point lower on any axis, unless forced.
"""

from __future__ import annotations

import difflib
import getpass
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.datasets import LabelledData, concat, from_json, read_labelled, subset, to_json
from classifiers.model import Classifier
from classifiers.training import (
    GATE_TOLERANCE,
    ProgressCallback,
    Regression,
    evaluate,
    holdout_split,
    refit,
    regressions,
    train,
)
from triage.decide.router import fold_label
from triage.errors import TriageError
from triage.store.database import Database
from triage.store.queries import human_labels, model_labels
from triage.store.schema import Label, Message, ModelVersion

log = logging.getLogger(__name__)


class UnknownMessage(TriageError):
    """The message id names no stored message (or one without text to learn from)."""

    exit_code = 1


def current_user() -> str:
    """Who is running the command: $USER, else the login name, else "unknown"."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


@dataclass(frozen=True, slots=True)
class Recorded:
    """A label just stored, with the model's guess it corrects (if any); ``new`` when the
    active model does not know it (a new class, or a typo; see `Vocabulary`)."""

    axis: str
    label: str
    model_label: str | None
    model_confidence: float | None
    new: bool = False
    similar: tuple[str, ...] = ()  # known labels a new one may be a typo of


class Vocabulary:
    """The labels in use per axis: the active model's, and those humans recorded before.

    A label typed with other case or spaces ("Complaint ", "BILLING") is recorded in the known
    spelling: the model then learns one class, and routing, which compares exactly, matches.
    A label is new when the active model does not know it (an earlier typo does not make a
    typo known), or, on an axis no active model has, when nobody used it before.
    """

    def __init__(self, session: Session) -> None:
        active = session.scalars(select(ModelVersion).where(ModelVersion.active)).first()
        self.model: dict[str, set[str]] = {
            axis: set(labels)
            for axis, labels in (active.details.get("axes", {}) if active else {}).items()
        }
        self.labels: dict[str, set[str]] = defaultdict(set)
        for axis, label in session.execute(select(Label.axis, Label.label).distinct()):
            self.labels[axis].add(label)
        for axis, labels in self.model.items():
            self.labels[axis].update(labels)
        # The model's spelling wins over a human's earlier variant of it.
        self._spelling = {
            (axis, fold_label(label)): label
            for axis, known in [*self.labels.items(), *self.model.items()]
            for label in sorted(known)
        }

    def spelling(self, axis: str, value: str) -> str:
        """The known spelling of ``value``, else ``value`` with its spaces tidied."""
        return self._spelling.get((axis, fold_label(value)), " ".join(value.split()))

    def is_new(self, axis: str, label: str) -> bool:
        return label not in self._known(axis)

    def suggestions(self, axis: str, label: str) -> list[str]:
        """Known labels a new one may be a typo of (none for a known one)."""
        if not self.is_new(axis, label):
            return []
        return difflib.get_close_matches(label, sorted(self._known(axis)), n=2)

    def _known(self, axis: str) -> set[str]:
        """The model's labels of ``axis``, or the humans' where no active model has it."""
        return self.model.get(axis, self.labels.get(axis, set()))


def record_labels(
    db: Database, message_id: int, labels: Mapping[str, str], by: str
) -> list[Recorded]:
    """Store a human label per axis for one message, with the model's latest guess on it.

    Raises:
        UnknownMessage: No such message, or it was quarantined or purged (no text).
    """
    with db.transaction() as session:
        recorded = add_labels(session, message_id, labels, by)
    log.info("message %d labelled by %s: %s", message_id, by, dict(labels))
    return recorded


def add_labels(
    session: Session,
    message_id: int,
    labels: Mapping[str, str],
    by: str,
    vocabulary: Vocabulary | None = None,
) -> list[Recorded]:
    """`record_labels` in the caller's transaction (bulk imports, corrections by reply); each
    label in its known spelling (``vocabulary``, read now when not given).

    Raises:
        UnknownMessage: No such message, or it was quarantined or purged (no text).
    """
    if not labels:
        raise ValueError("no label given")
    message = session.get(Message, message_id)
    if message is None:
        raise UnknownMessage(f"there is no message {message_id}; see `triage review`")
    if message.status == "quarantined" or message.purged_at is not None:
        raise UnknownMessage(
            f"message {message_id} is {'quarantined' if message.status == 'quarantined' else 'purged'}"
            "; it has no text to learn from"
        )
    guesses = model_labels(session, [message_id]).get(message_id, {})
    vocabulary = vocabulary or Vocabulary(session)
    recorded = []
    for axis, typed in labels.items():
        label = vocabulary.spelling(axis, typed)
        guess = guesses.get(axis)
        session.add(
            Label(
                message_id=message_id,
                axis=axis,
                label=label,
                labelled_by=by,
                model_label=guess.label if guess else None,
                model_confidence=guess.confidence if guess else None,
                model_version=guess.version if guess else None,
            )
        )
        recorded.append(
            Recorded(
                axis,
                label,
                guess.label if guess else None,
                guess.confidence if guess else None,
                vocabulary.is_new(axis, label),
                tuple(vocabulary.suggestions(axis, label)),
            )
        )
    return recorded


def corrections(db: Database, axes: Sequence[str]) -> LabelledData:
    """Every labelled message as a training row: subject + newline + text, latest labels.

    Labels on axes not in `axes` are left out; messages whose text was purged are skipped.
    """
    texts: list[str] = []
    columns: dict[str, list[str | None]] = {axis: [] for axis in axes}
    with db.session() as session:
        for message_id, by_axis in sorted(human_labels(session).items()):
            message = session.get(Message, message_id)
            if message is None or message.purged_at is not None or not message.text.strip():
                continue
            if not any(axis in by_axis for axis in axes):
                continue
            texts.append(f"{message.subject}\n{message.text}")
            for axis in axes:
                columns[axis].append(by_axis.get(axis))
    return LabelledData(texts=texts, labels=columns)


# --- training and the quality gate ---------------------------------------------------------


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
        evaluated.metadata["metrics"]["holdout"] = evaluate(evaluated, held_out)
    classifier = evaluated
    if len(everything) > len(training):
        classifier = refit(evaluated, everything, progress=progress)
    return Candidate(classifier, held_out, n_corrections, evaluated)


def gate(candidate: Candidate, active: Classifier, tolerance: float = GATE_TOLERANCE) -> GateResult:
    """Compare the candidate with the active model on the fairest data available.

    In order of preference: the active model's stored evaluation set (the candidate as
    evaluated, before its refit, is scored on it, and so is the active model, unless it was
    refitted on those rows: then its scores there from before its refit stand for it); else
    the candidate's held-out scores against the active model's recorded held-out scores;
    else both models' cross-validation scores.
    """
    model = candidate.evaluated
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
