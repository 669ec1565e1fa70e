"""Headers: RFC 2047 words, addresses, Message-IDs, dates and the thread key."""

from __future__ import annotations

import email
import email.utils
import hashlib
import re
from datetime import UTC, datetime
from email.header import Header, decode_header
from email.message import Message

from triage.intake.normalize.charsets import decode_bytes

# --------------------------------------------------------------------------- headers

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATES_RE = re.compile("[\ud800-\udfff]")
_MSGID_RE = re.compile(r"<[^<>\s]+>")
_ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*", re.ASCII)
# `addr`, `Name <addr>` or `"Name" <addr>` with a plain dot-atom address: what parseaddr
# returns for these is their parts verbatim (tests/test_normalize.py checks it agrees).
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_SIMPLE_ADDRESS_RE = re.compile(
    rf"""[ \t]*(?:(?P<bare>{_DOT_ATOM}@{_DOT_ATOM})
    |(?:"(?P<quoted>[^"\\\r\n]*)"|(?P<phrase>[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]+
      (?:\x20[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]+)*))?[ \t]*<(?P<inner>{_DOT_ATOM}@{_DOT_ATOM})>)
    [ \t]*""",
    re.VERBOSE,
)
_SUBJECT_PREFIX_RE = re.compile(
    r"^(?:\s*(?:re|fwd?|aw|wg|sv|antw|tr|відп|відповідь|пересл|переслано|переслане|отв|ответ)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*:\s*)+",
    re.I,
)
_FORWARD_SUBJECT_RE = re.compile(r"^\s*(?:fwd?|wg|tr|пересл\w*)\s*:", re.I)


def _fold(text: str) -> str:
    """Whitespace runs to one space, ends stripped: what ``\\s+`` -> " " does, 3x faster."""
    return " ".join(text.split())


def _sanitize(text: str) -> str:
    """Drop control chars (NUL breaks PostgreSQL) and any lone surrogate (breaks UTF-8)."""
    text = _CONTROL_RE.sub("", text)
    return _SURROGATES_RE.sub("\ufffd", text) if _SURROGATES_RE.search(text) else text


def _header_text(value: str | Header) -> str:
    """A header as str; raw 8-bit bytes (compat32 gives a Header) mapped 1:1 to latin-1."""
    if isinstance(value, Header):
        return b"".join(
            part if isinstance(part, bytes) else part.encode("ascii", "surrogateescape")
            for part, _ in decode_header(value)
        ).decode("latin-1")
    return value


def _decode_words(value: str | Header | None, warnings: list[str], where: str) -> str:
    """Decode RFC 2047 words (and raw 8-bit header bytes) with the tolerant charset logic."""
    if value is None:
        return ""
    text = _header_text(value)
    if text.isascii() and "=?" not in text:
        return _fold(_sanitize(text))
    try:
        parts = decode_header(text)
    except Exception:  # malformed encoded words: keep the raw text
        parts = [(text, None)]
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            if chunk.isascii():
                out.append(chunk)
                continue
            chunk = chunk.encode("latin-1", "replace")
        out.append(decode_bytes(chunk, charset, warnings, where))
    return _fold(_sanitize("".join(out)))


_HeaderMap = dict[str, str | Header]


def _header_map(msg: Message) -> _HeaderMap:
    """First value of each header by lowercase name: one pass instead of ~30 msg.get scans."""
    first: _HeaderMap = {}
    for name, value in msg.items():
        first.setdefault(name.lower(), value)
    return first


def _raw(headers: _HeaderMap, name: str) -> str | None:
    """Undecoded header value (first occurrence) as str, or None when absent."""
    value = headers.get(name)
    return None if value is None else _CONTROL_RE.sub("", _header_text(value))


def _first_msgid(value: str | None) -> str | None:
    if value is None:
        return None
    match = _MSGID_RE.search(value)
    if match:
        return match.group(0)
    value = value.strip()
    return value.split()[0] if value else None


def _references(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = _MSGID_RE.findall(value)
    return tuple(found) if found else tuple(value.split())


def _parse_address(value: str | Header | None, warnings: list[str], where: str) -> tuple[str, str]:
    """(display name, lowercased addr-spec) of the first address in a header."""
    if value is None:
        return "", ""
    text = _header_text(value)
    if text.isascii():  # parse first: decoded names may hold commas, quotes or brackets
        name, addr = split_address(text)
        name = _decode_words(name, warnings, where)
    else:  # raw 8-bit header: decode the whole line, then parse
        text = _decode_words(value, warnings, where)
        name, addr = email.utils.parseaddr(text)
        name = _fold(_sanitize(name))
    if "@" not in addr:
        match = _ADDR_RE.search(text)
        addr = match.group(0) if match else ""
        if not addr and not name:  # "From: Angry Customer": no address, but still who wrote
            name = _fold(_sanitize(_decode_words(text, [], where))).strip("<>\"' ")
    return name, _sanitize(addr).strip().lower()  # a NUL in an address broke PostgreSQL


def split_address(text: str) -> tuple[str, str]:
    """``email.utils.parseaddr``, with the common shapes matched in one regex: parseaddr
    scans character by character and was a tenth of the parsing time of a message."""
    simple = _SIMPLE_ADDRESS_RE.fullmatch(text)
    if simple is None:
        return email.utils.parseaddr(text)
    return simple["quoted"] or simple["phrase"] or "", simple["bare"] or simple["inner"]


def _sender(headers: _HeaderMap, warnings: list[str]) -> tuple[str, str]:
    """From, falling back to Sender then Return-Path for the address."""
    first_name = ""
    for header in ("From", "Sender", "Return-Path"):
        name, addr = _parse_address(headers.get(header.lower()), warnings, f"header {header}")
        first_name = first_name or name
        if addr:
            return name or first_name, addr
    return first_name, ""


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _thread_key(
    references: tuple[str, ...],
    in_reply_to: str | None,
    message_id: str | None,
    subject: str,
    sender: str,
) -> str:
    """Root of the thread; without any id a stable hash of base subject + sender."""
    if references:
        return references[0]
    if in_reply_to:
        return in_reply_to
    if message_id:
        return message_id
    base = _fold(_SUBJECT_PREFIX_RE.sub("", subject)).casefold()
    digest = hashlib.sha256(f"{base}\0{sender}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"
