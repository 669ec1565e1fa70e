"""The daemon's HTTP endpoint: /metrics against seeded data, /healthz, and the status page,
escaped, and rendered in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from classifiers.model import Classifier
from tests import seed
from tests.servers.fixtures import missing
from triage.config import Config, parse_config
from triage.intake.results import PollResult
from triage.lifecycle.registry import ModelRegistry
from triage.store.database import Database
from triage.store.schema import utcnow
from triage.views import metrics, web

XSS = "<script>document.title='pwned'</script> refund"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(seed.settings(tmp_path), base_dir=tmp_path)


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database(config.database.url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def server(config: Config, db: Database) -> Iterator[web.WebServer]:
    running = web.WebServer(("127.0.0.1", 0), web.Site(lambda: config, db, utcnow())).start()
    yield running
    running.close()


def populate(db: Database) -> None:
    """Two days of mail, forwards in every state, one in review with hostile text."""
    yesterday = utcnow() - timedelta(days=1)
    for i, (area, urgency) in enumerate(
        [("billing", "urgent"), ("billing", "normal"), ("delivery", "normal")]
    ):
        forwarded = seed.message(
            db,
            subject=f"parcel {i}",
            received_at=yesterday,
            labels={"kind": "complaint", "area": area, "urgency": urgency},
        )
        department = "billing" if area == "billing" else "logistics"
        seed.forward(db, forwarded, department, status=("sent", "failed", "pending")[i])
    review = seed.message(
        db,
        subject=XSS,
        sender="mallory@example.com",
        labels={"kind": "complaint", "area": "billing", "urgency": "urgent"},
        route=seed.review_route(),
    )
    seed.forward(db, review, "review", status="pending", attempts=1)
    seed.message(db, source="other", status="quarantined")
    seed.source_state(db, "box", ago=timedelta(seconds=90))


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def scrape(server: web.WebServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, content_type, body = get(server.url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_report_the_seeded_store(server: web.WebServer, db: Database) -> None:
    populate(db)
    metrics.observe_poll(PollResult("box", error="timed out"), 0.3)
    values = scrape(server)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert value("triage_database_up") == 1
    assert value("triage_messages_ingested", source="box", status="stored") == 4
    assert value("triage_messages_ingested", source="other", status="quarantined") == 1
    assert value("triage_messages_classified", axis="area", label="billing") == 3
    assert value("triage_messages_classified", axis="urgency", label="urgent") == 2
    assert value("triage_forwards", department="billing", status="sent") == 1
    assert value("triage_forwards", department="billing", status="failed") == 1
    assert value("triage_forwards", department="logistics", status="pending") == 1
    assert value("triage_forwards_retrying", department="review") == 1
    assert value("triage_review_messages") == 1
    assert 85 <= value("triage_source_lag_seconds", source="box") < 150
    assert value("triage_source_error_streak", source="box") == 0
    assert value("triage_source_healthy", source="box") == 1
    assert value("triage_poll_duration_seconds_count", source="box") >= 1
    assert value("triage_poll_errors_total", source="box") >= 1


def test_metrics_answer_when_the_database_does_not(config: Config, tmp_path: Path) -> None:
    gone = Database(f"sqlite:///{tmp_path / 'nowhere' / 'triage.db'}")
    server = web.WebServer(("127.0.0.1", 0), web.Site(lambda: config, gone)).start()
    try:
        values = scrape(server)
        assert values[("triage_database_up", ())] == 0
        code, _, body = get(server.url + "/healthz")
        assert code == 503
        assert "database does not answer" in json.loads(body)["reasons"][0]
    finally:
        server.close()


def test_healthz_is_200_only_while_every_source_polls(server: web.WebServer, db: Database) -> None:
    seed.source_state(db, "box", ago=timedelta(minutes=5))
    code, content_type, body = get(server.url + "/healthz")
    assert (code, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "sources": {"box": "ok"}}

    seed.source_state(db, "box", ago=timedelta(hours=2))
    code, _, body = get(server.url + "/healthz")
    assert code == 503
    answer = json.loads(body)
    assert answer["status"] == "unhealthy" and answer["sources"] == {"box": "stale"}
    assert "source box: no successful poll since" in answer["reasons"][0]

    seed.source_state(db, "box", ago=timedelta(minutes=1), streak=4, error="login refused")
    code, _, body = get(server.url + "/healthz")
    assert code == 503 and json.loads(body)["sources"] == {"box": "failing"}


def test_page_escapes_customer_text(server: web.WebServer, db: Database) -> None:
    populate(db)
    code, content_type, body = get(server.url + "/")
    page = body.decode()
    assert code == 200 and content_type == "text/html; charset=utf-8"
    assert "<script" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; refund" in page
    assert get(server.url + "/nope")[0] == 404


def test_web_server_is_off_or_survives_a_busy_port(config: Config, db: Database) -> None:
    assert web.start(lambda: config, db) is None  # enabled = false
    first = web.WebServer(("127.0.0.1", 0), web.Site(lambda: config, db)).start()
    try:
        busy = config.model_copy(
            update={
                "web": config.web.model_copy(
                    update={"enabled": True, "listen": f"127.0.0.1:{first.port}"}
                )
            }
        )
        assert web.start(lambda: busy, db) is None  # logged, not raised
    finally:
        first.close()


# --- in a real browser ---------------------------------------------------------------------


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2200",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        missing("chromium not found (apt-get install chromium chromium-driver)")
    return found


def browse(url: str, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_page_renders_in_headless_chromium(
    server: web.WebServer,
    db: Database,
    config: Config,
    tmp_path: Path,
    tiny_model: tuple[Classifier, Path],
) -> None:
    populate(db)
    ModelRegistry(db, config.classifier.models_dir).register(*tiny_model, activate=True)

    dom = browse(server.url + "/", tmp_path, "--dump-dom")
    assert "<title>triage status</title>" in dom  # the hostile subject did not retitle it
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt; refund" in dom
    for heading in (
        "Volume per day by product area",
        "Volume per day by urgency",
        "Review queue (1 in all",
        "Forwards per department",
        "Sources",
        "Active model",
    ):
        assert heading in dom
    assert dom.count('<svg class="chart"') == 2 and "<rect" in dom
    assert "billing (3)" in dom and "urgent (2)" in dom  # chart legends with totals
    assert "mallory@example.com" in dom and "low confidence: billing 0.31" in dom
    assert tiny_model[0].version in dom and "precision" in dom

    shot = tmp_path / "status-page.png"
    browse(server.url + "/", tmp_path, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
