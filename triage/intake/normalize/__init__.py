"""Email normalization: raw RFC 5322 bytes -> one ``ParsedEmail``.

A pure stage with no I/O. It is on the hot path of the worker, so it parses with the
compat32 policy (several times faster than ``email.policy.default``) and decodes every
payload and RFC 2047 word itself with one tolerant charset routine: our mail is Ukrainian
and English, and windows-1251, KOI8-U, wrongly declared and missing charsets are routine.
Nothing here raises on bad bytes; only input that is not an email at all (empty) raises
``NormalizationError``.

The modules follow the parse: ``_prefilter`` (byte rewrites for speed), ``charsets``,
``headers``, ``auto`` (machine mail), ``mime`` (the part walk, with ``html``), ``trim`` (what
the classifier reads) and ``language``; ``record`` holds the result type.
"""

from __future__ import annotations

import email
from collections.abc import Iterable
from email.parser import BytesParser

from triage.intake.normalize._prefilter import _with_canonical_boundaries, _without_binary_bodies
from triage.intake.normalize.auto import _auto_reason
from triage.intake.normalize.charsets import decode_bytes
from triage.intake.normalize.headers import (
    _FORWARD_SUBJECT_RE,
    _decode_words,
    _first_msgid,
    _fold,
    _header_map,
    _parse_date,
    _raw,
    _references,
    _sender,
    _thread_key,
    split_address,
)
from triage.intake.normalize.html import html_to_text
from triage.intake.normalize.language import guess_language
from triage.intake.normalize.mime import _clean_body, _Walk, _walk
from triage.intake.normalize.record import NormalizationError, ParsedEmail, lost_body
from triage.intake.normalize.trim import trim_for_classification

__all__ = [
    "NormalizationError",
    "ParsedEmail",
    "decode_bytes",
    "guess_language",
    "html_to_text",
    "lost_body",
    "parse_email",
    "split_address",
    "trim_for_classification",
]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def parse_email(raw: bytes, *, max_text_chars: int = 20000) -> ParsedEmail:
    """Parse raw message bytes into a ``ParsedEmail``; never raises on malformed content."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"parse_email() needs bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if not raw.strip():
        raise NormalizationError("The message is empty: there are no header or body bytes.")
    warnings: list[str] = []
    try:
        msg = email.message_from_bytes(_with_canonical_boundaries(_without_binary_bodies(raw)))
        parsed_body = True
    except RecursionError:  # hostile MIME nesting: keep the headers, drop the body
        warnings.append("MIME nesting too deep for the parser; body ignored")
        msg = BytesParser().parsebytes(raw, headersonly=True)
        parsed_body = False

    headers = _header_map(msg)
    subject = _decode_words(headers.get("subject"), warnings, "header Subject")
    sender_name, sender_address = _sender(headers, warnings)
    message_id = _first_msgid(_raw(headers, "message-id"))
    in_reply_to = _first_msgid(_raw(headers, "in-reply-to"))
    references = _references(_raw(headers, "references"))

    walk = _Walk(warnings, max_text_chars)
    if parsed_body:
        _walk(msg, walk)
    joined = "\n\n".join(text for _, text in walk.segments if text.strip())
    body = _clean_body(joined[: max_text_chars * 2])  # cleaning only shrinks text
    if len(body) > max_text_chars:
        warnings.append(f"body truncated from {len(joined)} to {max_text_chars} characters")
        body = body[:max_text_chars].rstrip()
    kinds = {kind for kind, text in walk.segments if text.strip()}

    forward = bool(_FORWARD_SUBJECT_RE.match(subject))
    text = trim_for_classification(body, forward=forward) or _fold(body) or subject
    return ParsedEmail(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        thread_key=_thread_key(references, in_reply_to, message_id, subject, sender_address),
        sender_address=sender_address,
        sender_name=sender_name,
        subject=subject,
        date=_parse_date(_raw(headers, "date")),
        body_text=body,
        text_for_classification=text,
        auto_reason=_auto_reason(headers, msg.get_content_type(), subject, sender_address),
        attachments=tuple(walk.attachments),
        html_only="html" in kinds and "plain" not in kinds,
        warnings=_unique(warnings),
        language=guess_language(text),
    )
