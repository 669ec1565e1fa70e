"""SIGTERM or SIGINT at any moment stops the worker promptly, and the next start loses and repeats
nothing: idle in IMAP IDLE, mid-FETCH (a server stalled mid-response), mid-parse, right after a
batch commit, mid-flush of the outbox; the daemon (exit 0) and ``run --once`` (exit 130), while
forwards are being queued. Real Dovecot, real aiosmtpd, SQLite and PostgreSQL.

Each test checks the exit code, the one line that says what the stop finished or abandoned, that
no process of the worker's tree survives it, that it released its lease, and that a second run
stores every mail once and delivers every forward once. Hang limits are generous: how long a stop
takes is measured by ``benchmarks/stop.py``, never asserted here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.helpers import DEPARTMENTS, ProcessTree, make_config, make_email, wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.proxy import FaultyProxy
from tests.servers.smtp import SmtpServer
from triage.store.schema import Forward, Message, SourceState
from triage.worker.scheduler import Worker

pytestmark = [pytest.mark.live, pytest.mark.slow]

MAILS = 120
BATCH = 40  # three batches, each big enough for the parsing processes
HANG = 60.0  # seconds before a stop counts as a hang (a limit, not a measurement)


@dataclass
class Setup:
    """One mailbox of complaints (every mail queues a forward), its config and database."""

    config: Path
    settings: dict[str, Any]
    worker: Worker
    env: dict[str, str]
    log: Path
    smtp: SmtpServer
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, signal_at: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if signal_at:
            env["TRIAGE_SIGNAL_AT"] = signal_at
        command = [sys.executable, "-m", "triage", "--config", str(self.config)]
        process = subprocess.Popen(
            [*command, "--log-level", "INFO", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        self.started.append(process)
        return process

    def kill_leftovers(self) -> None:
        """After a failed test: no worker may live on and load the machine."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()

    def forwards(self) -> list[Forward]:
        with self.worker.db.session() as session:
            return list(session.scalars(select(Forward)))

    def stored(self) -> int:
        with self.worker.db.session() as session:
            return session.scalar(select(func.count()).select_from(Message)) or 0

    def lease_holders(self) -> list[str]:
        with self.worker.db.session() as session:
            return [
                owner
                for owner in session.scalars(select(SourceState.lease_owner))
                if owner is not None
            ]


@pytest.fixture
def setup(
    tmp_path: Path,
    db_url: str,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    proxy: FaultyProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    user = dovecot.new_user()
    dovecot.append(
        user, [make_email(*tiny_text("complaint", "billing"), sender=f"c{n}@example.com")
               for n in range(MAILS)]
    )  # fmt: skip
    settings = {
        "database": {"url": db_url},
        "sources": [
            {
                "name": "support", "type": "imap", "host": "127.0.0.1", "port": proxy.port,
                "tls": "plain", "username": user, "password_env": "TRIAGE_IMAP_PASSWORD",
                "batch_size": BATCH, "idle": True, "poll_interval": 3600,
            }
        ],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "tls": "plain"},
        "forwarding": {"transport": "smtp", "from_address": "triage@shop.test"},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "schedule": {"parse_processes": 2, "outbox_interval": 3600},
        "web": {"enabled": False},
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    env = {**os.environ, "TRIAGE_IMAP_PASSWORD": dovecot.password}
    env.pop("TRIAGE_CRASH_AT", None)
    monkeypatch.setenv("TRIAGE_IMAP_PASSWORD", dovecot.password)  # for the in-process rerun
    setup = Setup(config, settings, worker, env, tmp_path / "worker.log", smtp_server)
    yield setup
    setup.kill_leftovers()
    worker.db.dispose()


@pytest.fixture
def proxy(dovecot: DovecotServer) -> Iterator[FaultyProxy]:
    server = FaultyProxy(dovecot.host, dovecot.port)
    yield server
    server.close()


def stop_and_check(
    setup: Setup, process: subprocess.Popen[bytes], tree: ProcessTree, expected_code: int
) -> str:
    """Wait for the stopped worker; check its exit code, its last word, its children, its lease.
    Returns its log."""
    try:
        code = process.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the worker hung after the stop request:\n{setup.log.read_text()}")
    tree.stop()
    log = setup.log.read_text()
    assert code == expected_code, log
    assert "stopped on SIGTERM" in log or "stopped on SIGINT" in log, log
    assert tree.survivors() == {}, "processes of the stopped worker's tree still run"
    assert setup.lease_holders() == [], "the stopped worker kept its lease"
    return log


def assert_next_start_completes(setup: Setup, tmp_path: Path) -> None:
    """A plain run after the stop (in this process, parsing here too: quicker than another
    start of the command): every mail stored once, every forward delivered once."""
    settings = {**setup.settings, "schedule": {"parse_processes": 0}}
    rerun = Worker(make_config(tmp_path, **settings))
    result = rerun.run_once()
    rerun.close()
    assert not result.failed and not result.stopped, result
    assert setup.stored() == MAILS
    forwards = setup.forwards()
    assert len(forwards) == MAILS and all(f.status == "sent" for f in forwards)
    delivered = Counter(message_from_bytes(m.content)["Message-ID"] for m in setup.smtp.messages)
    assert set(delivered) == {f.rfc_message_id for f in forwards}
    assert max(delivered.values()) == 1, "a forward was delivered twice"


MOMENTS = [
    pytest.param("submitted:2", id="mid-parse"),
    pytest.param("committed:2", id="after-a-commit"),
    pytest.param("smtp-sending:5", id="mid-flush"),
]


@pytest.mark.parametrize("signal_at", MOMENTS)
def test_the_daemon_stops_at_once_at_each_moment(
    setup: Setup, signal_at: str, tmp_path: Path
) -> None:
    daemon = setup.start("run", signal_at=signal_at)
    tree = ProcessTree(daemon.pid)
    stop_and_check(setup, daemon, tree, 0)
    assert_next_start_completes(setup, tmp_path)


@pytest.mark.parametrize("signal_at", MOMENTS)
def test_run_once_stops_at_once_at_each_moment(
    setup: Setup, signal_at: str, tmp_path: Path
) -> None:
    once = setup.start("run", "--once", signal_at=signal_at)
    tree = ProcessTree(once.pid)
    log = stop_and_check(setup, once, tree, 130)
    assert "committed" in log or "left pending" in log  # what it finished or abandoned
    assert_next_start_completes(setup, tmp_path)


@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        pytest.param(("run",), signal.SIGTERM, 0, id="daemon-sigterm"),
        pytest.param(("run", "--once"), signal.SIGINT, 130, id="once-sigint"),
    ],
)
def test_a_stop_mid_fetch_cuts_the_stalled_connection(
    setup: Setup,
    proxy: FaultyProxy,
    command: tuple[str, ...],
    sig: signal.Signals,
    code: int,
    tmp_path: Path,
) -> None:
    """The server stops sending in the middle of a FETCH response: the stop does not wait for
    the data or the read timeout; the batch being read is read again at the next start."""
    proxy.hold_after = 6_000  # within the first FETCH (40 mails of ~500 bytes, after the login)
    worker = setup.start(*command)
    tree = ProcessTree(worker.pid)
    assert proxy.holding.wait(HANG), setup.log.read_text()
    worker.send_signal(sig)
    log = stop_and_check(setup, worker, tree, code)
    assert "the batch being read left" in log or "fetched message(s) left uncommitted" in log
    assert "poll failed" not in log  # a stop is no failure of the source
    proxy.hold_after = None
    assert_next_start_completes(setup, tmp_path)


def test_the_daemon_stops_at_once_when_idle_in_imap_idle(setup: Setup, tmp_path: Path) -> None:
    daemon = setup.start("run")
    tree = ProcessTree(daemon.pid)
    assert wait_until(lambda: len(setup.smtp.messages) == MAILS, HANG), setup.log.read_text()
    daemon.send_signal(signal.SIGTERM)
    log = stop_and_check(setup, daemon, tree, 0)
    assert "nothing was in hand" in log
    assert tree.seen, "the daemon started no parsing processes: the tree check checked nothing"
    assert_next_start_completes(setup, tmp_path)
