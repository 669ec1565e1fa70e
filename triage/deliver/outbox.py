"""The forwarder: delivers outbox entries to departments, by SMTP or as ``.eml`` files.

Delivery is at-least-once. Each forward's Message-ID is fixed when it is queued, so the one window
no mail system can close (the server accepted, we crashed before recording it) re-sends a message
the recipient's system can collapse. 4xx replies and network errors are retried with exponential
backoff and jitter; 5xx replies mark the forward failed (a dead letter the admin can retry).
"""

from __future__ import annotations

import binascii
import io
import json
import logging
import os
import random
import re
import secrets
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.charset import BASE64, Charset
from email.encoders import encode_base64
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message as Email
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
from email.utils import format_datetime, make_msgid
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Executable, bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session, joinedload

from triage.config import Config, Forwarding, Smtp, resolve_secret
from triage.decide.route import (
    Route,
    explain,
    reasons_json,
    reasons_of,
    signals_json,
    signals_of,
    urgent_line,
)
from triage.errors import check_named
from triage.faults import crash_point
from triage.store.database import Database
from triage.store.identities import PERSON_KEY, person_of, same_person
from triage.store.queries import Guess, model_labels
from triage.store.schema import Customer, Forward, Message, utcnow
from triage.worker.stopping import Stop

log = logging.getLogger(__name__)

LOOP_HEADER = "X-Triage-Forward"
"""Set on every forward; the normalizer treats mail carrying it as machine-sent (no loops)."""

MAX_BACKOFF = timedelta(hours=1)

MAX_SUBJECT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def text_part(text: str) -> Email:
    """A UTF-8 text/plain part in quoted-printable: readable in any client, safe through 7-bit
    relays. Encoded by ``binascii`` (C): the email package's own encoder is pure Python, and a
    forward quotes the customer's whole message."""
    part = MIMENonMultipart("text", "plain", charset="utf-8")
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(text.encode("utf-8")).decode("ascii"))
    return part


_UTF8_BASE64 = Charset("utf-8")
_UTF8_BASE64.header_encoding = BASE64  # "shortest" encodes every subject twice to compare


def set_subject(mail: Email, subject: str) -> None:
    """The Subject: plain when it is printable ASCII, else RFC 2047 words by the classic
    (compat32) encoder, which keeps the spaces of a long Cyrillic subject that the modern header
    folder of some Python versions drops."""
    if subject.isascii() and subject.isprintable():
        mail["Subject"] = subject
    else:
        mail["Subject"] = Header(subject, _UTF8_BASE64)  # type: ignore[assignment]  # compat32 takes a Header; typeshed says str


class DeliveryError(Exception):
    """A forward could not be delivered; ``permanent`` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    """Hands a composed message to the next hop."""

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class DirectoryTransport:
    """Writes each forward as ``<dir>/<message-id>.eml`` (temp file, fsync, rename): the demo's
    outbox, and a drop folder for another mail system to pick up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(message["Message-ID"]).strip("<>")) + ".eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = "a file is in its place" if self.directory.is_file() else exc.strerror
            raise DeliveryError(
                f"cannot use {self.directory} as the forwards directory: {problem}", permanent=False
            ) from None
        temp: str | None = None
        try:
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(as_bytes(message))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.directory / name)
        except OSError as exc:
            if temp:
                Path(temp).unlink(missing_ok=True)
            raise DeliveryError(
                f"cannot write {self.directory / name}: {exc.strerror or exc}", permanent=False
            ) from None

    def close(self) -> None:
        """Files are closed as they are written."""


class SmtpTransport:
    """SMTP with STARTTLS or implicit TLS and AUTH; connects lazily, reconnects after an error."""

    def __init__(self, settings: Smtp) -> None:
        self.settings = settings
        self._connection: smtplib.SMTP | None = None

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None:
        try:
            connection = self._connect()
            data = as_bytes(message)
            # The attached original may be 8-bit (KOI8-U, windows-1251): say so when we may.
            eight_bit = connection.has_extn("8bitmime") and not data.isascii()
            options = ["BODY=8BITMIME"] if eight_bit else []
            refused = connection.sendmail(sender, list(recipients), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"{self._where} refused every recipient: {_replies(exc.recipients)}",
                permanent=all(code >= 500 for code in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise DeliveryError(
                f"{self._where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                permanent=exc.smtp_code >= 500 and exc.smtp_code != 535,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self._reset()
            raise DeliveryError(f"{self._where} failed: {exc}", permanent=False) from None
        if refused:
            log.warning("%s accepted the forward but refused %s", self._where, _replies(refused))

    @property
    def _where(self) -> str:
        return f"SMTP server {self.settings.host}:{self.settings.port}"

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        s = self.settings
        context = ssl.create_default_context(cafile=s.cafile) if s.tls != "plain" else None
        if s.tls == "ssl":
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout, context=context
            )
        else:
            connection = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            if s.tls == "starttls":
                connection.starttls(context=context)
        if s.username:
            connection.login(s.username, resolve_secret(s, "smtp"))
        self._connection = connection
        return connection

    def _reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                log.debug("closing the SMTP connection failed", exc_info=True)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _replies(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in refused.items())


def make_transport(config: Config) -> Transport:
    """The transport the config names."""
    if config.forwarding.transport == "smtp" and config.smtp is not None:
        return SmtpTransport(config.smtp)
    return DirectoryTransport(config.forwarding.directory)


@dataclass
class FlushResult:
    """What flushes of the outbox did: each forward tried, by id, with the state it was left in.

    Added up over the flushes of one run, a forward's later state wins: one that failed an
    attempt and went out in a later flush counts as sent, not also as to retry.
    """

    states: dict[int, str] = field(default_factory=dict)

    def __add__(self, later: FlushResult) -> FlushResult:
        return FlushResult({**self.states, **later.states})

    def _count(self, state: str) -> int:
        return sum(1 for value in self.states.values() if value == state)

    @property
    def sent(self) -> int:
        return self._count("sent")

    @property
    def retrying(self) -> int:
        return self._count("retrying")

    @property
    def failed(self) -> int:
        return self._count("failed")


COMPOSE_CHUNK = 50
"""Forwards composed together: their messages and labels come in one query each, not one
each per forward; then each is locked, sent and recorded in a transaction of its own."""

PASS_LIMIT = 1000
"""Forwards one pass of the outbox reads; a drain makes as many passes as it takes."""


@dataclass(frozen=True, slots=True)
class Leftover:
    """Forwards queued since a moment and not delivered: why, and until when."""

    waiting: int = 0  # pending: their next attempt is due later (the server failed them)
    next_attempt_at: datetime | None = None  # the earliest of those attempts
    failed: int = 0  # gave up: `triage outbox retry` re-queues them
    last_error: str | None = None  # the latest error among them

    @property
    def count(self) -> int:
        return self.waiting + self.failed

    def describe(self) -> str:
        """One sentence for the admin; empty when nothing is left."""
        if not self.count:
            return ""
        parts = []
        if self.waiting:
            at = (
                f", the first at {self.next_attempt_at:%H:%M:%S} UTC"
                if self.next_attempt_at
                else ""
            )
            parts.append(f"{self.waiting} waiting for a retry{at}")
        if self.failed:
            parts.append(f"{self.failed} failed for good (`triage outbox retry --all-failed`)")
        error = f"; last error: {self.last_error}" if self.last_error else ""
        return f"{self.count} forward(s) not delivered: {', '.join(parts)}{error}"


class Forwarder:
    """Delivers due outbox entries, committing each outcome as soon as it is known."""

    pass_limit = PASS_LIMIT

    def __init__(
        self, db: Database, config: Config, transport: Transport, stop: Stop | None = None
    ) -> None:
        self.db = db
        self.settings: Forwarding = config.forwarding
        self.transport = transport
        self.stop = stop or Stop()
        self._outage_logged = False

    def flush(self, now: datetime | None = None, limit: int = PASS_LIMIT) -> FlushResult:
        """One pass: try the pending forwards that are due (at most ``limit``); a stop
        request ends the pass after the forward in hand."""
        result = FlushResult()
        now = now or utcnow()
        with self.db.session() as session:
            due = session.scalars(
                select(Forward.id)
                .where(Forward.status == "pending", Forward.next_attempt_at <= now)
                .order_by(Forward.id)
                .limit(limit)
            ).all()
        tried = 0
        try:
            for start in range(0, len(due), COMPOSE_CHUNK):
                if self.stop.is_set():
                    break
                for forward, email in self._compose(due[start : start + COMPOSE_CHUNK]):
                    if self.stop.is_set():
                        break
                    self._deliver(forward, email, now, result)
                    tried += 1
        finally:
            self.transport.close()
        if self.stop.is_set() and tried < len(due):
            self.stop.note(f"outbox: {len(due) - tried} due forward(s) left pending")
        if due:
            log.info(
                "outbox: %d sent, %d to retry, %d failed",
                result.sent,
                result.retrying,
                result.failed,
            )
        return result

    def drain(self) -> FlushResult:
        """Deliver everything deliverable now: pass after pass of ``pass_limit`` forwards,
        until none is due (what is left waits for a retry time, or failed) or a stop is
        requested."""
        total = FlushResult()
        while not self.stop.is_set():
            result = self.flush(limit=self.pass_limit)
            total += result
            if not result.states:  # nothing was due, or every due one is another worker's
                break
        return total

    def undelivered_since(self, since: datetime) -> Leftover:
        """The forwards queued at or after ``since`` that are not delivered, and why."""
        with self.db.session() as session:
            rows = session.execute(
                select(
                    Forward.status,
                    func.count(),
                    func.min(Forward.next_attempt_at),
                    func.max(Forward.id),
                )
                .where(Forward.created_at >= since, Forward.status != "sent")
                .group_by(Forward.status)
            ).all()
            by_status = {status: (count, first, last) for status, count, first, last in rows}
            latest = max((last for _, _, last in by_status.values()), default=None)
            error = (
                session.scalar(select(Forward.last_error).where(Forward.id == latest))
                if latest is not None
                else None
            )
        waiting = by_status.get("pending", (0, None, None))
        return Leftover(
            waiting=waiting[0],
            next_attempt_at=waiting[1],
            failed=by_status.get("failed", (0, None, None))[0],
            last_error=error,
        )

    def _compose(self, forward_ids: Sequence[int]) -> list[tuple[Forward, Email]]:
        """The forwards with their emails, read without a lock: what an email shows never
        changes once it is queued, and each forward's state is read again under its lock."""
        with self.db.session() as session:
            forwards = session.scalars(
                select(Forward)
                .where(Forward.id.in_(forward_ids))
                .options(joinedload(Forward.message).joinedload(Message.customer))
                .order_by(Forward.id)
            ).all()
            return compose_all(session, forwards, self.settings)

    def _deliver(self, forward: Forward, email: Email, now: datetime, result: FlushResult) -> None:
        with self.db.transaction() as session:
            # Another worker on the same PostgreSQL may hold this forward: skip it, never send twice;
            # it may also have been sent since it was read.
            state = session.execute(_LOCK_STATE, {"forward_id": forward.id}).first()
            if state is None or state.status != "pending":
                return
            attempts = state.attempts + 1
            crash_point("smtp-sending")
            try:
                self.transport.send(
                    email, self.settings.from_address, [*forward.to_addrs, *forward.cc_addrs]
                )
            except DeliveryError as exc:
                self._failed_attempt(session, forward, attempts, exc, now, result)
                return
            crash_point("smtp-accepted")
            _set_state(session, forward.id, status="sent", sent_at=utcnow(), last_error=None,
                       attempts=attempts)  # fmt: skip
            result.states[forward.id] = "sent"
            if self._outage_logged:
                log.info("forwarding works again")
                self._outage_logged = False
            log.debug("forward %s delivered to %s", forward.rfc_message_id, forward.department)

    def _failed_attempt(
        self,
        session: Session,
        forward: Forward,
        attempts: int,
        exc: DeliveryError,
        now: datetime,
        result: FlushResult,
    ) -> None:
        if exc.permanent or attempts >= self.settings.max_attempts:
            _set_state(session, forward.id, status="failed", attempts=attempts, last_error=str(exc))
            result.states[forward.id] = "failed"
            log.error(
                "forward %s to %s failed for good after %d attempt(s): %s "
                "(retry with `triage outbox retry %d`)",
                forward.rfc_message_id,
                forward.department,
                attempts,
                exc,
                forward.id,
            )
            return
        retry_at = now + backoff(attempts, self.settings.retry_base_seconds)
        _set_state(session, forward.id, attempts=attempts, last_error=str(exc),
                   next_attempt_at=retry_at)  # fmt: skip
        result.states[forward.id] = "retrying"
        if not self._outage_logged:
            log.warning("forwarding is failing, will retry with backoff: %s", exc)
            self._outage_logged = True


_LOCK_STATE = (
    select(Forward.status, Forward.attempts)
    .where(Forward.id == bindparam("forward_id"))
    .with_for_update(skip_locked=True)
)
"""A forward's state, locked; SKIP LOCKED: another worker holds it (built once, like the next)."""

_UPDATE_STATE = update(Forward.table()).where(Forward.table().c.id == bindparam("forward_id"))
"""Sets the columns its parameters name."""


def _set_state(session: Session, forward_id: int, **values: Any) -> None:
    """A forward's new state in one Core UPDATE: no ORM unit of work for a row nobody reads."""
    session.connection().execute(_UPDATE_STATE, {"forward_id": forward_id, **values})


def outbox_row(message_id: int, route: Route, from_address: str) -> dict[str, Any]:
    """A new outbox entry for ``route``; its Message-ID is fixed now, so a re-send keeps it."""
    return {
        "message_id": message_id,
        "department": route.department,
        "to_addrs": list(route.to_addrs),
        "cc_addrs": list(route.cc_addrs),
        "urgent": route.urgent,
        "disposition": route.disposition.value,
        "reasons": reasons_json(route.reasons),
        "urgent_reasons": signals_json(route.signals),
        "rfc_message_id": make_msgid("triage", domain=from_address.rpartition("@")[2]),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": utcnow(),
    }


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Exponential backoff with full jitter in its upper half, capped at an hour."""
    delay = min(MAX_BACKOFF.total_seconds(), base_seconds * 2 ** (attempts - 1))
    return timedelta(seconds=delay * random.uniform(0.5, 1.0))


def compose_all(
    session: Session, forwards: Sequence[Forward], settings: Forwarding
) -> list[tuple[Forward, Email]]:
    """Each forward with the email its department receives; the labels of all their messages
    (and of the customers' earlier ones) come in one query."""
    earlier = [
        _earlier(session, forward.message, settings.history_in_forward) for forward in forwards
    ]
    labels = model_labels(
        session,
        [
            *(forward.message.id for forward in forwards),
            *(row.id for _, recent in earlier for row in recent),
        ],
    )
    return [
        (forward, compose(forward, history, labels, settings))
        for forward, history in zip(forwards, earlier, strict=True)
    ]


def compose(
    forward: Forward,
    earlier: tuple[int, Sequence[Any]],
    labels: dict[int, dict[str, Guess]],
    settings: Forwarding,
) -> Email:
    """The email a department receives: everything at a glance, the original attached.

    ``earlier``: the customer's earlier requests (how many, the latest rows); ``labels``: the
    labels of this message and of those rows.
    """
    message = forward.message
    count, recent = earlier
    # A boundary of our own: the generator would otherwise search the whole forward for its
    # random one with a freshly compiled regex; 96 random bits never occur in mail by chance.
    mail = MIMEMultipart(boundary=f"=_triage_{secrets.token_hex(12)}")
    mail["From"] = settings.from_address
    mail["To"] = ", ".join(forward.to_addrs)
    if forward.cc_addrs:
        mail["Cc"] = ", ".join(forward.cc_addrs)
    set_subject(mail, _subject(message, labels.get(message.id, {}), forward.urgent))
    mail["Date"] = format_datetime(forward.created_at)
    mail["Message-ID"] = forward.rfc_message_id
    mail[LOOP_HEADER] = forward.department
    mail["Auto-Submitted"] = "auto-generated"
    if forward.urgent:
        mail["Importance"] = "high"
        mail["X-Priority"] = "1"
    if message.header_message_id:
        mail["References"] = message.header_message_id
    summary = _summary(
        message, labels.get(message.id, {}), forward, (count, _earlier_lines(recent, labels))
    )
    mail.attach(text_part(summary))
    if message.channel == "email":
        original = _attached_original(message.raw)
        if original["Content-Transfer-Encoding"] == "8bit":
            mail["Content-Transfer-Encoding"] = "8bit"  # a multipart is as wide as its parts
        mail.attach(original)
    else:
        mail.attach(_attached_post(message.raw))
    return mail


CHANNEL_NAMES = {"x": "X", "telegram": "Telegram", "mastodon": "Mastodon"}
POST_KINDS = {"dm": "direct message", "message": "message", "reply": "reply", "mention": "mention"}


def _post(raw: bytes) -> dict[str, Any]:
    """The stored post JSON (``connectors.base.Post``); empty when erased or unreadable."""
    try:
        post = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return post if isinstance(post, dict) else {}


def _attached_post(raw: bytes) -> Email:
    """A social post as the connector stored it: JSON, with the link and ids intact."""
    part = MIMEApplication(raw, "json", encode_base64)
    part.add_header("Content-Disposition", "attachment", filename="post.json")
    return part


def _post_title(message: Message) -> str:
    """A subject for a post, which has none: "X mention from @olena_p"."""
    if message.channel == "email":
        return "(no subject)"
    channel = CHANNEL_NAMES.get(message.channel, message.channel)
    kind = POST_KINDS.get(str(message.post_kind), "post")
    post = _post(message.raw)
    handle = post.get("author_handle") or (message.customer.address if message.customer else "")
    return f"{channel} {kind} from {handle}".strip()


def _post_lines(message: Message) -> list[str]:
    """Who wrote a post and where to answer it, for the summary."""
    if message.channel == "email":
        return []
    post = _post(message.raw)
    name = str(post.get("author_name") or "")
    handle = str(post.get("author_handle") or "")
    return [
        f"Author:    {name} ({handle})" if name else f"Author:    {handle or '(unknown)'}",
        f"Link:      {post.get('url') or '(none: a private chat)'}",
    ]


def _attached_original(raw: bytes) -> Email:
    """The customer's message, byte for byte (line ends made CRLF, as on the wire).

    A string payload is written out verbatim by the generator, so nothing is re-encoded; an
    8-bit one (KOI8-U, windows-1251) is declared 8bit. Bytes no mail may carry as they are
    (NUL, a bare CR, a line over 998 octets) make it an ``application/octet-stream`` in
    base64, still ``original.eml`` and byte-exact.
    """
    crlf = re.sub(rb"\r?\n", b"\r\n", raw)
    part: Email
    if b"\0" in crlf or _unsafe_lines(crlf):
        part = MIMEApplication(raw, "octet-stream")
    else:
        part = Email()
        part["Content-Type"] = "message/rfc822"
        if not crlf.isascii():
            part["Content-Transfer-Encoding"] = "8bit"
        part.set_payload(crlf.decode("ascii", "surrogateescape"))
    part["Content-Disposition"] = 'attachment; filename="original.eml"'
    return part


def _unsafe_lines(crlf: bytes) -> bool:
    """A bare CR, or a line longer than RFC 5322's 998 octets (counted in C: a regex for
    long lines tried every position of every line, 3 ms a forward)."""
    return crlf.count(b"\r") != crlf.count(b"\r\n") or any(
        len(line) > 998 for line in crlf.split(b"\r\n")
    )


class _WireGenerator(BytesGenerator):
    """Writes an attached message given as a string verbatim, 8-bit bytes included."""

    def _handle_message_rfc822(self, msg: Email) -> None:
        payload = msg._payload  # type: ignore[attr-defined]  # as the stdlib generator reads it; get_payload() would decode
        if isinstance(payload, str):
            self.write(payload)  # BytesGenerator.write restores the bytes (surrogateescape)
        else:
            self._handle_message(msg)  # type: ignore[attr-defined]


class _Compat32ShortHeaders(Compat32):
    """compat32, writing a short plain header as it is instead of through its Header folder.

    Folding every header was half the time of writing a forward; a single-spaced printable
    ASCII value that fits on its line comes out of the folder unchanged anyway
    (tests/test_forwarding.py compares the two).
    """

    def fold_binary(self, name: str, value: Any) -> bytes:
        if (
            isinstance(value, str)
            and value.isascii()
            and value.isprintable()
            and "  " not in value
            and value == value.strip()
            and len(name) + 2 + len(value) <= (self.max_line_length or 78)
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


WIRE_POLICY = _Compat32ShortHeaders()


def as_bytes(message: Email) -> bytes:
    """The wire form: CRLF line ends everywhere (bare LF is refused by hardened MTAs)."""
    buffer = io.BytesIO()
    _WireGenerator(buffer, mangle_from_=False, policy=WIRE_POLICY).flatten(message, linesep="\r\n")
    return buffer.getvalue()


def _subject(message: Message, labels: dict[str, Guess], urgent: bool) -> str:
    tags = "/".join(labels[axis].label for axis in ("kind", "area") if axis in labels)
    prefix = "[URGENT] " if urgent else ""
    # Customer text never reaches a header raw: no CR/LF or other controls, bounded length.
    subject = _CONTROL.sub(" ", message.subject).strip()[:MAX_SUBJECT]
    subject = subject or _CONTROL.sub(" ", _post_title(message))[:MAX_SUBJECT]
    return f"{prefix}[{tags or 'triage'}] {subject}"


def _summary(
    message: Message,
    labels: dict[str, Guess],
    forward: Forward,
    earlier: tuple[int, list[str]],
) -> str:
    """The text a department reads first; ``earlier``: the customer's earlier requests (how
    many, and lines for the latest)."""
    customer = message.customer
    who = customer.address if customer else "(unknown sender)"
    if customer and customer.display_name:
        who = f"{customer.display_name} <{customer.address}>"
    lines = [
        f"Customer:  {who}",
        *_post_lines(message),
        f"Channel:   {message.channel} (source {message.source})",
        f"Received:  {message.received_at:%Y-%m-%d %H:%M} UTC",
        *(
            f"{axis.capitalize() + ':':<10} {row.label} ({row.confidence:.0%} confidence)"
            for axis, row in labels.items()
        ),
        *_routing_lines(forward),
        f"Earlier requests from this customer: {earlier[0]}",
        *(f"  - {line}" for line in earlier[1]),
    ]
    if message.truncated:
        lines.append(f"Note: the message was {message.size} bytes; only its headers were kept.")
    if message.warnings:
        lines.append("Decoding notes: " + "; ".join(message.warnings))
    body = message.body.strip() or "(no text)"
    return "\n".join([*lines, "", "-" * 60, f"Subject: {message.subject}", "", body, ""])


def _routing_lines(forward: Forward) -> list[str]:
    """The routing decision, and the reasons for its urgency on a line of their own."""
    routing = explain(forward.disposition, forward.department, reasons_of(forward.reasons),
                      forward.urgent)  # fmt: skip
    because = urgent_line(signals_of(forward.urgent_reasons))
    return [f"Routing:   {routing}", *([because] if because else [])]


def _earlier(session: Session, message: Message, limit: int) -> tuple[int, Sequence[Any]]:
    """How many requests this customer (all linked identities) sent before this one, and the
    latest ``limit`` of them (rows of id, received_at, status, subject); one indexed query
    whatever the history's length."""
    if message.customer_id is None:
        return 0, []
    linked, key = person_of(session, message.customer_id)
    recent = session.execute(
        _earlier_query(linked, limit),
        {PERSON_KEY: key, "received_at": message.received_at, "message_id": message.id},
    ).all()
    return (recent[0].total if recent else 0), recent


@cache
def _earlier_query(linked: bool, limit: int) -> Executable:
    """The query of `_earlier`, built once: building it cost more than running it."""
    person = select(Customer.id).where(same_person(linked))
    received_at = bindparam("received_at", type_=Message.received_at.type)
    # Columns, not Message rows: those would bring every earlier message's raw bytes along.
    # The window count is taken before LIMIT applies: all earlier requests, counted in passing.
    return (
        select(
            Message.id,
            Message.received_at,
            Message.status,
            Message.subject,
            func.count().over().label("total"),
        )
        .where(
            Message.customer_id.in_(person.scalar_subquery()),
            Message.received_at <= received_at,
            tuple_(Message.received_at, Message.id)
            < tuple_(received_at, bindparam("message_id", type_=Message.id.type)),
        )
        .order_by(Message.received_at.desc())
        .limit(limit)
    )


def _earlier_lines(recent: Sequence[Any], labels: dict[int, dict[str, Guess]]) -> list[str]:
    """One line for each of the latest earlier requests: date, labels, subject."""
    lines = []
    for row in recent:
        mine = labels.get(row.id, {})
        tags = "/".join(mine[a].label for a in ("kind", "area") if a in mine)
        lines.append(
            f"{row.received_at:%Y-%m-%d} [{tags or row.status}] {row.subject or '(no subject)'}"
        )
    return lines


def requeue(db: Database, forward_ids: Sequence[int], all_failed: bool) -> int:
    """Put failed forwards back in the queue, due now; returns how many were requeued.
    Ids that name no failed forward refuse the whole call."""
    with db.transaction() as session:
        query = select(Forward).where(Forward.status == "failed")
        if not all_failed:
            query = query.where(Forward.id.in_(forward_ids))
        forwards = session.scalars(query).all()
        if not all_failed:
            check_named(
                forward_ids, (f.id for f in forwards), "failed forward", "triage outbox list"
            )
        for forward in forwards:
            forward.status, forward.attempts, forward.next_attempt_at = "pending", 0, utcnow()
        return len(forwards)
