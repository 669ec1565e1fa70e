"""Departments correct the model by replying to forwards: Dovecot, aiosmtpd, SQLite/PostgreSQL."""

from __future__ import annotations

import logging
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.errors import ConfigError
from triage.intake.corrections import parse_commands
from triage.store import queries
from triage.store.schema import Forward, Label, Message
from triage.worker.scheduler import Worker

PASSWORD_ENV = "TRIAGE_CORRECTIONS_IMAP_PASSWORD"


def imap(name: str, dovecot: DovecotServer, user: str) -> dict[str, object]:
    return {
        "name": name,
        "type": "imap",
        "host": dovecot.host,
        "port": dovecot.port,
        "tls": "starttls",
        "cafile": str(dovecot.cafile),
        "username": user,
        "password_env": PASSWORD_ENV,
        "idle": False,
    }


@pytest.fixture
def worker(
    tmp_path: Path,
    db_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    monkeypatch: pytest.MonkeyPatch,
):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    support, replies = dovecot.new_user(), dovecot.new_user()
    config = make_config(
        tmp_path,
        database={"url": db_url},
        sources=[imap("support", dovecot, support), imap("replies", dovecot, replies)],
        corrections={"source": "replies"},
        smtp={"host": "127.0.0.1", "port": smtp_server.port, "tls": "plain"},
        forwarding={"transport": "smtp", "from_address": "triage@shop.test"},
    )
    built = Worker(config)
    built.db.upgrade()
    built.registry.register(*tiny_model, activate=True)
    built.users = {"support": support, "replies": replies}  # type: ignore[attr-defined]
    yield built
    built.db.dispose()


def forwarded(worker: Worker, dovecot: DovecotServer, smtp: SmtpServer) -> EmailMessage:
    """A billing complaint triaged and forwarded to billing; the forward as received."""
    subject, body = tiny_text("complaint", "billing")
    dovecot.append(worker.users["support"], [make_email(subject, body)])  # type: ignore[attr-defined]
    assert worker.run_once().outbox.sent == 1
    [received] = smtp.messages
    assert received.rcpt_tos == ["billing@dept.test"]
    return message_from_bytes(received.content, policy=default)  # type: ignore[return-value]


def reply(
    forward: EmailMessage, text: str, sender: str = "billing@dept.test", **headers: str
) -> bytes:
    quoted = "\n".join(f"> {line}" for line in ["Customer: olena@example.com", "this is bad"])
    return make_email(
        f"Re: {forward['Subject']}",
        f"{text}\n\nOn Monday triage wrote:\n{quoted}\n",
        sender=sender,
        to="triage@shop.test",
        headers={
            "In-Reply-To": forward["Message-ID"],
            "References": forward["Message-ID"],
            **headers,
        },
    )


def send_reply(worker: Worker, dovecot: DovecotServer, raw: bytes) -> None:
    dovecot.append(worker.users["replies"], [raw])  # type: ignore[attr-defined]
    worker.run_once()


def labels(worker: Worker) -> list[Label]:
    with worker.db.session() as session:
        return list(session.scalars(select(Label).order_by(Label.id)))


def forwards(worker: Worker) -> list[tuple[str, str]]:
    with worker.db.session() as session:
        return [
            (f.department, f.status) for f in session.scalars(select(Forward).order_by(Forward.id))
        ]


def test_wrong_area_reroutes_records_and_acknowledges(
    worker: Worker, dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:
    forward = forwarded(worker, dovecot, smtp_server)
    answer = reply(forward, "wrong: delivery\n\nThanks, Ivan")
    send_reply(worker, dovecot, answer)

    [label] = labels(worker)
    assert (label.axis, label.label, label.labelled_by) == ("area", "delivery", "billing@dept.test")
    assert label.model_label == "billing" and label.model_confidence is not None
    assert forwards(worker) == [("billing", "sent"), ("logistics", "sent")]
    sent = {
        tuple(m.rcpt_tos): message_from_bytes(m.content, policy=default)
        for m in smtp_server.messages[1:]
    }
    assert set(sent) == {("logistics@dept.test",), ("billing@dept.test",)}
    ack = sent[("billing@dept.test",)]
    assert ack["In-Reply-To"] == message_from_bytes(answer, policy=default)["Message-ID"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Triage-Forward"] == "billing"
    text = ack.get_body(("plain",)).get_content()
    assert "area = delivery (the model said billing)" in text and "re-routed to logistics" in text
    with worker.db.session() as session:
        assert queries.why(session, label.message_id) == (
            "forwarded to logistics (owns delivery); corrected by billing@dept.test"
        )

    worker.run_once()  # nothing is done twice; our acknowledgement never loops
    assert len(labels(worker)) == 1 and len(smtp_server.messages) == 3


def test_ukrainian_reply(worker: Worker, dovecot: DovecotServer, smtp_server: SmtpServer) -> None:
    forward = forwarded(worker, dovecot, smtp_server)
    send_reply(worker, dovecot, reply(forward, "Неправильно: delivery. Тип: відгук"))
    assert {(label.axis, label.label) for label in labels(worker)} == {
        ("area", "delivery"),
        ("kind", "feedback"),
    }
    assert forwards(worker) == [("billing", "sent"), ("logistics", "sent")]


def test_not_ours_without_an_area_goes_to_review(
    worker: Worker, dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:
    forward = forwarded(worker, dovecot, smtp_server)
    send_reply(worker, dovecot, reply(forward, "Це не наше."))
    assert labels(worker) == []
    assert forwards(worker) == [("billing", "sent"), ("review", "sent")]
    with worker.db.session() as session:
        routed = session.scalars(select(Message).where(Message.status != "reply")).one()
        assert routed.disposition == "review"
        assert queries.why(session, routed.id) == (
            "sent to review (billing@dept.test says: not ours); corrected by billing@dept.test"
        )


def test_stranger_reply_does_nothing(
    worker: Worker,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forward = forwarded(worker, dovecot, smtp_server)
    with caplog.at_level(logging.WARNING, logger="triage.intake.corrections"):
        send_reply(worker, dovecot, reply(forward, "wrong: delivery", sender="eve@evil.test"))
    assert labels(worker) == [] and forwards(worker) == [("billing", "sent")]
    assert len(smtp_server.messages) == 1
    assert "eve@evil.test is not a department" in caplog.text


def test_reply_to_no_forward_is_ignored_and_logged(
    worker: Worker,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forward = forwarded(worker, dovecot, smtp_server)
    del forward["Message-ID"]
    forward["Message-ID"] = "<unknown@elsewhere.test>"
    with caplog.at_level(logging.WARNING, logger="triage.intake.corrections"):
        send_reply(worker, dovecot, reply(forward, "wrong: delivery"))
    assert labels(worker) == [] and forwards(worker) == [("billing", "sent")]
    assert "answers no forward of ours" in caplog.text
    with worker.db.session() as session:
        stored = session.scalars(select(Message).where(Message.status == "reply")).one()
        assert stored.disposition == "ignored"
        assert (queries.why(session, stored.id) or "").startswith("ignored: it answers no forward")


@pytest.mark.parametrize(
    ("text", "labels_", "not_ours", "not_kind"),
    [
        ("wrong: billing", {"area": "billing"}, False, None),
        ("Wrong area - delivery. thanks", {"area": "delivery"}, False, None),
        ("not a complaint, kind: feedback", {"kind": "feedback"}, False, "complaint"),
        ("urgency: urgent", {"urgency": "urgent"}, False, None),
        ("this is not urgent", {"urgency": "normal"}, False, None),
        ("не наше", {}, True, None),
        ("не скарга", {}, False, "complaint"),
        (
            "тип: питання, терміновість: термінова",
            {"kind": "question", "urgency": "urgent"},
            False,
            None,
        ),
        ("thanks, we will handle it", {}, False, None),
    ],
)
def test_commands(text: str, labels_: dict[str, str], not_ours: bool, not_kind: str | None) -> None:
    commands = parse_commands(text)
    assert (commands.labels, commands.not_ours, commands.not_kind) == (labels_, not_ours, not_kind)


def test_unknown_kind_word_is_not_understood() -> None:
    assert parse_commands("kind: complant").not_understood == ["kind: complant"]


def test_corrections_source_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"corrections\.source names 'nope'"):
        make_config(tmp_path, corrections={"source": "nope"})
