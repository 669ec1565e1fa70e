"""The daemon: jobs on a schedule, a warm stop on SIGTERM, nothing lost or doubled."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomli_w
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import DEPARTMENTS, make_config, make_email, wait_until
from tests.servers.smtp import SmtpServer
from triage.store.database import Database
from triage.store.schema import Forward, Message
from triage.worker.scheduler import Wakes, Worker


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def count(db: Database, table: type) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


@pytest.mark.slow
def test_daemon_polls_forwards_and_stops_warmly_on_sigterm(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email(*tiny_text("complaint", "billing")))
    settings = {
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "sources": [{"name": "box", "type": "maildir", "path": str(box), "poll_interval": 0.5}],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "schedule": {"outbox_interval": 0.5},
    }
    config_path = tmp_path / "config.toml"
    config_path.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)

    daemon = subprocess.Popen(
        [sys.executable, "-m", "triage", "--config", str(config_path), "run"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: count(worker.db, Forward) == 1)
        deliver(box, "2.b", make_email(*tiny_text("complaint", "delivery")))
        wait_for(lambda: count(worker.db, Forward) == 2)
        wait_for(lambda: len(list((tmp_path / "forwards").glob("*.eml"))) == 2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
        print(stderr)  # shown by pytest when the test fails
    assert daemon.returncode == 0, stderr
    assert "SIGTERM received" in stderr and "worker stopped" in stderr
    assert count(worker.db, Message) == 2
    worker.db.dispose()


def test_a_wake_while_the_job_runs_runs_it_again_right_after() -> None:
    """IDLE news during a poll, or a forward queued during a flush, is not left for the next
    interval (APScheduler drops a run that comes due while the previous one is going)."""
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1}, timezone="UTC"
    )
    wakes = Wakes(scheduler)
    began, release = threading.Semaphore(0), threading.Event()

    def flush() -> None:
        began.release()
        release.wait(10)

    scheduler.add_job(
        wakes.job("flush-outbox", flush), "interval", hours=1, id="flush-outbox",
        next_run_time=datetime.now(UTC),
    )  # fmt: skip
    scheduler.start()
    try:
        assert began.acquire(timeout=10)  # the first run is in hand
        wakes.wake("flush-outbox")  # a forward queued after it chose what to send
        release.set()
        assert began.acquire(timeout=5), "the wake-up was lost until the next interval"
        assert not began.acquire(timeout=0.5)  # one wake-up, one more run
        wakes.wake("flush-outbox")  # an idle job runs at once
        assert began.acquire(timeout=5)
    finally:
        release.set()
        scheduler.shutdown()


def test_forwards_go_out_while_the_poll_goes_on(
    tmp_path: Path, smtp_server: SmtpServer, tiny_model: tuple[Classifier, Path]
) -> None:
    """A forward queued by one batch reaches its department before the next batch is read:
    the poll is held after each batch until the SMTP server has what the batches queued."""
    box = tmp_path / "Maildir"
    kinds = ["complaint", "complaint", "question", "feedback", "complaint", "question"]
    for index, kind in enumerate(kinds):
        deliver(box, f"{index}.mail", make_email(*tiny_text(kind, "billing")))
    config = make_config(
        tmp_path,
        sources=[{"name": "box", "type": "maildir", "path": str(box), "batch_size": 2}],
        smtp={"host": "127.0.0.1", "port": smtp_server.port, "tls": "plain"},
        forwarding={"transport": "smtp", "from_address": "triage@shop.test"},
    )
    worker = Worker(config)
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    queued = worker.pipeline.on_queued
    assert queued is not None
    delivered_between_batches = []

    def hold_until_delivered() -> None:
        queued()
        wanted = count(worker.db, Forward)
        wait_until(lambda: len(smtp_server.messages) >= wanted, 10, step=0.05)
        delivered_between_batches.append(len(smtp_server.messages))

    worker.pipeline.on_queued = hold_until_delivered
    result = worker.run_once()

    assert delivered_between_batches == [2, 3, 4]  # batches (c, c), (q, f), (c, q)
    assert result.outbox.sent == 4 == len(smtp_server.messages)  # each sent once
