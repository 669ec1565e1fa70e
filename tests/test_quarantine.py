"""`triage quarantine list|show|retry`: poison messages kept with their bytes and reprocessed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomli_w
from sqlalchemy import select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import DEPARTMENTS, make_config, make_email
from triage.store.schema import Message
from triage.worker.scheduler import Worker


def triage(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "ERROR", *args],
        capture_output=True,
        timeout=120,
    )


def test_list_show_and_retry(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.empty", b"")
    settings = {
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "sources": [{"name": "box", "type": "maildir", "path": str(box)}],
        "departments": DEPARTMENTS,
        "routing": {"review_department": "review", "min_confidence": 0.0},
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
    }
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    worker = Worker(make_config(tmp_path, **settings))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    worker.run_once()
    # A message an older version could not handle, kept with its bytes:
    raw = make_email(*tiny_text("complaint", "billing"))
    with worker.db.transaction() as session:
        session.add(
            Message(source="box", source_id="maildir:box:2.old", content_key="f" * 64,
                    status="quarantined", error="ValueError: parser bug", raw=raw, size=len(raw))
        )  # fmt: skip

    listing = triage(config, "quarantine", "list").stdout.decode()
    assert "maildir:box:1.empty" in listing and "parser bug" in listing
    ids = {m.source_id: m.id for m in _quarantined(worker)}
    shown = triage(config, "quarantine", "show", str(ids["maildir:box:2.old"]))
    assert shown.returncode == 0 and b"parser bug" in shown.stdout
    assert (
        triage(config, "quarantine", "show", "--raw", str(ids["maildir:box:2.old"])).stdout == raw
    )

    unknown = triage(config, "quarantine", "retry", "99999")
    assert unknown.returncode == 1
    assert b"there is no quarantined message 99999; see `triage quarantine list`" in unknown.stderr
    retried = triage(config, "quarantine", "retry", "--all")
    assert retried.returncode == 1  # the empty message cannot be fixed
    assert b"1 message(s) processed, 1 still quarantined; 1 forward(s) delivered" in retried.stdout
    assert [m.source_id for m in _quarantined(worker)] == ["maildir:box:1.empty"]
    assert len(list((tmp_path / "forwards").glob("*.eml"))) == 1
    worker.db.dispose()


def _quarantined(worker: Worker) -> list[Message]:
    with worker.db.session() as session:
        return list(session.scalars(select(Message).where(Message.status == "quarantined")))
