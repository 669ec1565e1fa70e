"""Source leases: several workers share one database, and each source is polled by one at a time.

A lease is two columns of the source's ``source_states`` row: who holds it and until when. It
is claimed with one conditional UPDATE (free, already ours, or expired), so the database decides
between workers and there is no coordinator process. Each batch of a poll renews the lease in
the batch's own transaction and commits only if the lease is still ours (a fence): a worker that
stalled past the expiry and lost its source cannot write over its successor. A worker that dies
keeps its leases until they expire; then another takes the source over (at once, if the dead
worker had the default name ``host:pid`` and ran on the same host as the claimant).

On PostgreSQL the database's clock is used, so hosts with skewed clocks still agree; on SQLite
(one worker is the norm there) the process's clock.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triage.store.database import Database
from triage.store.schema import SourceState, utcnow

log = logging.getLogger(__name__)

DEFAULT_TTL = 60.0


class LeaseLost(Exception):
    """Another worker holds the source now; the batch in hand was rolled back."""


def default_owner() -> str:
    """``hostname:pid``: unique among the workers sharing a database."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """Claims, renews and releases source leases for one worker (``owner``)."""

    def __init__(self, db: Database, owner: str | None = None, ttl: float = DEFAULT_TTL) -> None:
        self.db = db
        self.owner = owner or default_owner()
        self.ttl = ttl

    def claim(self, source: str) -> bool:
        """Take the lease of ``source`` if it is free, expired or already ours.

        Returns:
            True when this worker holds the lease now (for ``ttl`` seconds).
        """
        with self.db.transaction() as session:
            _ensure_row(session, source)
            took = self._extend(session, source, mine_only=False)
        if not took and (dead := self._dead_local_holder(source)):
            took = self._take_from(dead, source)
        log.debug("%s: lease %s by %s", source, "taken" if took else "not taken", self.owner)
        return took

    def fence(self, session: Session, source: str) -> None:
        """Renew the lease inside the caller's transaction, or raise if it is no longer ours.

        The renewing UPDATE locks the row until the caller commits, so no other worker can
        take the source between this check and that commit.

        Raises:
            LeaseLost: another worker took the source over (this one stalled past the expiry).
        """
        if not self._extend(session, source, mine_only=True):
            raise LeaseLost(f"{source}: the lease was lost to {self.holder(source)}")

    def release(self, source: str) -> None:
        """Give the lease back at the end of a poll (nothing happens if it is not ours)."""
        with self.db.transaction() as session:
            session.execute(
                update(SourceState)
                .where(SourceState.source == source, SourceState.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def release_all(self) -> None:
        """Give back every lease this worker holds (at its stop: a poll cut short may not
        have reached its own release)."""
        with self.db.transaction() as session:
            session.execute(
                update(SourceState)
                .where(SourceState.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def holder(self, source: str) -> str | None:
        """Who holds the lease of ``source`` now (None: free or expired)."""
        with self.db.session() as session:
            now, _ = self._clock(session)
            return session.scalar(
                select(SourceState.lease_owner).where(
                    SourceState.source == source, SourceState.lease_expires_at > now
                )
            )

    def _dead_local_holder(self, source: str) -> str | None:
        """The holder, if it is a default-named (host:pid) process of this host that is gone:
        a worker restarted after a crash need not wait for its old leases to expire."""
        holder = self.holder(source)
        host, _, pid = (holder or "").rpartition(":")
        if holder is None or host != socket.gethostname() or not pid.isdigit():
            return None
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return holder
        except PermissionError:  # alive, under another user
            return None
        return None

    def _take_from(self, dead: str, source: str) -> bool:
        with self.db.transaction() as session:
            _, expires = self._clock(session)
            result = session.execute(
                update(SourceState)
                .where(SourceState.source == source, SourceState.lease_owner == dead)
                .values(lease_owner=self.owner, lease_expires_at=expires)
                .execution_options(synchronize_session=False)
            )
        took = bool(result.rowcount)  # type: ignore[attr-defined]
        if took:
            log.info("%s: lease taken over from %s, which no longer runs", source, dead)
        return took

    def _extend(self, session: Session, source: str, *, mine_only: bool) -> bool:
        now, expires = self._clock(session)
        takeable: ColumnElement[bool] = SourceState.lease_owner == self.owner
        if not mine_only:
            takeable = or_(
                SourceState.lease_owner.is_(None),
                takeable,
                SourceState.lease_expires_at.is_(None),
                SourceState.lease_expires_at < now,
            )
        result = session.execute(
            update(SourceState)
            .where(SourceState.source == source, takeable)
            .values(lease_owner=self.owner, lease_expires_at=expires)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _clock(self, session: Session) -> tuple[Any, Any]:
        """Now and the new expiry: the database's clock on PostgreSQL (one clock for every
        host), the process's on SQLite."""
        if session.get_bind().dialect.name == "postgresql":
            return func.now(), func.now() + timedelta(seconds=self.ttl)
        now = utcnow()
        return now, now + timedelta(seconds=self.ttl)


def _ensure_row(session: Session, source: str) -> None:
    """Create the source's state row if it is missing; a row another worker made is kept."""
    values: dict[str, Any] = {"source": source, "error_streak": 0, "updated_at": utcnow()}
    table = SourceState.table()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(table).values(values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(table).values(values).on_conflict_do_nothing())
