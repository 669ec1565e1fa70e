"""Mailbox to department on real servers: Dovecot (IMAP), aiosmtpd (SMTP), SQLite and PostgreSQL."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.config import Config
from triage.store.schema import Classification, Customer, Forward, Message
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


def mail(kind: str, area: str, urgency: str = "normal", **options: object) -> bytes:
    subject, body = tiny_text(kind, area, urgency)
    return make_email(subject, body, **options)  # type: ignore[arg-type]


def e2e_config(
    tmp_path: Path, db_url: str, dovecot: DovecotServer, user: str, smtp: SmtpServer
) -> Config:
    return make_config(
        tmp_path,
        database={"url": db_url},
        sources=[
            {
                "name": "support",
                "type": "imap",
                "host": dovecot.host,
                "port": dovecot.port,
                "tls": "starttls",
                "cafile": str(dovecot.cafile),
                "username": user,
                "password_env": "TRIAGE_E2E_IMAP_PASSWORD",
                "batch_size": 3,
            }
        ],
        smtp={"host": "127.0.0.1", "port": smtp.port, "tls": "plain"},
        forwarding={"transport": "smtp", "from_address": "triage@shop.test"},
    )


@pytest.fixture
def worker_for(
    tmp_path: Path,
    db_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    monkeypatch: pytest.MonkeyPatch,
):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRIAGE_E2E_IMAP_PASSWORD", dovecot.password)
    workers: list[Worker] = []

    def build(user: str) -> Worker:
        worker = Worker(e2e_config(tmp_path, db_url, dovecot, user, smtp_server))
        worker.db.upgrade()
        classifier, path = tiny_model
        worker.registry.register(classifier, path, activate=True)
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        worker.db.dispose()


def test_mailbox_to_department(worker_for, dovecot: DovecotServer, smtp_server: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    user = dovecot.new_user()
    dovecot.append(
        user,
        [
            mail("complaint", "billing", "urgent"),
            mail(
                "complaint", "delivery", sender="Тарас <taras@example.ua>", charset="windows-1251"
            ),
            mail("feedback", "billing", sender="Taras <taras@example.ua>"),
            mail("question", "delivery"),
            mail(
                "complaint",
                "billing",
                headers={"Auto-Submitted": "auto-replied"},
                sender="bot@example.com",
            ),
        ],
    )
    worker = worker_for(user)
    first = worker.run_once()
    [poll] = first.polls
    assert poll.error is None
    assert poll.count("stored") == 5
    assert first.outbox.sent == 3

    received = {
        tuple(m.rcpt_tos): message_from_bytes(m.content, policy=default)
        for m in smtp_server.messages
    }
    assert set(received) == {
        ("billing@dept.test", "duty@dept.test"),
        ("logistics@dept.test",),
        ("billing@dept.test",),
    }
    urgent = received[("billing@dept.test", "duty@dept.test")]
    assert urgent["Subject"].startswith("[URGENT] [complaint/billing]")
    for forward in received.values():
        [attachment] = list(forward.iter_attachments())
        assert attachment.get_content_type() == "message/rfc822"
    feedback = received[("billing@dept.test",)].get_body(("plain",)).get_content()
    assert "Earlier requests from this customer: 1" in feedback  # the same customer's complaint

    with worker.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 5
        assert session.scalar(select(func.count()).select_from(Classification)) == 15
        assert session.scalar(select(func.count()).select_from(Customer)) == 3
        bot = session.scalars(select(Message).where(Message.auto_reason.is_not(None))).one()
        assert bot.disposition == "machine"
        assert bot.reasons[0]["code"] == "machine_sent"

    second = worker.run_once()
    assert second.polls[0].count("stored") == 0 and second.outbox.sent == 0
    assert len(smtp_server.messages) == 3

    dovecot.append(user, [mail("complaint", "delivery", "urgent")])
    third = worker.run_once()
    assert third.polls[0].count("stored") == 1 and third.outbox.sent == 1
    assert sorted(smtp_server.messages[-1].rcpt_tos) == ["duty@dept.test", "logistics@dept.test"]


def test_uidvalidity_change_adds_nothing_twice(
    worker_for, dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:  # type: ignore[no-untyped-def]
    user = dovecot.new_user()
    dovecot.append(user, [mail("complaint", "billing"), mail("question", "billing")])
    worker = worker_for(user)
    assert worker.run_once().polls[0].count("stored") == 2
    dovecot.set_uidvalidity(user, 777)
    again = worker.run_once().polls[0]
    assert again.count("duplicate") == 2 and again.count("stored") == 0
    assert len(smtp_server.messages) == 1
    with worker.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Forward)) == 1


def test_server_down_is_reported_and_nothing_is_lost(worker_for, dovecot: DovecotServer) -> None:  # type: ignore[no-untyped-def]
    user = dovecot.new_user()
    dovecot.append(user, [mail("complaint", "billing")])
    worker = worker_for(user)
    with dovecot.down():
        failed = worker.run_once().polls[0]
    assert failed.error and "IMAP server" in failed.error
    assert worker.run_once().polls[0].count("stored") == 1
