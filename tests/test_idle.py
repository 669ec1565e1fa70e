"""IMAP IDLE: new mail triggers the source's poll in seconds, not at the next interval."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from connectors.imap import ImapConnector, ImapIdleWatcher
from tests.conftest import tiny_text
from tests.helpers import DEPARTMENTS, make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.proxy import FaultyProxy
from tests.test_scheduler import wait_for
from triage.store.schema import Forward, SourceState
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


def test_watcher_signals_new_mail_and_stops(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    connector = ImapConnector(
        "support", host=dovecot.host, port=dovecot.port, username=user,
        password=lambda: dovecot.password, tls="plain",
    )  # fmt: skip
    news = threading.Event()
    calls: list[int] = []

    def on_news() -> None:
        calls.append(1)
        news.set()

    stop = threading.Event()
    thread = threading.Thread(target=ImapIdleWatcher(connector, on_news).run, args=(stop,))
    thread.start()
    try:
        assert news.wait(10)  # the catch-up signal when watching starts
        news.clear()
        dovecot.append(user, [make_email("hello", "new mail")])
        assert news.wait(10), "IDLE did not report the new message"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert len(calls) >= 2


def test_watcher_reconnects_when_the_server_drops_the_connection(dovecot: DovecotServer) -> None:
    """imapclient reads the server's EOF during IDLE as "no news": without a check of its own
    the watcher spun on the dead socket and never reported mail again."""
    proxy = FaultyProxy(dovecot.host, dovecot.port)
    user = dovecot.new_user()
    connector = ImapConnector(
        "support", host="127.0.0.1", port=proxy.port, username=user,
        password=lambda: dovecot.password, tls="plain",
    )  # fmt: skip
    news = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=ImapIdleWatcher(connector, news.set).run, args=(stop,))
    thread.start()
    try:
        assert news.wait(10)  # watching
        news.clear()
        proxy.cut()
        assert news.wait(10), "the watcher did not reconnect after the connection dropped"
        news.clear()
        dovecot.append(user, [make_email("hello", "new mail")])
        assert news.wait(10), "IDLE did not report the new message after the reconnect"
    finally:
        stop.set()
        thread.join(10)
        proxy.close()
    assert not thread.is_alive()


@pytest.mark.slow
def test_daemon_forwards_pushed_mail_long_before_the_poll_interval(
    tmp_path: Path, dovecot: DovecotServer, tiny_model: tuple[Classifier, Path]
) -> None:
    user = dovecot.new_user()
    settings = {
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "sources": [
            {
                "name": "support", "type": "imap", "host": dovecot.host, "port": dovecot.port,
                "tls": "plain", "username": user, "password_env": "TRIAGE_IDLE_PASSWORD",
                "poll_interval": 3600,
            }
        ],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "schedule": {"outbox_interval": 3600},
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)

    def forwards() -> int:
        with worker.db.session() as session:
            return session.scalar(select(func.count()).select_from(Forward)) or 0

    daemon = subprocess.Popen(
        [sys.executable, "-m", "triage", "--config", str(config), "run"],
        env={"TRIAGE_IDLE_PASSWORD": dovecot.password, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _polled_once(worker), timeout=30)  # the start-up poll found nothing
        dovecot.append(user, [make_email(*tiny_text("complaint", "billing"))])
        wait_for(lambda: len(list((tmp_path / "forwards").glob("*.eml"))) == 1, timeout=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
        print(stderr)
    assert daemon.returncode == 0
    assert "1 watched with IMAP IDLE" in stderr
    assert forwards() == 1
    worker.db.dispose()


def _polled_once(worker: Worker) -> bool:
    with worker.db.session() as session:
        state = session.get(SourceState, "support")
        return state is not None and state.last_success_at is not None
