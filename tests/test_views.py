"""Every view an operator reads, on SQLite and PostgreSQL, over a store with rows in every state:
forwards pending, retrying, sent and failed to several departments, review, quarantine, a social
post, and an alert that could not be mailed. The status page failed on PostgreSQL alone
(GroupingError) while these views were tested on SQLite only."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tests import seed
from triage.cli import cli
from triage.config import Config, parse_config
from triage.store.database import Database
from triage.store.schema import utcnow
from triage.views import dashboard, metrics, reports, status, web


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    settings = seed.settings(
        tmp_path,
        database={"url": db_url},
        sources=[
            {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")},
            {"name": "x-support", "type": "x", "user_id": "42", "token_env": "X_TOKEN"},
        ],
        alerts={"email": "admin@shop.test", "after_failures": 3, "stale_after_minutes": 60},
    )
    (tmp_path / "config.toml").write_text(tomli_w.dumps(settings), encoding="utf-8")
    return parse_config(settings, base_dir=tmp_path)


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database(config.database.url)
    database.upgrade()
    populate(database)
    yield database
    database.dispose()


def populate(db: Database) -> None:
    labels = {"kind": "complaint", "area": "billing", "urgency": "urgent"}
    states = [("billing", "pending", 0), ("billing", "pending", 4), ("logistics", "sent", 1),
              ("logistics", "failed", 5), ("review", "pending", 0)]  # fmt: skip
    for n, (department, state, attempts) in enumerate(states):
        message = seed.message(
            db,
            subject=f"request {n}",
            sender="olena@example.com",
            labels=labels,
            status="classified",
            received_at=utcnow() - timedelta(hours=n),
            route=seed.review_route() if department == "review" else None,
        )
        seed.forward(db, message, department, status=state, attempts=attempts)
    seed.message(db, status="quarantined", sender="broken@example.com")
    seed.message(
        db, source="x-support", channel="x", post_kind="dm", sender="@olena_p",
        status="classified", labels=labels,
    )  # fmt: skip
    seed.source_state(db, "box", ago=timedelta(seconds=30))
    seed.source_state(db, "x-support", ago=timedelta(seconds=30))
    seed.alert(db, "source box is failing", error="SMTP server 127.0.0.1:25 failed: refused")
    seed.alert(db, "source box recovered", sent=True)


def test_status_names_every_problem_on_the_way_out(config: Config, db: Database) -> None:
    report = status.collect(config, db, load_model=False)
    assert report.outbox == status.Outbox(pending=3, retrying=1, failed=1, sent=1)
    assert (report.quarantined, report.review) == (1, 1)
    problems = "\n".join(report.problems)
    assert "1 forward(s) failed for good" in problems
    assert "1 forward(s) failed 3+ attempts and are retrying: 550" in problems
    assert "1 alert(s) to admin@shop.test could not be mailed" in problems
    assert "'source box is failing': SMTP server 127.0.0.1:25 failed: refused" in problems


def test_the_page_renders_every_department_in_every_state(config: Config, db: Database) -> None:
    assert dashboard.forwards_by_department(db) == {
        "billing": {"pending": 1, "retrying": 1, "sent": 0, "failed": 0},
        "logistics": {"pending": 0, "retrying": 0, "sent": 1, "failed": 1},
        "review": {"pending": 1, "retrying": 0, "sent": 0, "failed": 0},
    }
    page = dashboard.render(config, db)
    assert "Alerts that could not be mailed (1)" in page
    assert "SMTP server 127.0.0.1:25 failed: refused" in page
    assert "request 4" in page  # the review queue


def test_healthz_is_unhealthy_while_forwards_and_alerts_fail(config: Config, db: Database) -> None:
    ok, body = web.Site(lambda: config, db, utcnow()).health()
    assert not ok and body["status"] == "unhealthy"
    assert body["sources"] == {"box": "ok", "x-support": "ok"}
    reasons = "\n".join(body["reasons"])
    assert "failed for good" in reasons and "could not be mailed" in reasons


def test_metrics_count_every_state(config: Config, db: Database) -> None:
    text = metrics.exposition(metrics.registry_for(lambda: config, db, utcnow())).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("triage_forwards", (("department", "logistics"), ("status", "failed")))] == 1
    assert samples[("triage_forwards_retrying", (("department", "billing"),))] == 1
    assert samples[("triage_review_messages", ())] == 1


def test_stats_count_by_source_and_by_channel(db: Database) -> None:
    numbers = reports.stats(db)
    assert numbers["messages"] == 7  # the integer it always was
    assert numbers["by_source"] == {
        "box": {"stored": 5, "quarantined": 1},
        "x-support": {"stored": 1, "quarantined": 0},
    }
    assert numbers["by_channel"] == {
        "email": {"stored": 5, "quarantined": 1},
        "x:dm": {"stored": 1, "quarantined": 0},
    }


@pytest.mark.parametrize(
    ("args", "code", "shown"),
    [
        (("review",), 0, "request 4"),
        (("history", "--customer", "olena@example.com"), 0, "request 3"),
        (("sources",), 0, "x-support"),
        (("outbox", "list", "--status", "all"), 0, "550 mailbox unavailable"),
        (("stats", "--json"), 0, '"by_channel"'),
        (("status", "--json"), 1, "could not be mailed"),
    ],
)
def test_the_commands_read_the_same_store(
    tmp_path: Path, db: Database, args: tuple[str, ...], code: int, shown: str
) -> None:
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "config.toml"), *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == code, result.output
    assert shown in result.output
    if "--json" in args:
        json.loads(result.output)


def test_the_export_names_each_message_s_source_and_channel(tmp_path: Path, db: Database) -> None:
    target = tmp_path / "labelled.csv"
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "config.toml"), "export", "--labelled", str(target)]
    )
    assert result.exit_code == 0, result.output
    with target.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["source_name"], row["channel"]) for row in rows} == {
        ("box", "email"),
        ("x-support", "x:dm"),
    }
    assert all(row["source"] == "model" for row in rows)  # the label provenance, as before
