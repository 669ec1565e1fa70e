"""What a flaky network and a changing mailbox do to a poll: a clear error, nothing lost, nothing
doubled. Real Dovecot behind a misbehaving proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.proxy import FaultyProxy
from triage.store.schema import Message
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


@pytest.fixture
def proxy(dovecot: DovecotServer) -> Iterator[FaultyProxy]:
    server = FaultyProxy(dovecot.host, dovecot.port)
    yield server
    server.close()


def worker_for(tmp_path: Path, port: int, user: str, **source: object) -> Worker:
    settings = {
        "name": "support", "type": "imap", "host": "127.0.0.1", "port": port, "tls": "plain",
        "username": user, "password_env": "TRIAGE_FAULT_PASSWORD", "timeout": 2, "batch_size": 5,
        **source,
    }  # fmt: skip
    worker = Worker(make_config(tmp_path, sources=[settings]))
    worker.db.upgrade()
    return worker


def stored(worker: Worker) -> int:
    with worker.db.session() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


@pytest.fixture(autouse=True)
def password(dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_FAULT_PASSWORD", dovecot.password)


def test_connection_dropped_mid_fetch(
    tmp_path: Path, dovecot: DovecotServer, proxy: FaultyProxy
) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email(f"request {i}", "x" * 3000) for i in range(12)])
    worker = worker_for(tmp_path, proxy.port, user)
    proxy.drop_after = 25_000  # inside the second FETCH of 5 messages
    failed = worker.poll("support")
    assert failed.error and "failed" in failed.error
    assert stored(worker) in (5, 10)  # whole batches only
    assert worker.poll("support").error is None
    assert stored(worker) == 12


def test_slow_server_times_out(tmp_path: Path, dovecot: DovecotServer, proxy: FaultyProxy) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email("hello", "text")])
    worker = worker_for(tmp_path, proxy.port, user)
    proxy.delay = 3.0
    failed = worker.poll("support")
    assert failed.error == f"IMAP server 127.0.0.1:{proxy.port} did not answer within 2 s"
    proxy.delay = 0.0
    assert worker.poll("support").count("stored") == 1


def test_folder_deleted_renamed_and_recreated(tmp_path: Path, dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    kept = make_email("b", "2")
    dovecot.append(user, [make_email("a", "1"), kept], folder="Support")
    worker = worker_for(tmp_path, dovecot.port, user, folder="Support")
    assert worker.poll("support").count("stored") == 2
    dovecot.rename_folder(user, "Support", "Support-old")
    renamed = worker.poll("support")
    assert renamed.permanent and "cannot open folder 'Support'" in (renamed.error or "")
    dovecot.rename_folder(user, "Support-old", "Support")  # moved back
    back = worker.poll("support")
    assert back.error is None and back.count("stored") == 0 and back.recovered_from == 1
    dovecot.delete_folder(user, "Support")
    dovecot.append(user, [kept, make_email("c", "3")], folder="Support")  # restored + new
    again = worker.poll("support")
    assert again.count("stored") == 1 and again.count("duplicate") == 1
    assert stored(worker) == 3
