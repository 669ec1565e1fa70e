"""Contract of the classifiers package: its errors and the prediction value type.

Everything outside this package (the worker, the CLI) catches `ClassifierError` and reads
`Prediction`; nothing here imports `triage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class ClassifierError(Exception):
    """Base of every error this package raises; the message is one sentence naming the culprit.

    ``exit_code`` is what a command exits with when it stops on one (2: bad input).
    """

    exit_code = 2


class DatasetError(ClassifierError):
    """Labelled data cannot be read: unreadable file, unknown column, bad line, no texts."""


class TrainingError(ClassifierError):
    """Data that cannot make a useful model: no rows, one class, a class with one example."""


class ModelError(ClassifierError):
    """A saved model cannot be used: missing, tampered with, or from another scikit-learn."""

    exit_code = 4  # no usable model


def quoted(names: Iterable[str], limit: int = 10, width: int = 40) -> str:
    """Quote names for a one-sentence message: 'a', 'b', and 3 more (a column of free text
    read as labels has thousands, each a sentence long)."""
    listed = [repr(name if len(name) <= width else name[: width - 1] + "…") for name in names]
    if not listed:
        return "(none)"
    more = f", and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


@dataclass(frozen=True, slots=True)
class Prediction:
    """The label chosen for one axis of one text.

    Attributes:
        label: The most probable label.
        confidence: Its calibrated probability in [0, 1], so a threshold means the same on
            every axis and every model version.
        abstained: True when the model would rather say "none of our categories": the label
            is the axis's out-of-scope label, or the confidence is below the abstain threshold
            chosen at training time on held-out rows. The label is still the best guess, so
            readers that ignore this field behave as before; the router should send an
            abstained message to review.
    """

    label: str
    confidence: float
    abstained: bool = False
