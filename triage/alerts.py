"""Tells the admin by email when something needs attention: once when it breaks, once when it heals.

A source is reported after ``alerts.after_failures`` failed polls in a row (the transition, not
every failure), and again at its first success after that; a model that cannot be loaded is
reported once per distinct problem. Alerts go through the forwarder's transport and carry the
loop-guard header, so an admin mailbox that is also a source never triages them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from triage.config import Config
from triage.forwarding import LOOP_HEADER, DeliveryError, Transport, set_subject, text_part
from triage.pipeline import PollResult
from triage.store.schema import utcnow

log = logging.getLogger(__name__)


class Alerter:
    """Sends one-sentence alerts to ``[alerts] email`` (or only logs them when none is set)."""

    def __init__(self, config: Config, transport: Transport) -> None:
        self.settings = config.alerts
        self.sender = config.forwarding.from_address
        self.transport = transport
        self._stale: set[str] = set()

    def after_poll(self, result: PollResult) -> None:
        """Alert on the poll that crossed the failure threshold, and on the recovery after it."""
        threshold = self.settings.after_failures
        # A failure that needs a fix (a refused login, a revoked token) is reported at once.
        if result.error and result.streak == (1 if result.permanent else threshold):
            self.send(
                f"source {result.source} is failing",
                f"Source {result.source} failed {result.streak} poll(s) in a row: {result.error}\n\n"
                "The worker keeps retrying with backoff and will tell you when it recovers; "
                f"check it with `triage poll {result.source}`.",
            )
        elif not result.error and result.recovered_from >= threshold:
            self.send(
                f"source {result.source} recovered",
                f"Source {result.source} polls again after {result.recovered_from} failures.",
            )

    def check_stale(self, last_success: dict[str, datetime | None], started: datetime) -> None:
        """Alert once per source that has not polled successfully within the window."""
        window = timedelta(minutes=self.settings.stale_after_minutes)
        now = utcnow()
        for name, success in last_success.items():
            stale = now - (success or started) > window
            if stale and name not in self._stale:
                self._stale.add(name)
                since = (
                    f"since {success:%Y-%m-%d %H:%M} UTC" if success else "since the worker started"
                )
                self.send(
                    f"source {name} is stale",
                    f"Source {name} has had no successful poll {since} "
                    f"(the window is {self.settings.stale_after_minutes:g} minutes). "
                    f"See `triage sources` and try `triage poll {name}`.",
                )
            elif not stale:
                self._stale.discard(name)

    def model_problem(self, problem: str) -> None:
        self.send("no usable model: messages go to review", problem)

    def send(self, subject: str, text: str) -> None:
        """Deliver one alert now; a failure is logged, never raised (alerts must not stop work)."""
        log.warning("alert: %s", subject)
        if not self.settings.email:
            return
        mail = text_part(text + "\n")
        mail["From"] = self.sender
        mail["To"] = self.settings.email
        set_subject(mail, f"[triage alert] {subject}")
        mail["Date"] = format_datetime(utcnow())
        mail["Message-ID"] = make_msgid("triage-alert", domain=self.sender.rpartition("@")[2])
        mail["Auto-Submitted"] = "auto-generated"
        mail[LOOP_HEADER] = "alert"
        try:
            self.transport.send(mail, self.sender, [self.settings.email])
        except DeliveryError as exc:
            log.error("could not send the alert %r: %s", subject, exc)
        finally:
            self.transport.close()
