"""`triage status`: what it reports and the exit codes monitoring scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w

from classifiers.model import Classifier
from tests import seed
from triage.config import parse_config
from triage.lifecycle.registry import ModelRegistry
from triage.store.database import Database
from triage.views import status


@pytest.fixture
def site(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> tuple[Path, Database]:
    """A config file and its upgraded database with the tiny model active."""
    data = seed.settings(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    db = Database(data["database"]["url"])
    db.upgrade()
    ModelRegistry(db, tmp_path / "models").register(*tiny_model, activate=True)
    return path, db


def run_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "triage",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
            "status",
            *args,
        ],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


@pytest.mark.slow
def test_healthy_source_exits_0_and_json_has_the_documented_keys(
    site: tuple[Path, Database],
) -> None:
    config, db = site
    seed.source_state(db, "box", ago=timedelta(minutes=2))
    message = seed.message(db, labels={"kind": "complaint"}, route=seed.review_route())
    seed.forward(db, message, "review", status="pending", attempts=2)

    text = run_status(config)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "box" in text.stdout and "all is well" in text.stdout

    result = run_status(config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "healthy", "problems", "checked_at", "sources", "outbox", "quarantined", "review", "model",
    }  # fmt: skip
    assert report["healthy"] is True and report["problems"] == []
    (box,) = report["sources"]
    assert box["name"] == "box" and box["error_streak"] == 0
    assert 100 < box["lag_seconds"] < 200
    assert not box["stale"] and not box["failing"]
    assert report["outbox"] == {"pending": 1, "retrying": 1, "failed": 0, "sent": 0}
    assert report["review"] == 1 and report["quarantined"] == 0
    assert report["model"]["usable"] is True and report["model"]["version"]


@pytest.mark.slow
def test_stalled_source_exits_1_naming_it(site: tuple[Path, Database]) -> None:
    config, db = site
    seed.source_state(db, "box", ago=timedelta(hours=3))

    result = run_status(config, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["sources"][0]["stale"] is True
    assert len(report["problems"]) == 1 and "source box" in report["problems"][0]

    text = run_status(config)
    assert text.returncode == 1
    assert "attention:" in text.stdout and "no successful poll" in text.stdout


@pytest.mark.slow
def test_status_json_says_why_it_cannot_tell(tmp_path: Path) -> None:
    """A monitor parsing stdout must read a broken config or database as unhealthy."""
    config = tmp_path / "config.toml"
    config.write_text("[schedule]\npoll_interval = -1\n", encoding="utf-8")
    broken = run_status(config, "--json")
    assert broken.returncode == 2
    report = json.loads(broken.stdout)
    assert report["healthy"] is False and "schedule.poll_interval" in report["problems"][0]
    (tmp_path / "notes.db").write_text("not a database")
    (tmp_path / "notes.db").chmod(0o600)
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "notes.db"}"\n', encoding="utf-8")
    unreadable = run_status(config, "--json")
    assert unreadable.returncode == 3
    assert "file is not a database" in json.loads(unreadable.stdout)["problems"][0]


def test_error_streak_failed_forwards_and_missing_model_need_attention(tmp_path: Path) -> None:
    config = parse_config(seed.settings(tmp_path), base_dir=tmp_path)
    db = Database(config.database.url)
    db.upgrade()
    seed.source_state(db, "box", ago=timedelta(minutes=1), streak=3, error="connection refused")
    seed.forward(db, seed.message(db), "billing", status="failed", attempts=8)
    seed.forward(db, seed.message(db), "billing", attempts=2)  # retrying, not stuck yet

    report = status.collect(config, db)
    assert not report.healthy
    assert report.sources[0].failing and not report.sources[0].stale
    assert report.sources[0].backoff_until is not None
    assert report.sources[0].next_poll.startswith("backing off until")
    assert report.sources[0].next_poll_at == report.sources[0].backoff_until
    problems = " | ".join(report.problems)
    assert "3 failed poll(s) in a row: connection refused" in problems
    assert "1 forward(s) failed" in problems
    assert "model: no model is active" in problems
    assert "retrying" not in problems
    seed.forward(db, seed.message(db), "billing", attempts=3)
    assert (
        "outbox: 1 forward(s) failed 3+ attempts and are retrying: 550 mailbox unavailable"
        in status.collect(config, db).problems
    )


def test_a_source_never_polled_is_stale_only_after_the_window(tmp_path: Path) -> None:
    config = parse_config(seed.settings(tmp_path), base_dir=tmp_path)
    db = Database(config.database.url)
    db.upgrade()
    now = status.utcnow()
    (fresh,) = status.source_health(config, db, started=now - timedelta(minutes=5))
    (old,) = status.source_health(config, db, started=now - timedelta(hours=2))
    (unknown,) = status.source_health(config, db)
    assert not fresh.stale and old.stale and unknown.stale
    assert fresh.lag_seconds is None and fresh.next_poll == "due now"
    assert now <= fresh.next_poll_at <= status.utcnow()


def test_a_model_whose_labels_routing_never_matches_needs_attention(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    """Labels trained as 'Complaint' and 'Billing' never match the config: nothing is
    forwarded, and status must not call that well."""
    settings = seed.settings(tmp_path)
    settings["routing"] = {"forward_kinds": ["Complaint", "feedback", "praise"]}
    config = parse_config(settings, base_dir=tmp_path)
    db = Database(config.database.url)
    db.upgrade()
    ModelRegistry(db, tmp_path / "models").register(*tiny_model, activate=True)
    version = tiny_model[0].version
    problems = status.collect(config, db).problems
    case = "routing.forward_kinds has 'Complaint' but the model's kind label is 'complaint'"
    unknown = (
        "routing.forward_kinds has 'praise', which is none of the model's kind labels "
        "(complaint, feedback, question)"
    )
    assert problems[-2:] == [f"model {version}: {case}", f"model {version}: {unknown}"]
