"""Fixtures of the classifier tests: a tiny bilingual dataset and a model trained on it once.

The texts are built from phrases that carry each label, in English and Ukrainian, so a correct
pipeline learns them almost perfectly and a broken one does not.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from classifiers.datasets import LabelledData
from classifiers.model import Classifier
from classifiers.training import train

KINDS = {
    "complaint": {
        "en": ["this is unacceptable, I am angry", "terrible service, fix it now"],
        "uk": ["це неприпустимо, я обурений", "жахливий сервіс, виправте негайно"],
    },
    "question": {
        "en": ["could you tell me how to", "I have a question, where can I"],
        "uk": ["підкажіть, будь ласка, як", "маю питання, де можна"],
    },
    "feedback": {
        "en": ["thank you, great job with", "I love how easy it is to"],
        "uk": ["дякую, чудова робота з", "мені дуже подобається, як легко"],
    },
}
AREAS = {
    "billing": {
        "en": ["pay the invoice by card", "get a refund of the charge"],
        "uk": ["оплатити рахунок карткою", "повернути гроші за списання"],
    },
    "delivery": {
        "en": ["track the parcel with the courier", "get the package shipped"],
        "uk": ["відстежити посилку з кур'єром", "отримати доставку пакунка"],
    },
    "account": {
        "en": ["reset the password of my login", "change my profile email"],
        "uk": ["скинути пароль до мого входу", "змінити пошту в профілі"],
    },
}
N_ROWS = 60


def make_tiny_data(n_rows: int = N_ROWS, seed: int = 0) -> LabelledData:
    """Rows cycling through every (kind, area) pair, half English and half Ukrainian."""
    rng = random.Random(seed)
    texts: list[str] = []
    kinds: list[str | None] = []
    areas: list[str | None] = []
    for row in range(n_rows):
        kind = list(KINDS)[row % 3]
        area = list(AREAS)[(row // 3) % 3]
        language = "en" if row % 2 else "uk"
        texts.append(f"{rng.choice(KINDS[kind][language])} {rng.choice(AREAS[area][language])}")
        kinds.append(kind)
        areas.append(area)
    return LabelledData(texts=texts, labels={"kind": kinds, "area": areas})


@pytest.fixture(scope="session")
def tiny_data() -> LabelledData:
    """60 labelled texts, 2 axes of 3 classes, English and Ukrainian."""
    return make_tiny_data()


@pytest.fixture(scope="session")
def tiny_classifier(tiny_data: LabelledData) -> Classifier:
    """A model trained once per session with the default settings; do not modify it."""
    return train(tiny_data, random_state=0, source="tiny.csv")


@pytest.fixture
def saved_model(tiny_classifier: Classifier, tmp_path: Path) -> Path:
    """A fresh copy of the tiny model on disk, free to tamper with; returns the version folder."""
    return tiny_classifier.save(tmp_path / "models")
