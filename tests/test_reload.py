"""The daemon under a service manager: systemd's notify protocol, and SIGHUP re-reading the
config (a new source takes effect; an invalid file is refused and the worker keeps running)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import func, select

from tests import seed
from tests.connectors.test_maildir import deliver
from tests.helpers import make_email
from triage.store.database import Database
from triage.store.schema import Message

pytestmark = pytest.mark.slow


class Daemon:
    """`triage run` in a subprocess, its stderr collected by a reader thread."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = config.parent / "daemon.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "run", "--worker-id", "w1"],
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.log, timeout, f"{text!r} in the log:\n{self.log}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._log.close()
        return code


def wait_for(condition: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")


def stored(db: Database, source: str) -> int:
    with db.session() as session:
        query = select(func.count()).select_from(Message).where(Message.source == source)
        return session.scalar(query) or 0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(1)
    yield sock
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout: float = 30) -> list[str]:
    """Datagrams received until one contains ``wanted``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if wanted in seen[-1].split("\n"):
            return seen
    raise AssertionError(f"no {wanted} within {timeout} s; got {seen}")


def test_daemon_notifies_systemd_ready_and_feeds_the_watchdog(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    config = tmp_path / "config.toml"
    write(config, seed.settings(tmp_path))
    daemon = Daemon(
        config,
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"},
    )
    try:
        ready = receive_until(notify_socket, "READY=1")
        assert any(line.startswith("STATUS=polling 1 source") for line in ready[-1].split("\n"))
        receive_until(notify_socket, "WATCHDOG=1", timeout=10)
        receive_until(notify_socket, "WATCHDOG=1", timeout=10)  # and again: a job, not a one-off
        daemon.process.send_signal(signal.SIGHUP)
        reload = receive_until(notify_socket, "READY=1")
        assert any("RELOADING=1" in datagram for datagram in reload)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    receive_until(notify_socket, "STOPPING=1", timeout=5)
    assert (
        "[w1] triage.worker.scheduler: worker started" in daemon.log
    )  # --worker-id names the lines


def test_sighup_adds_a_source_and_refuses_an_invalid_config(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    deliver(first, "1.a", make_email("hello", "from the first box"))
    deliver(second, "1.b", make_email("hi", "from the second box"))
    data = seed.settings(tmp_path)
    data["sources"] = [
        {"name": "first", "type": "maildir", "path": str(first), "poll_interval": 0.5}
    ]
    config = tmp_path / "config.toml"
    write(config, data)
    db = Database(data["database"]["url"])
    db.upgrade()
    daemon = Daemon(config)
    try:
        wait_for(lambda: stored(db, "first") == 1, what="the first source's mail")

        data["sources"].append(
            {"name": "second", "type": "maildir", "path": str(second), "poll_interval": 0.5}
        )
        data["departments"].append({"name": "returns", "email": "returns@dept.test"})
        write(config, data)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: stored(db, "second") == 1, what="the new source's mail")
        daemon.wait_for_log("config reloaded: 2 source(s) (added: second; removed: none), 4 dep")

        config.write_text(config.read_text() + '\n[schedule]\npoll_interval = "often"\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("new config refused, the running one is kept")
        assert "schedule.poll_interval" in daemon.log
        deliver(second, "2.b", make_email("again", "still polled with the old config"))
        wait_for(lambda: stored(db, "second") == 2, what="polling to go on")

        del data["sources"][0]
        write(config, data)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("(added: none; removed: first)")
        assert daemon.process.poll() is None
    finally:
        code = daemon.stop()
        db.dispose()
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log, daemon.log
