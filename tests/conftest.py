"""Shared pytest setup: the real-server fixtures (tests/servers/fixtures.py) and a tiny model."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from classifiers.datasets import LabelledData
from classifiers.model import Classifier
from classifiers.training import train

pytest_plugins = ["tests.servers.fixtures"]

PHRASES = {
    "kind": {
        "complaint": [
            "this is unacceptable",
            "I am very angry",
            "terrible service, I want this fixed",
            "це неприпустимо, я обурена",
            "жахливий сервіс, вимагаю розібратися",
        ],
        "feedback": [
            "thank you, great job",
            "I love your service, well done",
            "just wanted to say you are wonderful",
            "дякую, ви чудові",
            "дуже задоволена, так тримати",
        ],
        "question": [
            "could you tell me how",
            "I have a question, how do I",
            "please explain where I can",
            "підкажіть, будь ласка, як",
            "скажіть, будь ласка, де можна",
        ],
    },
    "area": {
        "billing": [
            "the payment and the refund on my card",
            "invoice charged twice to my card",
            "оплата карткою і повернення грошей",
            "рахунок списали двічі з картки",
        ],
        "delivery": [
            "the courier and the parcel tracking",
            "my parcel shipping is late with the courier",
            "посилка і кур'єр доставка",
            "доставка посилки затримується, кур'єр не приїхав",
        ],
    },
    "urgency": {
        "urgent": ["urgent, today immediately", "терміново, негайно сьогодні"],
        "normal": ["", "when you can"],
    },
}


def tiny_rows(seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(text, kind, area, urgency) rows with clear signal on every axis, English and Ukrainian."""
    rng = random.Random(seed)
    rows = []
    for kind, area, urgency in itertools.product(
        PHRASES["kind"], PHRASES["area"], PHRASES["urgency"]
    ):
        for _ in range(4):
            parts = [
                rng.choice(PHRASES["kind"][kind]),
                rng.choice(PHRASES["area"][area]),
                rng.choice(PHRASES["urgency"][urgency]),
            ]
            rows.append((" ".join(p for p in parts if p), kind, area, urgency))
    return rows


def tiny_text(kind: str, area: str, urgency: str = "normal") -> tuple[str, str]:
    """A subject and a body that a model trained on ``tiny_rows`` classifies without doubt."""
    return (
        PHRASES["area"][area][0],
        f"{PHRASES['kind'][kind][0]}. {PHRASES['area'][area][1]}. {PHRASES['urgency'][urgency][0]}",
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, Path]:
    """A small kind/area/urgency model trained once per session, saved to disk."""
    rows = tiny_rows()
    data = LabelledData(
        texts=[row[0] for row in rows],
        labels={
            axis: [row[i + 1] for row in rows] for i, axis in enumerate(("kind", "area", "urgency"))
        },
    )
    classifier = train(data, cv_folds=3, source="tiny")
    path = classifier.save(tmp_path_factory.mktemp("models"))
    return classifier, path
