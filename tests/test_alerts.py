"""Admin alerts over real SMTP: once when a source breaks, once when it heals; a missing model once."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.store.schema import Forward, utcnow
from triage.views import status
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(message_from_bytes(m.content, policy=default)["Subject"]) for m in smtp.messages]


def alerting_worker(tmp_path: Path, smtp: SmtpServer, sources: list[dict]) -> Worker:
    worker = Worker(
        make_config(
            tmp_path,
            sources=sources,
            smtp={"host": "127.0.0.1", "port": smtp.port, "tls": "plain"},
            forwarding={"transport": "smtp", "from_address": "triage@shop.test"},
            alerts={"email": "admin@shop.test", "after_failures": 2},
        )
    )
    worker.db.upgrade()
    return worker


def test_failing_source_alerts_once_then_on_recovery(
    tmp_path: Path, dovecot: DovecotServer, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_ALERT_PASSWORD", dovecot.password)
    source = {
        "name": "support", "type": "imap", "host": dovecot.host, "port": dovecot.port,
        "tls": "plain", "username": dovecot.new_user(), "password_env": "TRIAGE_ALERT_PASSWORD",
        "poll_interval": 30,
    }  # fmt: skip
    worker = alerting_worker(tmp_path, smtp_server, [source])
    with dovecot.down():
        for _ in range(3):
            assert worker.poll("support").error
    failing = [s for s in subjects(smtp_server) if "support is failing" in s]
    assert len(failing) == 1
    alert = message_from_bytes(smtp_server.messages[-1].content, policy=default)
    assert alert["To"] == "admin@shop.test" and alert["Auto-Submitted"] == "auto-generated"
    assert "IMAP server 127.0.0.1" in alert.get_content()

    until = worker.states.backoff_until("support", 30)
    assert until is not None and until > utcnow() + timedelta(seconds=50)  # 30 s * 2**2, jittered
    assert worker.poll_if_due("support") is None  # still backing off, nothing polled

    assert worker.poll("support").error is None
    assert sum("support recovered" in s for s in subjects(smtp_server)) == 1
    assert worker.states.backoff_until("support", 30) is None
    worker.db.dispose()


def test_missing_model_is_reported_once(tmp_path: Path, smtp_server: SmtpServer) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email("hello", "a question"))
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}
    worker = alerting_worker(tmp_path, smtp_server, [source])
    worker.poll("box")
    worker.poll("box")
    alerts = [s for s in subjects(smtp_server) if "no usable model" in s]
    assert len(alerts) == 1
    body = message_from_bytes(smtp_server.messages[0].content, policy=default).get_content()
    assert "triage train" in body
    worker.db.dispose()


def test_stale_source_alerts_once(tmp_path: Path, smtp_server: SmtpServer) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email("hello", "text"))
    sources = [
        {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")},
        {"name": "never", "type": "maildir", "path": str(tmp_path / "Missing")},
    ]
    worker = alerting_worker(tmp_path, smtp_server, sources)
    worker.run_once()
    started = utcnow() - timedelta(hours=2)
    successes = worker.states.last_successes(["box", "never"])
    assert successes["box"] is not None and successes["never"] is None
    worker.alerter.check_stale(successes, started)
    worker.alerter.check_stale(successes, started)
    stale = [s for s in subjects(smtp_server) if "is stale" in s]
    assert stale == ["[triage alert] source never is stale"]
    worker.db.dispose()


def test_an_alert_that_cannot_be_mailed_is_logged_shown_and_mailed_later(
    tmp_path: Path, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The mail server that fails the forwards fails the alert too: it is logged at ERROR with
    its whole text, shown by status and /healthz, and mailed once forwards go out again."""
    deliver(tmp_path / "Maildir", "1.a", make_email("hello", "a question"))
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}
    worker = alerting_worker(tmp_path, smtp_server, [source])
    smtp_server.fail_next(451, "mailbox busy", times=2)  # the alert, then the review forward
    with caplog.at_level("ERROR"):
        worker.poll("box")  # no model: an alert, and the mail goes to review
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("no usable model" in e and "triage train" in e for e in errors), errors
    problems = status.collect(worker.config, worker.db, load_model=False).problems
    assert any("could not be mailed" in p and "mailbox busy" in p for p in problems), problems
    assert smtp_server.messages == []

    assert worker.flush_outbox().retrying == 1  # still refused: the alert waits too
    with worker.db.transaction() as session:  # the forward's retry time has come
        session.execute(update(Forward).values(next_attempt_at=utcnow()))
    assert worker.flush_outbox().sent == 1
    assert [s for s in subjects(smtp_server) if "no usable model" in s]
    problems = status.collect(worker.config, worker.db, load_model=False).problems
    assert not any("could not be mailed" in p for p in problems)
    worker.db.dispose()
