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

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.datasets import (
    LabelledData,
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
