"""Departments correct the model by replying to a forward: ``wrong: delivery``, ``not ours``.

The mailbox named by ``[corrections] source`` receives the departments' replies; the pipeline hands
each of its batches to :meth:`Corrections.record` instead of treating it as customer mail, in the
same transaction as the source's checkpoint. A reply is matched to the forward it answers
(In-Reply-To / References against the forward's Message-ID), and the commands above its quote
are read. Only a reply from a configured department's address is acted on: the correction is
recorded as human labels (by that address, next to the model's guess, so `triage train
--from-history` learns from it), the message is re-routed to the department that owns the named
area (a new forward, unique per message and department), and the department gets a short
acknowledgement once the batch is committed. Every reply is stored as a message with status
``reply`` whose disposition says what became of it, so a re-read mailbox acts on nothing twice.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message as Email
from email.utils import format_datetime, make_msgid

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from classifiers.base import Prediction
from classifiers.model import Classifier
from connectors.base import RawItem
from triage.config import Config, Department
from triage.decide.route import Disposition, Reason, Route, reason, route_columns
from triage.decide.router import MessageFacts, Router
from triage.deliver.mail import LOOP_HEADER, set_subject, text_part
from triage.deliver.outbox import outbox_row
from triage.deliver.transports import DeliveryError, Transport
from triage.intake.normalize import ParsedEmail, parse_email, trim_for_classification
from triage.intake.prepare import Prepared, content_key, raw_key
from triage.intake.results import Outcome
from triage.lifecycle.labels import UnknownMessage, add_labels
from triage.store.queries import current_labels
from triage.store.schema import Forward, Message, utcnow

log = logging.getLogger(__name__)

KINDS = {
    "complaint": "complaint",
    "feedback": "feedback",
    "question": "question",
    "spam": "spam",
    "скарга": "complaint",
    "скаргу": "complaint",
    "відгук": "feedback",
    "питання": "question",
    "спам": "spam",
}
"""Words a department may use for a kind, English and Ukrainian, to the model's labels."""

URGENCIES = {
    "urgent": "urgent",
    "normal": "normal",
    "терміново": "urgent",
    "термінова": "urgent",
    "термінове": "urgent",
    "звичайна": "normal",
    "звичайне": "normal",
    "звичайно": "normal",
}

_SEP = r"\s*[:=\-–—]\s*"
_WORD = r"([\w.-]+)"
_AREA_RE = re.compile(rf"\b(?:wrong(?:\s+area)?|area|неправильно|невірно|відділ){_SEP}{_WORD}")
_KIND_RE = re.compile(rf"\b(?:kind|type|тип){_SEP}{_WORD}")
_URGENCY_RE = re.compile(rf"\b(?:urgency|терміновість){_SEP}{_WORD}")
_NOT_URGENT_RE = re.compile(r"\b(?:not\s+urgent|не\s+терміново)\b")
_NOT_KIND_RE = re.compile(r"\b(?:not\s+an?|не)\s+(\w+)")
_NOT_OURS_RE = re.compile(r"\b(?:not\s+ours|not\s+for\s+us|не\s+наше|не\s+наш|не\s+до\s+нас)\b")


@dataclass
class Commands:
    """What a reply asks for, read from its text above the quote."""

    labels: dict[str, str] = field(default_factory=dict)  # axis -> label (area still unchecked)
    not_ours: bool = False
    not_kind: str | None = None  # "not a complaint": the kind is wrong, the right one unsaid
    not_understood: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.labels or self.not_ours or self.not_kind or self.not_understood)


def parse_commands(text: str) -> Commands:
    """Read the commands of a reply (English or Ukrainian), case-insensitively."""
    text = text.lower()
    commands = Commands()
    if match := _AREA_RE.search(text):
        commands.labels["area"] = match.group(1).strip(".-")
    if match := _KIND_RE.search(text):
        _add_word(commands, "kind", match.group(1), KINDS, match.group(0))
    if match := _URGENCY_RE.search(text):
        _add_word(commands, "urgency", match.group(1), URGENCIES, match.group(0))
    elif _NOT_URGENT_RE.search(text):
        commands.labels["urgency"] = "normal"
    for match in _NOT_KIND_RE.finditer(text):
        if match.group(1) in KINDS:
            commands.not_kind = KINDS[match.group(1)]
            break
    commands.not_ours = bool(_NOT_OURS_RE.search(text))
    return commands


def _add_word(
    commands: Commands, axis: str, word: str, words: Mapping[str, str], said: str
) -> None:
    word = word.strip(".-")
    if word in words:
        commands.labels[axis] = words[word]
    else:
        commands.not_understood.append(said.strip(".-"))


@dataclass
class _Decision:
    """What one understood reply changes."""

    labels: dict[str, str]
    route: Route | None
    notes: list[str]


class Corrections:
    """The pipeline stage of the corrections mailbox, and the acknowledgements it owes."""

    def __init__(self, config: Config, transport: Transport) -> None:
        assert config.corrections is not None
        self.config = config
        self.source = config.corrections.source
        self.router = Router(config)
        self.transport = transport
        self.departments = {d.email.lower(): d for d in config.departments}
        self.owners = {area: d.name for d in config.departments for area in d.areas}
        self._ready: list[tuple[Email, str]] = []  # acknowledgements of committed batches
        self._lock = threading.Lock()

    prepares = False  # replies are parsed here, one at a time: they are few

    def record(
        self,
        session: Session,
        source: str,
        items: list[RawItem],
        prepared: list[Prepared] | None = None,
        model: Classifier | None = None,
    ) -> list[Outcome]:
        """Handle a batch of replies in the caller's transaction; never raises for a bad reply."""
        keys = {item.source_id: (content_key(item.raw), raw_key(item.raw)) for item in items}
        known = set(
            session.scalars(
                select(Message.content_key).where(
                    Message.source == source,
                    Message.content_key.in_([k for pair in keys.values() for k in pair]),
                )
            )
        )
        acks: list[tuple[Email, str]] = []
        outcomes = []
        for item in items:
            key, legacy = keys[item.source_id]
            if key in known or legacy in known:
                outcomes.append(Outcome(item.source_id, "", "", "duplicate"))
                continue
            known.add(key)
            outcomes.append(self._reply(session, item, acks))
        if acks:  # sent only once the batch is committed: a rolled-back batch owes nothing
            event.listen(session, "after_commit", lambda _s: self._release(acks), once=True)
        return outcomes

    def committed(self) -> None:
        """A batch is committed: the acknowledgements it owes go out now."""
        self.acknowledge()

    def acknowledge(self) -> int:
        """Send the acknowledgements of committed batches; returns how many went out."""
        with self._lock:
            ready, self._ready = self._ready, []
        sent = 0
        try:
            for mail, to in ready:
                try:
                    self.transport.send(mail, self.config.forwarding.from_address, [to])
                    sent += 1
                except DeliveryError as exc:
                    log.warning("acknowledgement to %s not sent: %s", to, exc)
        finally:
            self.transport.close()
        return sent

    def _release(self, acks: list[tuple[Email, str]]) -> None:
        with self._lock:
            self._ready.extend(acks)

    def _reply(self, session: Session, item: RawItem, acks: list[tuple[Email, str]]) -> Outcome:
        try:
            email = parse_email(item.raw)
        except Exception as exc:  # a poison reply must not block the batch
            log.warning("%s: reply cannot be parsed, ignored: %s", item.source_id, exc)
            return self._store(session, item, None, _ignored(f"cannot be parsed ({exc})"))
        why, forward, department = self._match(session, email)
        if why is not None:
            log.warning("%s: reply from %s ignored: %s", item.source_id, email.sender_address, why)
            return self._store(session, item, email, _ignored(why))
        assert forward is not None and department is not None
        text = trim_for_classification(email.body_text) or email.subject
        commands = parse_commands(text)
        if commands.empty:
            log.info("%s: reply from %s has no command", item.source_id, email.sender_address)
            return self._store(session, item, email, _ignored("no command found"))
        decision = self._apply(session, forward, email.sender_address, commands)
        acks.append(self._ack(email, department, forward, decision))
        notes = "; ".join(decision.notes)
        summary = Route(
            Disposition.CORRECTION, (reason("correction", message=forward.message_id, notes=notes),)
        )
        log.info("%s: %s by %s", item.source_id, summary.explain(), email.sender_address)
        return self._store(session, item, email, summary, decision.route)

    def _match(
        self, session: Session, email: ParsedEmail
    ) -> tuple[str | None, Forward | None, Department | None]:
        """Why the reply is ignored (None: act on it), the forward it answers, its department."""
        if email.auto_reason and not email.auto_reason.startswith("List-"):
            return f"machine-sent ({email.auto_reason})", None, None
        department = self.departments.get(email.sender_address)
        if department is None:
            return f"{email.sender_address or '(no sender)'} is not a department", None, None
        ids = [i for i in (email.in_reply_to, *email.references) if i]
        forward = session.scalars(
            select(Forward).where(Forward.rfc_message_id.in_(ids)).order_by(Forward.id.desc())
        ).first()
        if forward is None:
            return "it answers no forward of ours (In-Reply-To/References)", None, None
        return None, forward, department

    def _apply(self, session: Session, forward: Forward, by: str, commands: Commands) -> _Decision:
        """Record the labels, queue the re-route; what was done, in words for the ack."""
        labels, notes = dict(commands.labels), []
        area = labels.get("area")
        if area is not None and area not in self.owners:
            area = self._area_of_department(area)
            if area is None:
                notes.append(f"not understood: area {labels.pop('area')!r}")
            else:
                labels["area"] = area
        notes.extend(f"not understood: {said!r}" for said in commands.not_understood)
        current = current_labels(session, forward.message_id)
        review = self._review_reason(commands, labels, current, by)
        try:
            recorded = add_labels(session, forward.message_id, labels, by) if labels else []
        except UnknownMessage as exc:
            return _Decision({}, None, [*notes, f"nothing recorded: {exc}"])
        notes.extend(
            f"{r.axis} = {r.label}"
            + (f" (the model said {r.model_label})" if r.model_label else "")
            for r in recorded
        )
        route = self._reroute(session, forward, {**current, **labels}, review, by)
        if route is not None and route.department:
            notes.append(f"re-routed to {route.department}")
        elif route is not None:
            notes.append(route.explain())
        return _Decision(labels, route, notes or ["nothing changed"])

    def _area_of_department(self, name: str) -> str | None:
        """A department named instead of an area stands for its only area."""
        for department in self.config.departments:
            if department.name == name and len(department.areas) == 1:
                return department.areas[0]
        return None

    def _review_reason(
        self, commands: Commands, labels: Mapping[str, str], current: Mapping[str, str], by: str
    ) -> Reason | None:
        """A correction that says what is wrong but not what is right goes to review."""
        if commands.not_ours and "area" not in labels:
            return reason("said", by=by, said="not ours")
        if commands.not_kind and "kind" not in labels and current.get("kind") == commands.not_kind:
            return reason("said", by=by, said=f"not a {commands.not_kind}")
        return None

    def _reroute(
        self,
        session: Session,
        forward: Forward,
        labels: Mapping[str, str],
        review: Reason | None,
        by: str,
    ) -> Route | None:
        """Route again on the corrected labels; queue a forward when another department is due."""
        facts = MessageFacts(
            {a: Prediction(v, 1.0) for a, v in labels.items()},
            review_request=review,
            corrected_by=by,
        )
        route = self.router.decide(facts)
        if route.department == forward.department:
            return None  # it stays where it is
        message = session.get(Message, forward.message_id)
        assert message is not None
        for column, value in route_columns(route).items():
            setattr(message, column, value)
        if route.department and not _forwarded(session, forward.message_id, route.department):
            session.add(
                Forward(
                    **outbox_row(forward.message_id, route, self.config.forwarding.from_address)
                )
            )
        return route

    def _ack(
        self, email: ParsedEmail, department: Department, forward: Forward, decision: _Decision
    ) -> tuple[Email, str]:
        """A short answer to the department; marked auto-replied and ours, so it never loops."""
        settings = self.config.forwarding
        lines = [
            f"Thank you. Your reply about message {forward.message_id} was read:",
            "",
            *(f"- {note}" for note in decision.notes),
            "",
            "Commands: wrong: AREA | not ours | kind: KIND | not a KIND | urgency: urgent|normal",
            "(українською: неправильно: AREA | не наше | тип: скарга|відгук|питання|спам)",
        ]
        mail = text_part("\n".join(lines) + "\n")
        mail["From"] = settings.from_address
        mail["To"] = settings.redirect_all_to or department.email
        set_subject(mail, "Re: " + " ".join(email.subject.split())[:200])
        mail["Date"] = format_datetime(utcnow())
        mail["Message-ID"] = make_msgid(
            "triage-ack", domain=settings.from_address.rpartition("@")[2]
        )
        if email.message_id:
            mail["In-Reply-To"] = email.message_id
            mail["References"] = " ".join([*email.references, email.message_id])
        mail["Auto-Submitted"] = "auto-replied"
        mail[LOOP_HEADER] = department.name
        return mail, settings.redirect_all_to or department.email

    def _store(
        self,
        session: Session,
        item: RawItem,
        email: ParsedEmail | None,
        outcome: Route,
        route: Route | None = None,
    ) -> Outcome:
        """Keep the reply (its raw bytes and what became of it: ``outcome``; ``route``, the
        corrected message's new route, is what the run reports); replays find it by content."""
        session.add(
            Message(
                source=item.source,
                source_id=item.source_id,
                content_key=content_key(item.raw),
                channel="email",
                header_message_id=email.message_id if email else None,
                subject=email.subject if email else "",
                body=email.body_text if email else "",
                text=email.text_for_classification if email else "",
                language=email.language if email else "und",
                received_at=item.received_at,
                sent_at=email.date if email else None,
                size=item.size or len(item.raw),
                auto_reason=email.auto_reason if email else None,
                warnings=list(email.warnings) if email else [],
                status="reply",
                **route_columns(outcome),
                raw=item.raw,
            )
        )
        sender, subject = (email.sender_address, email.subject) if email else ("", "")
        return Outcome(item.source_id, sender, subject, "stored", None, route or outcome)


def _ignored(why: str) -> Route:
    return Route(Disposition.IGNORED, (reason("ignored", why=why),))


def _forwarded(session: Session, message_id: int, department: str) -> bool:
    return (
        session.scalars(
            select(Forward.id).where(
                Forward.message_id == message_id, Forward.department == department
            )
        ).first()
        is not None
    )
