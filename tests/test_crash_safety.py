"""Kill the worker (SIGKILL) at each crash point, restart it, and count: every message stored
once, every forward delivered, a re-send only after the SMTP server accepted, with the same
Message-ID. Real Dovecot, real aiosmtpd, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import DEPARTMENTS, make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.store.schema import Forward, Message
from triage.worker.scheduler import Worker

pytestmark = [pytest.mark.live, pytest.mark.slow]

KINDS = ["complaint", "feedback", "question", "complaint", "feedback", "question", "complaint"]


def run_worker(config: Path, password: str, crash_at: str | None) -> int:
    env = {**os.environ, "TRIAGE_IMAP_PASSWORD": password}
    env.pop("TRIAGE_CRASH_AT", None)
    if crash_at:
        env["TRIAGE_CRASH_AT"] = crash_at
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "triage",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
            "run",
            "--once",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode


@pytest.mark.parametrize(
    ("crash_at", "post_action"),
    [
        ("fetched", "none"),
        ("classified", "none"),
        ("committed:1", "move:Triaged"),  # between the commit and the IMAP move
        ("smtp-sending:2", "none"),
        ("smtp-accepted:2", "none"),
    ],
)
def test_crash_anywhere_loses_nothing_and_doubles_nothing(
    crash_at: str,
    post_action: str,
    tmp_path: Path,
    db_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email(*tiny_text(kind, "billing")) for kind in KINDS])
    settings = {
        "database": {"url": db_url},
        "sources": [
            {
                "name": "support", "type": "imap", "host": dovecot.host, "port": dovecot.port,
                "tls": "plain", "username": user, "password_env": "TRIAGE_IMAP_PASSWORD",
                "batch_size": 3, "post_action": post_action,
            }
        ],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "tls": "plain"},
        "forwarding": {"transport": "smtp", "from_address": "triage@shop.test"},
        "classifier": {"models_dir": str(tmp_path / "models")},
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)

    assert run_worker(config, dovecot.password, crash_at) == -signal.SIGKILL
    assert run_worker(config, dovecot.password, None) == 0

    with worker.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == len(KINDS)
        forwards = session.scalars(select(Forward)).all()
    worker.db.dispose()
    expected = {f.rfc_message_id for f in forwards}
    assert len(expected) == KINDS.count("complaint") + KINDS.count("feedback")
    assert all(f.status == "sent" for f in forwards)
    delivered = Counter(message_from_bytes(m.content)["Message-ID"] for m in smtp_server.messages)
    assert set(delivered) == expected
    if post_action.startswith("move:"):
        client = dovecot.client(user)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0  # the cut-short move was finished
        assert client.select_folder("Triaged")[b"EXISTS"] == len(KINDS)
        client.logout()
    resent = {mid for mid, n in delivered.items() if n > 1}
    if crash_at.startswith("smtp-accepted"):
        assert len(resent) == 1 and max(delivered.values()) == 2  # same Message-ID, collapsible
    else:
        assert resent == set()
