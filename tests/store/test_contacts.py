"""The repeat-contact reads: per sender and area, linked identities together, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests import seed
from triage.store.contacts import recent_areas
from triage.store.database import Database
from triage.store.schema import Classification, Customer, utcnow


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


def test_recent_areas_per_sender_with_linked_identities_latest_label_and_cap(
    db: Database,
) -> None:
    now = utcnow()
    at = [now - timedelta(hours=hours) for hours in range(10)]
    seed.message(db, sender="olena@example.com", received_at=at[1], labels={"area": "billing"})
    relabelled = seed.message(
        db, sender="olena@example.com", received_at=at[2], labels={"area": "billing"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[3], labels={"area": "delivery"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[4], labels={"area": "delivery"}
    )
    seed.message(
        db, sender="olena.work@example.com", received_at=at[5], labels={"area": "delivery"}
    )
    seed.message(db, sender="ivan@example.com", received_at=at[1], labels={"area": "billing"})
    seed.message(db, sender="ivan@example.com", received_at=now - timedelta(days=60),
                 labels={"area": "billing"})  # fmt: skip
    seed.message(db, sender="taras@example.com", received_at=at[1])  # never classified
    with db.transaction() as session:
        # A newer model version moved one of Olena's messages to delivery.
        session.add(Classification(message_id=relabelled, axis="area", label="delivery",
                                   confidence=0.8, model_version="u"))  # fmt: skip
        session.execute(  # both of Olena's addresses are one person
            update(Customer)
            .where(Customer.address.in_(["olena@example.com", "olena.work@example.com"]))
            .values(person_id=1)
        )
    senders = [("email", "olena@example.com"), ("email", "ivan@example.com"),
               ("email", "taras@example.com"), ("email", "nobody@example.com")]  # fmt: skip

    with db.session() as session:
        found = recent_areas(session, senders, now - timedelta(days=30), per_area=2)

    assert sorted(found) == [("email", "ivan@example.com"), ("email", "olena@example.com")]
    assert found[("email", "ivan@example.com")] == [("billing", at[1])]  # the old one is out
    # Olena: her billing message, and the latest two delivery ones of all her identities
    # (the relabelled one counts once, as delivery).
    assert sorted(found[("email", "olena@example.com")], key=lambda row: row[1]) == [
        ("delivery", at[3]),
        ("delivery", at[2]),
        ("billing", at[1]),
    ]
