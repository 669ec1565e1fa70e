"""What a poll reports: one outcome per item, counted, and the poll's own fate.

Kept apart from the pipeline so the read side (metrics, alerts, the CLI's tables) can take a
poll's result without importing the write path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from classifiers.base import Prediction
from triage.decide.route import Route


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item, for the run report."""

    source_id: str
    sender: str
    subject: str
    status: str  # "stored", "duplicate", "quarantined"
    predictions: dict[str, Prediction] | None = None
    route: Route | None = None
    error: str | None = None


KEPT_OUTCOMES = 500
"""Outcomes a poll result keeps for display; beyond them it only counts, so a poll of a
100,000-message mailbox holds no more in memory than a poll of a small one."""


@dataclass
class PollResult:
    """The summary of one poll of one source."""

    source: str
    outcomes: list[Outcome] = field(default_factory=list)  # the first KEPT_OUTCOMES
    error: str | None = None
    streak: int = 0  # failed polls in a row, this one included
    permanent: bool = False  # the failure needs a fix (login refused, revoked token)
    recovered_from: int = 0  # the streak this successful poll ended
    paused_until: datetime | None = None  # rate-limited: not polled again before this
    busy_with: str | None = None  # not polled: this other worker holds the source now
    stopped: bool = False  # a stop request ended the poll; what was not committed is re-read
    counts: Counter[str] = field(default_factory=Counter)  # by status, and "forwarded"

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.counts[outcome.status] += 1
            if outcome.route is not None and outcome.route.department:
                self.counts["forwarded"] += 1
            if len(self.outcomes) < KEPT_OUTCOMES:
                self.outcomes.append(outcome)

    def count(self, status: str) -> int:
        return self.counts[status]

    @property
    def forwarded(self) -> int:
        return self.counts["forwarded"]

    @property
    def total(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "forwarded")
