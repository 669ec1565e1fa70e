"""What a department reads: the forward of one message, composed from the store.

A summary first (the customer, the channel, the labels with their confidence, why it was routed
so and why it is urgent, the customer's earlier requests), then the customer's text, with the
original attached byte for byte (``original.eml``) or, for a post, as ``post.json``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from email.encoders import encode_base64
from email.message import Message as Email
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.utils import format_datetime
from functools import cache
from typing import Any

from sqlalchemy import Executable, bindparam, func, select, tuple_
from sqlalchemy.orm import Session

from triage.config import Forwarding
from triage.decide.route import (
    explain,
    reasons_of,
    signals_of,
    urgent_line,
)
from triage.deliver.mail import LOOP_HEADER, set_subject, text_part
from triage.store.identities import PERSON_KEY, person_of, same_person
from triage.store.queries import Guess, model_labels
from triage.store.schema import Customer, Forward, Message

MAX_SUBJECT = 200


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


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
