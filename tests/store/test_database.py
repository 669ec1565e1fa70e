"""Engine settings that matter at scale."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select, text

from triage.store.database import Database
from triage.store.schema import Message, utcnow

pytestmark = pytest.mark.live


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
