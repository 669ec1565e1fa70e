"""One mail sent to two support addresses is one request, however the sources are polled: by one
daemon polling both at once, or by two workers sharing PostgreSQL. The check before the insert
cannot decide a race between two transactions; the database's unique index does, and the loser
records a duplicate instead of failing its batch. Repeated, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import DEPARTMENTS, make_config, make_email, wait_until
from triage.store.schema import Forward, Message, SourceState
from triage.worker.scheduler import Worker

pytestmark = [pytest.mark.live, pytest.mark.slow]

KINDS = ["complaint", "question", "feedback", "complaint", "question"] * 12  # 60 mails
FORWARDED = sum(kind != "question" for kind in KINDS)
SOURCES = ("support", "billing")


@pytest.fixture
def two_boxes(tmp_path: Path) -> list[Path]:
    """Two Maildirs holding the same mails: a customer wrote to support@ and billing@."""
    mails = [
        make_email(*tiny_text(kind, "billing"), sender=f"c{n}@example.com")
        for n, kind in enumerate(KINDS)
    ]
    boxes = [tmp_path / name for name in SOURCES]
    for box in boxes:
        for n, raw in enumerate(mails):
            deliver(box, f"{n}.mail", raw)
    return boxes


def write_config(
    tmp_path: Path, db_url: str, boxes: list[Path], model: tuple[Classifier, Path]
) -> tuple[Path, Worker]:
    settings = {
        "database": {"url": db_url},
        "sources": [
            {"name": box.name, "type": "maildir", "path": str(box), "batch_size": 10,
             "poll_interval": 3600}
            for box in boxes
        ],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "schedule": {"parse_processes": 0, "outbox_interval": 3600},
        "web": {"enabled": False},
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*model, activate=True)
    return config, worker


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "INFO",
         "run", *args],
        env={key: value for key, value in os.environ.items() if not key.startswith("TRIAGE_")},
        stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )  # fmt: skip


def polled_both(worker: Worker) -> bool:
    with worker.db.session() as session:
        done = session.scalar(
            select(func.count())
            .select_from(SourceState)
            .where(SourceState.last_success_at.is_not(None))
        )
    return done == len(SOURCES)


def counts(worker: Worker) -> tuple[int, int]:
    """(requests stored, forwards queued)."""
    with worker.db.session() as session:
        requests = session.scalar(
            select(func.count()).select_from(Message).where(Message.status == "classified")
        )
        forwards = session.scalar(select(func.count()).select_from(Forward))
    return requests or 0, forwards or 0


@pytest.mark.parametrize("attempt", range(3))
def test_one_daemon_polling_both_sources_at_once_stores_each_mail_once(
    attempt: int,
    tmp_path: Path,
    db_url: str,
    two_boxes: list[Path],
    tiny_model: tuple[Classifier, Path],
    daemons: list[subprocess.Popen[bytes]],
) -> None:
    config, worker = write_config(tmp_path, db_url, two_boxes, tiny_model)
    log = tmp_path / "daemon.log"
    daemon = start(config, log)
    daemons.append(daemon)
    assert wait_until(lambda: polled_both(worker), 60), log.read_text()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, log.read_text()
    assert counts(worker) == (len(KINDS), FORWARDED), log.read_text()
    assert "poll crashed" not in log.read_text()
    worker.db.dispose()


def test_two_workers_on_postgresql_store_each_mail_once(
    tmp_path: Path,
    postgres_url: str,
    two_boxes: list[Path],
    tiny_model: tuple[Classifier, Path],
    daemons: list[subprocess.Popen[bytes]],
) -> None:
    config, worker = write_config(tmp_path, postgres_url, two_boxes, tiny_model)
    logs = [tmp_path / f"w{n}.log" for n in range(2)]
    for n, log in enumerate(logs):
        daemons.append(start(config, log, "--worker-id", f"w{n}"))
    assert wait_until(lambda: polled_both(worker), 60)
    # Signalled before its handler is in place (while importing), a worker just dies.
    assert wait_until(lambda: all("worker started" in log.read_text() for log in logs), 60)
    for daemon in daemons:
        daemon.send_signal(signal.SIGTERM)
    text = "\n".join(log.read_text() for log in logs)
    assert [daemon.wait(60) for daemon in daemons] == [0, 0], text
    assert counts(worker) == (len(KINDS), FORWARDED), text
    assert "poll crashed" not in text
    worker.db.dispose()
