"""IMAP post-actions run only after the commit, and repeating them changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


def worker_with(tmp_path: Path, dovecot: DovecotServer, user: str, post_action: str) -> Worker:
    source = {
        "name": "support", "type": "imap", "host": dovecot.host, "port": dovecot.port,
        "tls": "plain", "username": user, "password_env": "TRIAGE_POST_PASSWORD",
        "post_action": post_action, "batch_size": 2,
    }  # fmt: skip
    worker = Worker(make_config(tmp_path, sources=[source]))
    worker.db.upgrade()
    return worker


@pytest.fixture(autouse=True)
def password(dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_POST_PASSWORD", dovecot.password)


@pytest.mark.parametrize(
    ("action", "flag"), [("seen", b"\\Seen"), ("keyword:$Triaged", b"$Triaged")]
)
def test_flags_are_set_after_storing(
    tmp_path: Path, dovecot: DovecotServer, action: str, flag: bytes
) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email(f"m{i}", "text") for i in range(3)])
    worker = worker_with(tmp_path, dovecot, user, action)
    assert worker.run_once().polls[0].count("stored") == 3
    client = dovecot.client(user)
    client.select_folder("INBOX", readonly=True)
    flags = client.get_flags(client.search(["ALL"]))
    client.logout()
    assert all(flag in f for f in flags.values()) and len(flags) == 3
    assert worker.run_once().polls[0].count("stored") == 0
    worker.db.dispose()


def test_move_to_a_folder(tmp_path: Path, dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email(f"m{i}", "text") for i in range(3)])
    worker = worker_with(tmp_path, dovecot, user, "move:Triaged")
    assert worker.run_once().polls[0].count("stored") == 3
    client = dovecot.client(user)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    assert client.select_folder("Triaged")[b"EXISTS"] == 3
    client.logout()
    dovecot.append(user, [make_email("later", "text")])
    assert worker.run_once().polls[0].count("stored") == 1
    worker.db.dispose()
