"""Source leases against a real database: one claim wins, expiry hands over, renewal extends,
a worker that lost its lease cannot commit a batch."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from triage.store.database import Database
from triage.store.leases import LeaseLost, Leases, default_owner


def test_one_claim_wins_until_released(db: Database) -> None:
    a, b = Leases(db, "a", ttl=30), Leases(db, "b", ttl=30)
    assert a.claim("support")  # the source's row is created by the claim
    assert not b.claim("support")
    assert a.claim("support")  # claiming again is renewing
    assert b.holder("support") == "a"
    a.release("support")
    assert a.holder("support") is None
    assert b.claim("support")
    b.release("other")  # nothing held there: no error


def test_expiry_hands_the_source_over_and_renewal_extends(db: Database) -> None:
    a, b = Leases(db, "a", ttl=0.6), Leases(db, "b", ttl=0.6)
    assert a.claim("support")
    time.sleep(0.4)
    with db.transaction() as session:
        a.fence(session, "support")  # renewed: 0.6 s from now
    time.sleep(0.4)
    assert not b.claim("support")  # would have expired without the renewal
    time.sleep(0.4)
    assert b.claim("support")  # expired: b takes over
    with pytest.raises(LeaseLost, match="lost to b"), db.transaction() as session:
        a.fence(session, "support")
    a.release("support")  # a's release leaves b's lease alone
    assert a.holder("support") == "b"


@pytest.mark.live
def test_concurrent_claims_on_postgresql_have_one_winner(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    owners = [Leases(db, f"w{i}", ttl=30) for i in range(8)]
    for round_ in range(5):
        source = f"s{round_}"
        with ThreadPoolExecutor(len(owners)) as pool:
            took = list(pool.map(Leases.claim, owners, [source] * len(owners)))
        assert took.count(True) == 1
    db.dispose()


def test_default_owner_is_host_and_pid() -> None:
    host, _, pid = default_owner().rpartition(":")
    assert host and pid.isdigit()


def test_a_dead_process_of_this_host_loses_its_leases_at_once(db: Database) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Leases(db, f"{socket.gethostname()}:{gone.pid}", ttl=30)
    assert dead.claim("support")
    assert Leases(db, "other", ttl=30).claim("support")  # the pid no longer runs
    alive = Leases(db, default_owner(), ttl=30)  # this very process
    assert alive.claim("mine")
    assert not Leases(db, "other", ttl=30).claim("mine")
