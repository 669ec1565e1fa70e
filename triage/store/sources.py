"""A source's state in the store: its checkpoint, its health and when it may be polled again.

The pipeline writes it (a checkpoint with each batch, in the batch's transaction; a success, a
failure or a rate limit's pause after each poll); the worker's schedule, `triage status`, the
metrics, the page and `triage sources` read it, so none of them builds a pipeline to ask. A
source's lease lives in the same row (triage/store/leases.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.store.database import Database
from triage.store.schema import SourceState, utcnow

MAX_BACKOFF_SECONDS = 3600.0
"""The longest wait between two polls of a failing source."""


def backoff_until(state: SourceState | None, base_seconds: float) -> datetime | None:
    """When a failing source may be polled again (exponential, jittered); None if healthy.

    The jitter is fixed per (source, streak), so every process that asks agrees on the instant.
    """
    if state is None or state.error_streak == 0:
        return None
    jitter = random.Random(f"{state.source}:{state.error_streak}").uniform(0.5, 1.0)
    delay = min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** (state.error_streak - 1))
    return state.updated_at + timedelta(seconds=delay * jitter)


class SourceStates:
    """Reads and records the state of sources in one database.

    Args:
        db: the store.
        clock: now, for the rate-limit pause (tests move it past a pause).
    """

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def all(self) -> dict[str, SourceState]:
        """Every source's state row, by name."""
        with self.db.session() as session:
            return {state.source: state for state in session.scalars(select(SourceState))}

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self.db.session() as session:
            state = session.get(SourceState, name)
            return state.checkpoint if state else None

    @staticmethod
    def save_checkpoint(session: Session, name: str, checkpoint: dict[str, Any]) -> None:
        """Move the checkpoint, in the caller's transaction (the batch's)."""
        state = _state(session, name)
        state.checkpoint = dict(checkpoint)
        state.updated_at = utcnow()

    def record_success(self, name: str) -> int:
        """Mark the source healthy; returns the failure streak this success ended."""
        with self.db.transaction() as session:
            state = _state(session, name)
            streak = state.error_streak
            state.last_success_at, state.error_streak, state.last_error = utcnow(), 0, None
            state.paused_until = None
        return streak

    def record_failure(self, name: str, error: str) -> int:
        """Count a failed poll; returns the streak, which sets the backoff."""
        with self.db.transaction() as session:
            state = _state(session, name)
            state.error_streak += 1
            state.last_error = error
            state.updated_at = utcnow()
            return state.error_streak

    def record_pause(self, name: str, until: datetime, why: str) -> datetime:
        """Remember the service's pause; a rate limit is not a failure (no streak, no alert)."""
        with self.db.transaction() as session:
            state = _state(session, name)
            state.paused_until, state.last_error = until, why
            state.updated_at = utcnow()
        return until

    def paused_until(self, name: str) -> datetime | None:
        """The end of the source's rate-limit pause, while it lasts."""
        with self.db.session() as session:
            state = session.get(SourceState, name)
            paused = state.paused_until if state else None
        return paused if paused is not None and self.clock() < paused else None

    def backoff_until(self, name: str, base_seconds: float) -> datetime | None:
        with self.db.session() as session:
            return backoff_until(session.get(SourceState, name), base_seconds)

    def last_successes(self, names: Sequence[str]) -> dict[str, datetime | None]:
        """The last successful poll of each source (None: never)."""
        states = self.all()
        return {name: states[name].last_success_at if name in states else None for name in names}


def _state(session: Session, name: str) -> SourceState:
    state = session.get(SourceState, name)
    if state is None:
        state = SourceState(source=name, error_streak=0)
        session.add(state)
    return state
