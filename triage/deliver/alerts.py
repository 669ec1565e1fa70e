"""Tells the admin by email when something needs attention: once when it breaks, once when it heals.

A source is reported after ``alerts.after_failures`` failed polls in a row (the transition, not
every failure), and again at its first success after that; a model that cannot be loaded is
reported once per distinct problem. Alerts go through the forwarder's transport and carry the
loop-guard header, so an admin mailbox that is also a source never triages them.

The mail server that fails the forwards may fail the alert too: each alert is recorded in the
store, one that could not be mailed is logged at ERROR with its whole text, shown by `triage
status`, /healthz and the status page, and mailed again by the outbox job until it goes out.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from triage.config import Config
from triage.deliver.mail import LOOP_HEADER, set_subject, text_part
from triage.deliver.transports import DeliveryError, Transport
from triage.intake.results import PollResult
from triage.store.database import Database
from triage.store.queries import RETRY_ALERTS_FOR
from triage.store.schema import Alert, utcnow

log = logging.getLogger(__name__)


class Alerter:
    """Sends one-sentence alerts to ``[alerts] email`` (or only logs them when none is set)."""

    def __init__(self, config: Config, transport: Transport, db: Database) -> None:
        self.settings = config.alerts
        self.sender = config.forwarding.from_address
        self.transport = transport
        self.db = db
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
        self._mail(self._record(subject, text), subject, text)

    def retry_unsent(self) -> int:
        """Mail again the alerts of the last days that could not be mailed; returns how many
        went out now. Called after a flush that delivered forwards: the way out works again."""
        if not self.settings.email:
            return 0
        try:
            with self.db.session() as session:
                unsent = session.execute(
                    select(Alert.id, Alert.subject, Alert.body)
                    .where(
                        Alert.sent_at.is_(None),
                        Alert.error.is_not(None),  # not one being mailed for the first time
                        Alert.created_at > utcnow() - RETRY_ALERTS_FOR,
                    )
                    .order_by(Alert.id)
                ).all()
        except SQLAlchemyError:
            log.warning("cannot read the unsent alerts from the store", exc_info=True)
            return 0
        return sum(self._mail(id_, subject, body) for id_, subject, body in unsent)

    def _mail(self, alert_id: int | None, subject: str, text: str) -> bool:
        assert self.settings.email is not None
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
            log.error(
                "could not mail the alert %r to %s (%s); it is kept and mailed again by the "
                "outbox job. It says: %s",
                subject,
                self.settings.email,
                exc,
                text,
            )
            self._mark(alert_id, error=str(exc))
            return False
        finally:
            self.transport.close()
        self._mark(alert_id, sent_at=utcnow(), error=None)
        return True

    def _record(self, subject: str, text: str) -> int | None:
        """The alert's row; None when the store itself is failing (the alert still goes out)."""
        try:
            with self.db.transaction() as session:
                alert = Alert(subject=subject, body=text)
                session.add(alert)
                session.flush()
                return alert.id
        except SQLAlchemyError:
            log.warning("the alert %r cannot be recorded in the store", subject, exc_info=True)
            return None

    def _mark(self, alert_id: int | None, **values: object) -> None:
        if alert_id is None:
            return
        try:
            with self.db.transaction() as session:
                session.execute(update(Alert).where(Alert.id == alert_id).values(**values))
        except SQLAlchemyError:
            log.warning("the alert %d's delivery cannot be recorded", alert_id, exc_info=True)
