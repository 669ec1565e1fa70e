"""Retention purge and right-to-erasure, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from triage.store.privacy import forget
from triage.store.schema import Classification, Customer, Message
from triage.worker.scheduler import Worker


def worker_on(
    tmp_path: Path, db_url: str, model: tuple[Classifier, Path], days: int = 30
) -> Worker:
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}
    worker = Worker(
        make_config(
            tmp_path, database={"url": db_url}, sources=[source], retention={"raw_days": days}
        )
    )
    worker.db.upgrade()
    worker.registry.register(*model, activate=True)
    return worker


def test_retention_erases_old_text_and_keeps_the_labels(
    tmp_path: Path, db_url: str, tiny_model: tuple[Classifier, Path]
) -> None:
    old = deliver(tmp_path / "Maildir", "1.old", make_email(*tiny_text("complaint", "billing")))
    ninety_days_ago = time.time() - 90 * 86400
    os.utime(old, (ninety_days_ago, ninety_days_ago))  # Maildir's arrival time is the mtime
    deliver(tmp_path / "Maildir", "2.new", make_email(*tiny_text("question", "delivery")))
    worker = worker_on(tmp_path, db_url, tiny_model)
    worker.run_once()
    assert worker.purge() == 1
    assert worker.purge() == 0
    with worker.db.session() as session:
        purged = session.scalars(select(Message).where(Message.purged_at.is_not(None))).one()
        kept = session.scalars(select(Message).where(Message.purged_at.is_(None))).one()
        labels = session.scalar(
            select(func.count())
            .select_from(Classification)
            .where(Classification.message_id == purged.id)
        )
    assert purged.raw == b"" and purged.body == "" and purged.source_id.endswith("1.old")
    assert labels == 3
    assert kept.raw and kept.body
    worker.db.dispose()


def test_forget_erases_one_customer(
    tmp_path: Path, db_url: str, tiny_model: tuple[Classifier, Path]
) -> None:
    for i, sender in enumerate(
        ["Olena <OLENA@example.com>", "olena@example.com", "taras@example.ua"]
    ):
        deliver(
            tmp_path / "Maildir",
            f"{i}.m",
            make_email(*tiny_text("complaint", "billing"), sender=sender),
        )
    worker = worker_on(tmp_path, db_url, tiny_model)
    assert worker.run_once().outbox.sent == 3
    gone = forget(worker.db, "Olena@Example.com")
    assert (gone.identities, gone.messages, gone.forwards) == (1, 2, 2)
    with worker.db.session() as session:
        assert session.scalars(select(Customer.address)).all() == ["taras@example.ua"]
        assert session.scalar(select(func.count()).select_from(Message)) == 1
    assert forget(worker.db, "olena@example.com").identities == 0
    worker.db.dispose()
