"""Contract of the classifiers package: its errors and the prediction value type.

Everything outside this package (the worker, the CLI) catches `ClassifierError` and reads
`Prediction`; nothing here imports `triage`.
"""

from __future__ import annotations

from dataclasses import dataclass


class ClassifierError(Exception):
    """Base of every error this package raises; the message is one sentence naming the culprit."""


class DatasetError(ClassifierError):
    """Labelled data cannot be read: unreadable file, unknown column, bad line, no texts."""


class TrainingError(ClassifierError):
    """Data that cannot make a useful model: no rows, one class, a class with one example."""


class ModelError(ClassifierError):
    """A saved model cannot be used: missing, tampered with, or from another scikit-learn."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """The label chosen for one axis of one text.

    Attributes:
        label: The most probable label.
        confidence: Its calibrated probability in [0, 1], so a threshold means the same on
            every axis and every model version.
    """

    label: str
    confidence: float
