"""Urgency from more than the text: the signals one at a time (pure), then through the pipeline
to the forwarded email."""

from __future__ import annotations

import email
import os
import random
import time
from datetime import UTC, datetime, timedelta
from email.message import Message as Email
from pathlib import Path

import pytest

from classifiers.base import Prediction
from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from triage.config import Urgency
from triage.decide.urgency import (
    RECENT_CONTACTS_COUNTED,
    Assessment,
    assess,
    compiled_markers,
    count_recent,
    is_vip,
    marker_signals,
)
from triage.worker.scheduler import Worker

NORMAL = Prediction("normal", 0.9)
URGENT = ("urgent",)


def judge(
    text: str = "my parcel is late",
    *,
    channel: str = "email",
    sender: str = "olena@example.com",
    recent: int = 0,
    prediction: Prediction | None = NORMAL,
    **settings: object,
) -> Assessment:
    return assess(
        prediction, text, channel, sender, recent, Urgency(**settings), URGENT, area="delivery"
    )


def texts(verdict: Assessment) -> tuple[str, ...]:
    """The signals as the forward's "Urgent because" line reads them."""
    return tuple(signal.text() for signal in verdict.signals)


def test_a_calm_message_keeps_the_models_label() -> None:
    verdict = judge()
    assert verdict == Assessment("normal")


def test_a_legal_threat_escalates_with_the_word_quoted() -> None:
    verdict = judge("I will talk to my lawyer about this")
    assert verdict.label == "urgent" and verdict.escalated
    assert texts(verdict) == ('threatens legal action ("lawyer")',)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Прошу терміново повернути гроші", 'asks for urgency ("терміново")'),
        ("НЕГАЙНО відповідайте", 'asks for urgency ("негайно")'),
        ("Додаток не працює взагалі з ранку", 'reports an outage ("не працює взагалі")'),
        ("Звернуся до суду", 'threatens legal action ("суду")'),
        ("Мій адвокат вам напише", 'threatens legal action ("адвокат")'),
        ("Передам справу адвокатові", 'threatens legal action ("адвокатові")'),
        ("Подам позов", 'threatens legal action ("позов")'),
        ("напишу до захисту прав споживачів", 'threatens legal action ("споживачів")'),
    ],
)
def test_ukrainian_markers(text: str, reason: str) -> None:
    verdict = judge(text)
    assert verdict.label == "urgent"
    assert texts(verdict) == (reason,)


@pytest.mark.parametrize(
    "text",
    [
        "Судячи з усього, посилка загубилась",  # "суд" is a whole word, not a prefix
        "I downloaded the app",  # "down" is a whole word
        "The courier was polite",  # "court" likewise
        "Дякую, все працює",
    ],
)
def test_words_that_only_look_like_markers_do_not_escalate(text: str) -> None:
    assert not judge(text).escalated


def test_markers_of_several_categories_are_each_a_reason() -> None:
    found = marker_signals("URGENT: the site is down, my lawyer is waiting", Urgency().markers)
    assert [signal.text() for signal in found] == [
        'asks for urgency ("urgent")',
        'reports an outage ("down")',
        'threatens legal action ("lawyer")',
    ]


def test_the_quick_check_never_hides_a_marker_the_regex_finds() -> None:
    """Markers cut, recased, spread over lines and glued to other words: the substring check
    that spares most mail the regex lets through every text the regex matches."""
    markers = Urgency().markers
    words = [w for languages in markers.values() for ws in languages.values() for w in ws]
    rng = random.Random(3)
    found = 0
    for _ in range(3000):
        word = rng.choice(words).removesuffix("*") + rng.choice(["", "ами", "s"])
        word = "".join(c.upper() if rng.random() < 0.3 else c for c in word)
        word = word.replace(" ", rng.choice([" ", "  ", "\n", "\t "]))
        text = (
            rng.choice(["", "Please, ", "Subject\n", "x"])
            + word
            + rng.choice(["", "!", " now", "y"])
        )
        by_regex = bool(compiled_markers(markers)[0].search(text))
        assert bool(marker_signals(text, markers)) == by_regex, text
        found += by_regex
    assert found > 500


def test_markers_are_extendable_per_language() -> None:
    settings = {"markers": {"de": {"urgent": ["dringend"]}, "uk": {"outage": ["лежить сайт"]}}}
    assert judge("Bitte dringend antworten", **settings).escalated
    assert texts(judge("У вас лежить сайт", **settings)) == ('reports an outage ("лежить сайт")',)
    assert judge("терміново", **settings).escalated  # the built-in uk categories stay
    assert not judge("не працює взагалі", **settings).escalated  # the replaced one is gone


def test_a_vip_escalates() -> None:
    verdict = judge(sender="ceo@bigclient.example", vip=["CEO@bigclient.example"])
    assert verdict.escalated and texts(verdict) == ("VIP customer (ceo@bigclient.example)",)


@pytest.mark.parametrize(
    ("sender", "vip", "expected"),
    [
        ("@olena_p", ["olena_p"], True),
        ("@olena_p", ["@OLENA_P"], True),
        ("anna@partner.example", ["*@partner.example"], True),
        ("anna@notpartner.example", ["*@partner.example"], False),
        ("anna@example.com", [], False),
    ],
)
def test_vip_list_matching(sender: str, vip: list[str], expected: bool) -> None:
    assert is_vip(sender, vip) is expected


def test_the_third_contact_about_an_area_escalates() -> None:
    assert not judge(recent=1).escalated
    verdict = judge(recent=2)
    assert verdict.escalated
    assert texts(verdict) == ("contact no. 3 about delivery within 7 days",)
    assert not judge(recent=2, repeat_contacts=4).escalated


def test_counting_recent_contacts_keeps_to_the_area_and_the_window() -> None:
    now = datetime(2025, 3, 10, tzinfo=UTC)
    week = timedelta(days=7)
    history = [
        ("delivery", now - timedelta(days=1)),
        ("delivery", now - timedelta(days=6)),
        ("delivery", now - timedelta(days=8)),
        ("billing", now - timedelta(hours=1)),
    ]
    assert count_recent(history, "delivery", now, week) == 2
    assert count_recent(history, "billing", now, week) == 1
    assert count_recent(history, None, now, week) == 0


def test_an_escalated_channel() -> None:
    assert judge(channel="x:mention", escalate_channels=["x"]).escalated
    assert judge(channel="x:mention", escalate_channels=["x:mention"]).escalated
    assert not judge(channel="x:dm", escalate_channels=["x:mention"]).escalated
    assert not judge(channel="email", escalate_channels=["x"]).escalated


def test_the_models_own_urgency_is_a_reason_next_to_the_signals() -> None:
    verdict = judge("asap please", prediction=Prediction("urgent", 0.83))
    assert verdict.label == "urgent" and not verdict.escalated
    assert texts(verdict) == ("the model rates the text urgent (83%)", 'asks for urgency ("asap")')


def test_no_urgent_label_configured_means_no_escalation() -> None:
    verdict = assess(NORMAL, "urgent!", "email", "a@b.c", 0, Urgency(), ())
    assert verdict == Assessment("normal")


# --- through the pipeline ------------------------------------------------------------------


def urgency_worker(
    tmp_path: Path, tiny_model: tuple[Classifier, Path], **urgency: object
) -> Worker:
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}
    worker = Worker(make_config(tmp_path, sources=[source], urgency=urgency))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    return worker


def forwards(tmp_path: Path) -> list[Email]:
    files = sorted((tmp_path / "forwards").glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    return [email.message_from_bytes(f.read_bytes()) for f in files]


def summary(forward: Email) -> str:
    part = forward.get_payload()[0]
    return part.get_payload(decode=True).decode("utf-8")


def test_a_legal_threat_escalates_a_normal_complaint_and_the_forward_says_why(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    subject, body = tiny_text("complaint", "billing")
    deliver(tmp_path / "Maildir", "1.m", make_email(subject, f"{body} Я подам до суду!"))
    worker = urgency_worker(tmp_path, tiny_model)
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.predictions is not None and outcome.predictions["urgency"].label == "normal"
    assert outcome.route is not None and outcome.route.urgent
    assert outcome.route.cc_addrs == ("duty@dept.test",)
    [forward] = forwards(tmp_path)
    assert forward["Importance"] == "high"
    lines = summary(forward).splitlines()
    assert 'Urgent because: threatens legal action ("суду")' in lines
    assert any(line.startswith("Routing:   forwarded to billing") for line in lines)


def test_a_vip_complaint_is_escalated(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> None:
    raw = make_email(*tiny_text("complaint", "delivery"), sender="Boss <boss@vip.example>")
    deliver(tmp_path / "Maildir", "1.m", raw)
    worker = urgency_worker(tmp_path, tiny_model, vip=["*@vip.example"])
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.route is not None and outcome.route.urgent
    assert "Urgent because: VIP customer (boss@vip.example)" in summary(forwards(tmp_path)[0])


def test_the_third_contact_in_a_week_about_the_same_area_escalates(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    hour = 3600.0

    def write(name: str, subject: str, area: str, hours_ago: float) -> None:
        at = time.time() - hours_ago * hour
        os.utime(deliver(box, name, make_email(subject, tiny_text("complaint", area)[1])), (at, at))

    write("0.m", "old one", "delivery", 10 * 24)  # outside the window: does not count
    write("1.m", "first", "delivery", 5)
    write("2.m", "about money", "billing", 4)  # another area: does not count
    worker = urgency_worker(tmp_path, tiny_model)
    first = worker.run_once().polls[0].outcomes
    assert [o.route.urgent for o in first if o.route] == [False, False, False]
    write("3.m", "second", "delivery", 2)
    write("4.m", "third", "delivery", 1)
    later = worker.run_once().polls[0].outcomes
    routes = {o.subject: o.route for o in later}
    assert routes["second"] is not None and not routes["second"].urgent
    third = routes["third"]
    assert third is not None and third.urgent
    assert third.because() == "Urgent because: contact no. 3 about delivery within 7 days"


def test_a_busy_senders_history_is_read_bounded_and_the_reason_says_so(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    busy = RECENT_CONTACTS_COUNTED + 5
    at = time.time() - 3600
    for index in range(busy):
        # Questions: recorded, not forwarded, so the per-sender forward cap stays out of it.
        raw = make_email(f"question {index}", tiny_text("question", "delivery")[1])
        os.utime(deliver(box, f"{index}.m", raw), (at + index, at + index))
    worker = urgency_worker(tmp_path, tiny_model)
    worker.run_once()
    deliver(box, "last.m", make_email("once more", tiny_text("complaint", "delivery")[1]))
    [last] = [o for o in worker.run_once().polls[0].outcomes if o.status == "stored"]
    assert last.route is not None and last.route.urgent
    assert f"contact no. {RECENT_CONTACTS_COUNTED + 1} or later about delivery" in (
        last.route.because() or ""
    )
