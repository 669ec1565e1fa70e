"""Opening the store: engine settings that matter at scale, and a database that cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from triage.errors import StoreError
from triage.store.database import Database
from triage.store.schema import Message, utcnow


def test_a_file_that_is_not_a_database_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "triage.db"
    path.write_text("these are notes, not a database")
    path.chmod(0o600)
    with pytest.raises(StoreError, match=f"cannot open the database sqlite:///{path}: file is not"):
        Database(f"sqlite:///{path}").upgrade()


@pytest.mark.live
def test_a_read_only_database_is_refused_at_start(postgres_url: str) -> None:
    Database(postgres_url).upgrade()
    url = make_url(postgres_url)
    options = f"{url.query['options']} -cdefault_transaction_read_only=on"
    read_only = url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    with pytest.raises(StoreError, match=r"cannot write to the database .*read-only transaction"):
        Database(read_only).upgrade()


@pytest.mark.live
def test_postgres_stores_mail_compressed_with_lz4(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    raw = b"Subject: a long complaint\r\n\r\n" + b"The parcel never came. " * 2000
    with db.transaction() as session:
        session.execute(insert(Message), [
            {"source": "s", "source_id": "1", "content_key": "k", "raw": raw, "subject": "",
             "channel": "email", "status": "stored", "received_at": utcnow()}
        ])  # fmt: skip
    with db.session() as session:
        assert session.scalar(select(func.pg_column_compression(Message.raw))) == "lz4"
        assert session.scalar(select(Message.raw)) == raw
        assert session.execute(text("SHOW default_toast_compression")).scalar() == "lz4"
    db.dispose()
