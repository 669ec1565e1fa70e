"""Several worker processes on one PostgreSQL share the sources through leases: mail arrives
while they run, one is SIGKILLed holding a source, and still every message is stored once, every
forward delivered once, and every source polled to its end. Real Dovecot, real aiosmtpd.

Run at two scales: a quick one, and the scale issue 5 asks for (4 workers, 20 sources)."""

from __future__ import annotations

import mailbox
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import DEPARTMENTS, make_config, make_email, wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Received, SmtpServer
from triage.store.schema import Classification, Forward, Message, SourceState
from triage.worker.scheduler import Worker

pytestmark = [pytest.mark.live, pytest.mark.slow]

KINDS = ["complaint", "feedback", "question"]
FORWARDED = {"complaint", "feedback"}  # [routing] forward_kinds by default
FOLDERS = ["INBOX", "Support", "Support/Urgent"]  # of each Dovecot user, in turn
ROUNDS = 4  # of mail arriving while the workers run
LEASE_SECONDS = 3.0
_STORED_A_BATCH = re.compile(r"\] triage\.intake\.pipeline: \S+: [1-9]\d* new")


@dataclass(frozen=True)
class Scale:
    workers: int
    imap_sources: int
    maildir_sources: int

    @property
    def sources(self) -> int:
        return self.imap_sources + self.maildir_sources


SCALES = [
    pytest.param(Scale(workers=3, imap_sources=4, maildir_sources=3), id="3-workers-7-sources"),
    pytest.param(Scale(workers=4, imap_sources=10, maildir_sources=10), id="4-workers-20-sources"),
]


class Mail:
    """Where the test drops mail: each source is a Dovecot folder or a Maildir."""

    def __init__(self, dovecot: DovecotServer, tmp_path: Path, scale: Scale) -> None:
        self.dovecot = dovecot
        users = [dovecot.new_user() for _ in range(-(-scale.imap_sources // len(FOLDERS)))]
        self.imap = {
            f"imap{i}": (users[i // len(FOLDERS)], FOLDERS[i % len(FOLDERS)])
            for i in range(scale.imap_sources)
        }
        self.maildirs = {
            f"maildir{i}": tmp_path / f"maildir{i}" for i in range(scale.maildir_sources)
        }
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


def kill_while_leasing(
    worker: Worker, process: subprocess.Popen[str], owner: str, smtp_port: int, seconds: float = 5
) -> tuple[str | None, set[int]]:
    """SIGKILL ``process`` as soon as it holds a source's lease; returns that source and the
    local ports of its connections to the SMTP server, read while it is stopped (SIGSTOP), so
    that what it was sending at the kill can be told from what live workers sent."""
    deadline = time.monotonic() + seconds
    held = None
    while held is None and time.monotonic() < deadline:
        with worker.db.session() as session:
            held = session.scalar(
                select(SourceState.source).where(
                    SourceState.lease_owner == owner, SourceState.lease_expires_at > func.now()
                )
            )
    process.send_signal(signal.SIGSTOP)
    ports = _client_ports(process.pid, smtp_port)
    process.send_signal(signal.SIGKILL)
    return held, ports


def _client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to ``server_port`` on loopback (/proc)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in sockets and int(remote.rpartition(":")[2], 16) == server_port:
            ports.add(int(local.rpartition(":")[2], 16))
    return ports


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


@pytest.mark.parametrize("scale", SCALES)
def test_workers_share_sources_and_survive_a_killed_one(
    scale: Scale,
    tmp_path: Path,
    postgres_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    workers: Callable[[Path, dict[str, str]], subprocess.Popen[str]],
) -> None:
    mail = Mail(dovecot, tmp_path, scale)
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
    for _ in range(scale.workers - 1):
        workers(config, env)
    backlog = sum(mail.sent.values())
    assert wait_until(lambda: stored(worker) >= backlog, 30), "the workers stored nothing"
    held, victim_ports = None, set[int]()
    for round_ in range(ROUNDS):
        mail.deliver(2)
        if round_ == 1:
            held, victim_ports = kill_while_leasing(worker, victim, "w0", smtp_server.port)
            assert victim.wait(timeout=10) == -signal.SIGKILL
        time.sleep(0.7)
    assert held is not None, "w0 never held a source to be killed with"

    total = sum(mail.sent.values())
    assert wait_until(lambda: stored(worker) == total and unsent(worker) == 0, 40), (
        f"after 40 s: {stored(worker)} of {total} messages stored, {unsent(worker)} forwards unsent"
    )
    with worker.db.session() as session:
        per_source = dict(
            session.execute(select(Message.source, func.count()).group_by(Message.source)).all()
        )
        keys = session.scalar(select(func.count(func.distinct(Message.content_key))))
        forwards = session.scalars(select(Forward)).all()
        to_forward = set(
            session.scalars(
                select(Classification.message_id).where(
                    Classification.axis == "kind", Classification.label.in_(FORWARDED)
                )
            )
        )
        polled = set(
            session.scalars(
                select(SourceState.source).where(SourceState.last_success_at.is_not(None))
            )
        )
    worker.db.dispose()
    # No source starved, nothing lost or doubled: exact counts per source, every one polled.
    assert len(per_source) == scale.sources
    assert per_source == dict(mail.sent)
    assert polled == set(mail.sent)
    assert keys == total
    # One forward per message the model sent on, each delivered.
    assert to_forward, "the model forwarded nothing: the test would prove nothing"
    assert sorted(f.message_id for f in forwards) == sorted(to_forward)
    assert all(f.status == "sent" for f in forwards)
    delivered = Counter(_message_ids(smtp_server))
    assert set(delivered) == {f.rfc_message_id for f in forwards}
    # Delivery is at-least-once: the one re-send allowed is a forward the killed worker handed
    # to the SMTP server without recording it: delivered once before the kill, once after
    # (same Message-ID, so the receiving side can collapse it). Live workers never send twice.
    twice = {mid: n for mid, n in delivered.items() if n > 1}
    assert len(twice) <= 1 and all(n == 2 for n in twice.values()), twice
    senders = {mid: [m.client_port in victim_ports for m in smtp_server.messages
                     if _message_id(m) == mid] for mid in twice}  # fmt: skip
    assert all(sorted(by_victim) == [False, True] for by_victim in senders.values()), (
        senders,
        "re-sent by a live worker",
    )
    logs = {i: (tmp_path / f"w{i}.log").read_text() for i in range(1, scale.workers)}
    assert not any("Traceback" in log for log in logs.values())
    idle = [f"w{i}" for i, log in logs.items() if not _STORED_A_BATCH.search(log)]
    assert not idle, f"{idle} stored nothing: the sources were not shared"


def _message_ids(server: SmtpServer) -> list[str]:
    return [_message_id(m) for m in server.messages]


def _message_id(message: Received) -> str:
    return str(message_from_bytes(message.content)["Message-ID"])
