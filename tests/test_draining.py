"""`run --once`, `poll` and `quarantine retry` deliver every forward that can go now, pass after
pass, and say what is left and why, with exit 1 when a forward they queued is not delivered.
(One pass delivered at most 1,000: a first sync of 7,012 mails left 1,442 unsent behind "0 to
retry, 0 failed" and exit 0.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import DEPARTMENTS, make_config, make_email
from tests.servers.smtp import SmtpServer
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


def complaints(box: Path, count: int, start: int = 0) -> None:
    """``count`` complaints from as many customers (one sender's are capped per hour)."""
    for n in range(start, start + count):
        deliver(
            box, f"{n}.mail", make_email(*tiny_text("complaint", "billing"), sender=f"c{n}@x.test")
        )


def settings(tmp_path: Path, db_url: str, smtp: SmtpServer | None = None) -> dict[str, object]:
    transport: dict[str, object] = (
        {"transport": "smtp", "from_address": "triage@shop.test"}
        if smtp
        else {"transport": "directory", "directory": str(tmp_path / "forwards")}
    )
    return {
        "database": {"url": db_url},
        "sources": [{"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {**transport, "retry_base_seconds": 600},
        **({"smtp": {"host": "127.0.0.1", "port": smtp.port, "tls": "plain"}} if smtp else {}),
        "classifier": {"models_dir": str(tmp_path / "models")},
    }


def test_one_run_delivers_every_forward_pass_after_pass(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer, tiny_model: tuple[Classifier, Path]
) -> None:
    complaints(tmp_path / "Maildir", 30)
    worker = Worker(make_config(tmp_path, **settings(tmp_path, db_url, smtp_server)))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    worker.forwarder.pass_limit = 7  # five passes for 30 forwards
    result = worker.run_once()
    assert result.outbox.sent == 30 == len(smtp_server.messages)
    assert not result.left.count and not result.failed
    worker.db.dispose()


@pytest.mark.parametrize("command", [("run", "--once", "--quiet"), ("poll", "box")])
def test_what_is_left_is_said_and_fails_the_run(
    tmp_path: Path,
    db_url: str,
    smtp_server: SmtpServer,
    tiny_model: tuple[Classifier, Path],
    command: tuple[str, ...],
) -> None:
    """The SMTP server refuses three forwards for now (4xx): they wait for their retry time,
    and the run says so and exits 1."""
    complaints(tmp_path / "Maildir", 5)
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings(tmp_path, db_url, smtp_server)), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings(tmp_path, db_url, smtp_server)))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    smtp_server.fail_next(451, "try again later", times=3)
    run = subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "ERROR",
         *command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 forward(s) sent by SMTP, 3 to retry, 0 failed" in run.stdout
    assert "not delivered: 3 forward(s) not delivered: 3 waiting for a retry" in run.stdout
    assert "451 try again later" in run.stdout
    worker.db.dispose()


@pytest.mark.slow
def test_a_first_sync_of_thousands_forwards_all_in_one_run(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    """2,500 complaints: more than two passes of the outbox, all delivered by one run --once."""
    complaints(tmp_path / "Maildir", 2500)
    data = settings(tmp_path, f"sqlite:///{tmp_path / 'triage.db'}")
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **data))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    worker.db.dispose()
    run = subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "ERROR",
         "run", "--once", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2500 forward(s) written to" in run.stdout
    assert len(list((tmp_path / "forwards").glob("*.eml"))) == 2500
