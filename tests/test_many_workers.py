"""Several worker processes on one PostgreSQL share the sources through leases: mail arrives
while they run, one is SIGKILLed holding a source, and still every message is stored once, every
forward delivered once, and every source polled to its end. Real Dovecot, real aiosmtpd."""

from __future__ import annotations

import mailbox
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email import message_from_bytes
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import DEPARTMENTS, make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.scheduler import Worker
from triage.store.schema import Forward, Message, SourceState

pytestmark = [pytest.mark.live, pytest.mark.slow]

WORKERS = 3
KINDS = ["complaint", "feedback", "question"]
IMAP_SOURCES = 4  # three INBOXes and a second folder of the last user
MAILDIR_SOURCES = 3
ROUNDS = 4  # of mail arriving while the workers run
LEASE_SECONDS = 3.0


class Mail:
    """Where the test drops mail: each source is a Dovecot folder or a Maildir."""

    def __init__(self, dovecot: DovecotServer, tmp_path: Path) -> None:
        self.dovecot = dovecot
        users = [dovecot.new_user() for _ in range(IMAP_SOURCES - 1)]
        self.imap = {f"imap{i}": (user, "INBOX") for i, user in enumerate(users)}
        self.imap[f"imap{IMAP_SOURCES - 1}"] = (users[-1], "Support")
        self.maildirs = {f"maildir{i}": tmp_path / f"maildir{i}" for i in range(MAILDIR_SOURCES)}
        self.sent: Counter[str] = Counter()
        self._serial = count()

    def sources(self, password_env: str) -> list[dict[str, Any]]:
        imap = [
            {
                "name": name, "type": "imap", "host": self.dovecot.host,
                "port": self.dovecot.port, "tls": "plain", "username": user,
                "password_env": password_env, "folder": folder, "batch_size": 2,
            }
            for name, (user, folder) in self.imap.items()
        ]  # fmt: skip
        local = [
            {"name": name, "type": "maildir", "path": str(path), "batch_size": 2}
            for name, path in self.maildirs.items()
        ]
        return imap + local

    def deliver(self, per_source: int) -> None:
        """``per_source`` new messages in every source, each from its own sender."""
        for name, (user, folder) in self.imap.items():
            self.dovecot.append(user, [self._one() for _ in range(per_source)], folder)
            self.sent[name] += per_source
        for name, path in self.maildirs.items():
            box = mailbox.Maildir(path, create=True)
            for _ in range(per_source):
                box.add(self._one())  # written to tmp/, then renamed into new/
            self.sent[name] += per_source

    def _one(self) -> bytes:
        n = next(self._serial)
        subject, body = tiny_text(KINDS[n % len(KINDS)], "billing")
        return make_email(subject, body, sender=f"Customer {n} <c{n}@example.com>")


def stored(worker: Worker) -> int:
    with worker.db.session() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def unsent(worker: Worker) -> int:
    with worker.db.session() as session:
        query = select(func.count()).select_from(Forward).where(Forward.status != "sent")
        return session.scalar(query) or 0


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def kill_while_leasing(
    worker: Worker, process: subprocess.Popen[str], owner: str, seconds: float = 5
) -> str | None:
    """SIGKILL ``process`` as soon as it holds a source's lease; returns that source."""
    deadline = time.monotonic() + seconds
    held = None
    while held is None and time.monotonic() < deadline:
        with worker.db.session() as session:
            held = session.scalar(
                select(SourceState.source).where(
                    SourceState.lease_owner == owner, SourceState.lease_expires_at > func.now()
                )
            )
    process.send_signal(signal.SIGKILL)
    return held


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        name = f"w{len(started)}"
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "INFO",
             "run", "--worker-id", name],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_workers_share_sources_and_survive_a_killed_one(
    tmp_path: Path,
    postgres_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    workers: Callable[[Path, dict[str, str]], subprocess.Popen[str]],
) -> None:
    mail = Mail(dovecot, tmp_path)
    mail.deliver(3)
    settings = {
        "database": {"url": postgres_url},
        "sources": mail.sources("TRIAGE_IMAP_PASSWORD"),
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "tls": "plain"},
        "forwarding": {"transport": "smtp", "from_address": "triage@shop.test"},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "schedule": {"poll_interval": 0.5, "outbox_interval": 0.5,
                     "lease_seconds": LEASE_SECONDS},
        "web": {"enabled": False},
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)

    env = {**os.environ, "TRIAGE_IMAP_PASSWORD": dovecot.password}
    env.pop("TRIAGE_CRASH_AT", None)
    victim = workers(config, env)
    for _ in range(WORKERS - 1):
        workers(config, env)
    backlog = sum(mail.sent.values())
    assert wait_for(lambda: stored(worker) >= backlog, 30), "the workers stored nothing"
    held = None
    for round_ in range(ROUNDS):
        mail.deliver(2)
        if round_ == 1:
            held = kill_while_leasing(worker, victim, "w0")
        time.sleep(0.7)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert held is not None, "w0 never held a source to be killed with"

    total = sum(mail.sent.values())
    assert wait_for(lambda: stored(worker) == total and unsent(worker) == 0, 40)
    with worker.db.session() as session:
        per_source = dict(
            session.execute(select(Message.source, func.count()).group_by(Message.source)).all()
        )
        keys = session.scalar(select(func.count(func.distinct(Message.content_key))))
        forwards = session.scalars(select(Forward)).all()
        states = session.scalars(select(SourceState)).all()
    worker.db.dispose()
    assert per_source == dict(mail.sent)  # no source starved, nothing lost or doubled
    assert keys == total
    assert forwards and all(f.status == "sent" for f in forwards)
    assert all(state.last_success_at is not None for state in states)
    delivered = Counter(message_from_bytes(m.content)["Message-ID"] for m in smtp_server.messages)
    assert set(delivered) == {f.rfc_message_id for f in forwards}
    # Delivery is at-least-once: the one re-send allowed is the forward the killed worker may
    # have handed to the SMTP server without recording it (same Message-ID, collapsible).
    assert sum(n - 1 for n in delivered.values()) <= 1
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(1, WORKERS))
    assert "Traceback" not in logs
