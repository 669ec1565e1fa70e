"""Email normalization: raw RFC 5322 bytes -> one ``ParsedEmail``.

A pure stage with no I/O. It is on the hot path of the worker, so it parses with the
compat32 policy (several times faster than ``email.policy.default``) and decodes every
payload and RFC 2047 word itself with one tolerant charset routine: our mail is Ukrainian
and English, and windows-1251, KOI8-U, wrongly declared and missing charsets are routine.
Nothing here raises on bad bytes; only input that is not an email at all (empty) raises
``NormalizationError``.
"""

from __future__ import annotations

import codecs
import email
import email.utils
import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header, decode_header
from email.message import Message
from functools import lru_cache
from html.parser import HTMLParser

from charset_normalizer import from_bytes as _detect_charset

# Ukrainian and Russian words in patterns are intended, not look-alike Latin letters.
# ruff: noqa: RUF001

__all__ = [
    "NormalizationError",
    "ParsedEmail",
    "decode_bytes",
    "html_to_text",
    "parse_email",
    "trim_for_classification",
]


class NormalizationError(Exception):
    """Raised with a one-sentence message when bytes are not a usable email at all."""


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """One email reduced to what classification and forwarding need."""

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    thread_key: str
    sender_address: str
    sender_name: str
    subject: str
    date: datetime | None
    body_text: str
    text_for_classification: str
    auto_reason: str | None
    attachments: tuple[str, ...]
    html_only: bool
    warnings: tuple[str, ...]
    language: str


# --------------------------------------------------------------------------- charsets

# Names seen in real mail that Python does not know, or knows as a narrower codec.
_ALIASES: dict[str, str] = {
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "cp-1251": "cp1251",
    "win-1251": "cp1251",
    "win1251": "cp1251",
    "windows1251": "cp1251",
    "windows-1251": "cp1251",
    "x-cp1251": "cp1251",
    "ms-cyrl": "cp1251",
    "cp-1252": "cp1252",
    "win-1252": "cp1252",
    "windows1252": "cp1252",
    "x-cp1252": "cp1252",
    "cp-1250": "cp1250",
    "win-1250": "cp1250",
    "koi8u": "koi8_u",
    "koi8-u": "koi8_u",
    "koi8-ru": "koi8_u",
    "koi8r": "koi8_r",
    "koi8": "koi8_r",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-ukrainian": "mac_cyrillic",
    "mac-cyrillic": "mac_cyrillic",
    "x-mac-roman": "mac_roman",
    "ibm866": "cp866",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-8-e": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "iso-8859-6-e": "iso8859_6",
    "iso-8859-1-windows-3.1-latin-1": "cp1252",
    "x-user-defined": "cp1252",
    "tis-620": "cp874",
    "windows-874": "cp874",
}

# Declared names that carry no information: decode as if nothing was declared.
_BOGUS = frozenset(
    {"", "default", "unknown", "unknown-8bit", "x-unknown", "none", "charset", "8bit", "binary"}
)

# Codecs that exist in Python but are not text charsets a mail could be written in.
_REFUSED = frozenset(
    {"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode", "charmap", "mbcs"}
)

# Single-byte Latin charsets that Cyrillic or UTF-8 bytes are wrongly declared as.
_LATIN = frozenset(
    {
        "ascii",
        "iso8859-1",
        "cp1252",
        "iso8859-15",
        "iso8859-2",
        "cp1250",
        "iso8859-9",
        "cp1254",
        "iso8859-13",
        "cp1257",
        "iso8859-3",
        "iso8859-4",
        "iso8859-10",
        "iso8859-14",
        "iso8859-16",
        "mac-roman",
        "cp437",
        "cp850",
    }
)
_CYRILLIC_PAIR = frozenset({"cp1251", "koi8-u", "koi8-r"})
_SINGLE_BYTE = _LATIN | _CYRILLIC_PAIR | {"iso8859-5", "mac-cyrillic", "cp866"}
_STATEFUL_PREFIXES = ("utf-7", "iso2022", "hz")

# Candidates for charset-normalizer once UTF-8 and the cheap Cyrillic guess have failed.
_DETECT_CANDIDATES = [
    "cp1251",
    "koi8_u",
    "cp1252",
    "iso8859_5",
    "mac_cyrillic",
    "cp866",
    "gb18030",
    "cp932",
    "cp949",
    "big5",
    "iso8859_7",
]
_DETECT_SAMPLE = 65536

_HIGH_BYTES = bytes(range(128, 256))
_HIGH_RUN_RE = re.compile(rb"[\x80-\xff]{2,}")
_UK_RU_VOWELS = "аеиіоуяюєїыэё"
_META_CHARSET_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([\w.:-]{2,40})""", re.I)


@lru_cache(maxsize=512)
def _resolve_charset(declared: str) -> str | None:
    """Map a declared charset to a Python codec name, or None when it is bogus/unknown."""
    name = declared.strip().strip("\"'").strip().lower().split("*", 1)[0]
    if name in _BOGUS:
        return None
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except LookupError:
        try:
            info = codecs.lookup(re.sub(r"[^a-z0-9]+", "", name))
        except LookupError:
            return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return info.name


@lru_cache(maxsize=128)
def _ascii_compatible(codec: str) -> bool:
    """True when pure-ASCII bytes mean the same text in ``codec`` (enables a fast path)."""
    if codec.startswith(_STATEFUL_PREFIXES):
        return False
    probe = b"Hello, World =?<>@.-_0123456789\n"
    try:
        return probe.decode(codec) == probe.decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


def _is_utf8(data: bytes) -> bool:
    """True when the bytes are valid UTF-8 (real 8-bit Latin/Cyrillic text almost never is)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _high_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, _HIGH_BYTES))


def _cyrillic_score(text: str) -> float:
    """Share of lowercase Ukrainian/Russian vowels among non-ASCII chars.

    A right decode scores ~0.35-0.45; cp1251 read as KOI8 (or back) turns lowercase
    into uppercase letters, so the wrong candidate scores near 0.
    """
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if not non_ascii:
        return 0.0
    return sum(map(text.count, _UK_RU_VOWELS)) / non_ascii


def _guess_cyrillic(data: bytes) -> str | None:
    """Return cp1251 or koi8_u when 8-bit bytes look like Cyrillic words, else None.

    Cyrillic text in an 8-bit charset is runs of high bytes (whole words); Western text
    has isolated accented letters between ASCII ones.
    """
    sample = data[:_DETECT_SAMPLE]
    high = _high_count(sample)
    if high < 2:
        return None
    in_runs = sum(map(len, _HIGH_RUN_RE.findall(sample)))
    if in_runs * 10 < high * 6:
        return None
    best, best_score = None, 0.0
    for codec in ("cp1251", "koi8_u"):
        score = _cyrillic_score(sample.decode(codec, "replace"))
        if score > best_score:
            best, best_score = codec, score
    return best if best_score >= 0.15 else None


def _charset_normalizer(data: bytes) -> str | None:
    """Ask charset-normalizer, restricted to charsets plausible for our mail."""
    try:
        match = _detect_charset(data[:_DETECT_SAMPLE], cp_isolation=_DETECT_CANDIDATES).best()
    except Exception:  # a detector bug must not stop the pipeline
        return None
    return match.encoding if match is not None else None


def _detect(data: bytes, warnings: list[str], problem: str) -> str:
    """Decode bytes whose charset is unknown: UTF-8, Cyrillic guess, detector, cp1252."""
    if _is_utf8(data):
        codec = "utf-8"
    else:
        codec = _guess_cyrillic(data) or _charset_normalizer(data) or "cp1252"
    warnings.append(f"{problem}; decoded as {codec}")
    return data.decode(codec, "replace")


def _decode_mismatch(
    data: bytes, codec: str, declared: str, warnings: list[str], where: str
) -> str:
    """Bytes that are invalid in their declared (known) charset."""
    problem = f"{where} declared charset {declared!r} does not match its bytes"
    if codec != "utf-8" and _is_utf8(data):
        warnings.append(f"{problem}; decoded as utf-8")
        return data.decode("utf-8")
    text = data.decode(codec, "replace")
    bad = text.count("\ufffd")
    if bad * 20 <= max(1, _high_count(data)):
        warnings.append(f"{problem}; {bad} invalid byte sequence(s) replaced")
        return text
    return _detect(data, warnings, problem)


def _recheck_single_byte(
    data: bytes, text: str, codec: str, declared: str, warnings: list[str], where: str
) -> str:
    """Catch the classic wrong declarations of single-byte charsets (mojibake)."""
    problem = f"{where} declared charset {declared!r} looks wrong"
    if _is_utf8(data):
        warnings.append(f"{problem} (UTF-8 bytes); decoded as utf-8")
        return data.decode("utf-8")
    if codec in _LATIN:
        cyr = _guess_cyrillic(data)
        if cyr is not None:
            warnings.append(f"{problem} (Cyrillic mojibake); decoded as {cyr}")
            return data.decode(cyr, "replace")
    elif codec in _CYRILLIC_PAIR:
        other = "koi8_u" if codec == "cp1251" else "cp1251"
        sample = data[:_DETECT_SAMPLE]
        mine = _cyrillic_score(sample.decode(codec, "replace"))
        theirs = _cyrillic_score(sample.decode(other, "replace"))
        if mine < 0.15 and theirs >= mine + 0.2:
            warnings.append(f"{problem} (Cyrillic mojibake); decoded as {other}")
            return data.decode(other, "replace")
    return text


def decode_bytes(
    data: bytes, declared: str | None, warnings: list[str], where: str = "part"
) -> str:
    """Decode bytes from a declared charset, tolerating every real-world mistake.

    Used for bodies and RFC 2047 words alike. Never raises: problems are described in
    ``warnings`` (prefixed with ``where``) and the last resort is cp1252 with replacement.
    """
    codec = _resolve_charset(declared) if declared else None
    if codec is not None and not _ascii_compatible(codec):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            return _decode_mismatch(data, codec, declared or "", warnings, where)
    if data.isascii():
        return data.decode("ascii")
    if codec is None or codec == "ascii":
        if not declared or not declared.strip():
            problem = f"{where} has 8-bit bytes but no declared charset"
        elif codec == "ascii":
            problem = f"{where} declared charset {declared!r} but has 8-bit bytes"
        else:
            problem = f"{where} declared charset {declared!r} is unknown"
        return _detect(data, warnings, problem)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return _decode_mismatch(data, codec, declared or "", warnings, where)
    if codec in _SINGLE_BYTE:
        return _recheck_single_byte(data, text, codec, declared or "", warnings, where)
    return text


# --------------------------------------------------------------------------- headers

_WS_RE = re.compile(r"\s+")
_MSGID_RE = re.compile(r"<[^<>\s]+>")
_ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*", re.ASCII)
_SUBJECT_PREFIX_RE = re.compile(
    r"^(?:\s*(?:re|fwd?|aw|wg|sv|antw|tr|відп|відповідь|пересл|переслано|переслане|отв|ответ)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*:\s*)+",
    re.I,
)
_FORWARD_SUBJECT_RE = re.compile(r"^\s*(?:fwd?|wg|tr|пересл\w*)\s*:", re.I)


def _fold(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


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
        return _fold(text)
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
    return _fold("".join(out))


def _raw(msg: Message, name: str) -> str | None:
    """Undecoded header value (first occurrence) as str, or None when absent."""
    value = msg.get(name)
    return None if value is None else _header_text(value)


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
        name, addr = email.utils.parseaddr(text)
        name = _decode_words(name, warnings, where)
    else:  # raw 8-bit header: decode the whole line, then parse
        text = _decode_words(value, warnings, where)
        name, addr = email.utils.parseaddr(text)
        name = _fold(name)
    if "@" not in addr:
        match = _ADDR_RE.search(text)
        addr = match.group(0) if match else ""
    return name, addr.strip().lower()


def _sender(msg: Message, warnings: list[str]) -> tuple[str, str]:
    """From, falling back to Sender then Return-Path for the address."""
    first_name = ""
    for header in ("From", "Sender", "Return-Path"):
        name, addr = _parse_address(msg.get(header), warnings, f"header {header}")
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


# --------------------------------------------------------------------------- auto mail

_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[ -]?reply|auto:|autoreply|out of (?:the )?office"
    r"|автовідповідь|автоматична відповідь|автоответ|автоматический ответ)",
    re.I,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"^\s*(?:undeliverable|undelivered mail|delivery status notification|mail delivery failed"
    r"|delivery failure|returned mail|failure notice|недоставлен)",
    re.I,
)
_AUTOISH_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[ -]?reply|vacation|поза офісом|відсутн|відпустк"
    r"|автовідповідь|автоответ|отпуск",
    re.I,
)
_AUTO_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})


def _auto_reason(msg: Message, subject: str, sender_address: str) -> str | None:
    """Why this message is machine-sent and must never be forwarded; None for a human."""
    if msg.get("X-Triage-Forward") is not None:
        return "X-Triage-Forward header (our own forward)"
    return_path = _raw(msg, "Return-Path")
    if return_path is not None and _WS_RE.sub("", return_path) == "<>":
        return "null sender (Return-Path <>)"
    if msg.get_content_type() == "multipart/report":
        return "Content-Type multipart/report (delivery or read report)"
    auto_submitted = (_raw(msg, "Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted}"
    precedence = (_raw(msg, "Precedence") or "").strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    for header in ("X-Autoreply", "X-Autorespond", "X-Autogenerated"):
        if msg.get(header) is not None:
            return f"{header} header"
    if msg.get("List-Id") is not None:
        return "List-Id header (mailing list)"
    if msg.get("List-Unsubscribe") is not None:
        return "List-Unsubscribe header (mailing list)"
    if msg.get("X-Loop") is not None:
        return "X-Loop header (mail loop guard)"
    if _AUTO_SUBJECT_RE.match(subject):
        return "out-of-office subject"
    if _BOUNCE_SUBJECT_RE.match(subject):
        return "bounce subject (delivery failure)"
    if sender_address.split("@", 1)[0] in ("mailer-daemon", "postmaster"):
        return f"mailer-daemon sender ({sender_address})"
    if msg.get("X-Auto-Response-Suppress") is not None and _AUTOISH_SUBJECT_RE.search(subject):
        return "X-Auto-Response-Suppress with an auto-reply subject"
    return None


# --------------------------------------------------------------------------- HTML

_BLOCK_TAGS = frozenset(
    "p div br li tr h1 h2 h3 h4 h5 h6 table ul ol dl dt dd blockquote hr pre section article"
    " header footer address center form fieldset figure figcaption main nav aside caption".split()
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template"})
_HTML_CHUNK = 32768
_SCRIPT_STYLE_RE = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)
_TAG_RE = re.compile(r"<[^>]*>")


class _TextExtractor(HTMLParser):
    """Collect readable lines from HTML; blockquoted lines get "> " like plain-text quotes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.size = 0
        self._cur: list[str] = []
        self._skip = 0
        self._quote = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
            return
        if tag == "body":
            self._skip = 0  # an unclosed <head> must not hide the whole body
        if tag in _BLOCK_TAGS:
            self._flush(blank=tag == "br")
        if tag == "li":
            self._cur.append("• ")
        elif tag == "blockquote":
            self._quote += 1
        elif tag == "pre":
            self._pre += 1
        elif tag in ("td", "th"):
            self._cur.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "blockquote":
            self._quote = max(0, self._quote - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre and "\n" in data:
            first, *rest = data.split("\n")
            self._cur.append(first)
            for piece in rest:
                self._flush(blank=True)
                self._cur.append(piece)
            return
        self._cur.append(data)

    def _flush(self, blank: bool = False) -> None:
        text = _fold("".join(self._cur))
        self._cur.clear()
        if text:
            self.lines.append("> " * self._quote + text)
            self.size += len(text) + 1
        elif blank and self.lines and self.lines[-1]:
            self.lines.append("")

    def text(self) -> str:
        self._flush()
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines)


def html_to_text(markup: str, max_chars: int = 20000) -> str:
    """Readable text of an HTML body; stops parsing once ``max_chars`` are collected."""
    parser = _TextExtractor()
    try:
        for start in range(0, len(markup), _HTML_CHUNK):
            parser.feed(markup[start : start + _HTML_CHUNK])
            if parser.size > max_chars:
                break
        parser.close()
    except AssertionError:  # HTMLParser's reaction to some broken declarations
        stripped = _TAG_RE.sub(" ", _SCRIPT_STYLE_RE.sub(" ", markup[: max_chars * 20]))
        return _fold(html.unescape(stripped))
    return parser.text()


# --------------------------------------------------------------------------- MIME walk

_BODY_TYPES = frozenset({"text/plain", "text/html"})
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_MAX_DEPTH = 30


@dataclass(slots=True)
class _Walk:
    """Mutable state of one message walk."""

    warnings: list[str]
    max_chars: int
    segments: list[tuple[str, str]] = field(default_factory=list)  # (plain|html|sep, text)
    attachments: list[str] = field(default_factory=list)


def _declared_charset(part: Message) -> str | None:
    charset = part.get_param("charset")
    if isinstance(charset, tuple):  # RFC 2231 form
        charset = email.utils.collapse_rfc2231_value(charset)
    return charset if isinstance(charset, str) else None


def _filename(part: Message, warnings: list[str]) -> str:
    """Decoded attachment filename (RFC 2231, RFC 2047 words or raw 8-bit), "" if none."""
    try:
        name = part.get_filename()
    except Exception:  # malformed parameters
        return ""
    if not name:
        return ""
    if _SURROGATE_RE.search(name):  # raw 8-bit bytes arrive as surrogate escapes
        raw = name.encode("utf-8", "surrogateescape")
        return _fold(decode_bytes(raw, None, warnings, "attachment filename"))
    if name.isascii():
        return _decode_words(name, warnings, "attachment filename")
    return _fold(name)  # already decoded from RFC 2231


def _disposition(part: Message) -> str:
    value = _raw(part, "Content-Disposition") or ""
    return value.split(";", 1)[0].strip().lower()


def _payload_text(part: Message, walk: _Walk) -> str:
    """Decoded text of a leaf part (transfer encoding, then charset)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # broken transfer encoding: use what is there
        data = None
    if not isinstance(data, bytes):
        payload = part.get_payload()
        data = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else b""
    declared = _declared_charset(part)
    if declared is None and part.get_content_subtype() == "html" and not data.isascii():
        match = _META_CHARSET_RE.search(data[:4096])
        declared = match.group(1).decode("ascii") if match else None
    return decode_bytes(data, declared, walk.warnings, "part")


def _add_attachment(part: Message, walk: _Walk) -> None:
    name = _filename(part, walk.warnings)
    walk.attachments.append(name or f"(unnamed {part.get_content_type()})")


def _walk_message(inner: Message, part: Message, walk: _Walk, depth: int) -> None:
    """A message/rfc822 part: its text is what the customer forwarded to us, keep it."""
    if _disposition(part) == "attachment":
        subject = _decode_words(inner.get("Subject"), walk.warnings, "header Subject")
        walk.attachments.append(_filename(part, walk.warnings) or f"{subject or 'message'}.eml")
    lines = ["---------- Forwarded message ---------"]
    for header in ("From", "Date", "Subject"):
        value = _decode_words(inner.get(header), walk.warnings, f"header {header}")
        if value:
            lines.append(f"{header}: {value}")
    walk.segments.append(("sep", "\n".join(lines)))
    _walk(inner, walk, depth + 1)


def _walk_alternative(children: list[Message], walk: _Walk, depth: int) -> None:
    """Use one alternative: the first with non-blank plain text, else the first with HTML."""
    options: list[_Walk] = []
    for child in children:
        sub = _Walk(walk.warnings, walk.max_chars)
        _walk(child, sub, depth + 1)
        walk.attachments.extend(sub.attachments)
        options.append(sub)
    for kind in ("plain", "html"):
        for sub in options:
            if any(k == kind and t.strip() for k, t in sub.segments):
                walk.segments.extend(sub.segments)
                return


def _walk(part: Message, walk: _Walk, depth: int = 0) -> None:
    """Collect body segments and attachment names of a part tree."""
    if depth > _MAX_DEPTH:
        walk.warnings.append("MIME nesting too deep; inner parts ignored")
        return
    ctype = part.get_content_type()
    payload = part.get_payload()
    if isinstance(payload, list):
        if ctype == "message/rfc822" and payload and isinstance(payload[0], Message):
            _walk_message(payload[0], part, walk, depth)
        elif ctype == "multipart/alternative":
            _walk_alternative([p for p in payload if isinstance(p, Message)], walk, depth)
        elif part.get_content_maintype() != "message":  # skip delivery-status blocks
            for child in payload:
                if isinstance(child, Message):
                    _walk(child, walk, depth + 1)
        return
    if part.get_content_maintype() == "multipart":
        walk.warnings.append(f"{ctype} without usable boundary; raw payload used as text")
        walk.segments.append(("plain", _payload_text(part, walk)))
        return
    disposition = _disposition(part)
    named = bool(part.get_param("filename", header="content-disposition") or part.get_param("name"))
    if (
        ctype not in _BODY_TYPES
        or disposition == "attachment"
        or (named and disposition != "inline")
    ):
        _add_attachment(part, walk)
        return
    text = _payload_text(part, walk)
    if ctype == "text/html":
        walk.segments.append(("html", html_to_text(text, walk.max_chars)))
    else:
        walk.segments.append(("plain", text))


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NEWLINES_RE = re.compile(r"\r\n?")
_BLANKS_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _clean_body(text: str) -> str:
    """Unify newlines, drop control chars (NUL breaks PostgreSQL), squeeze blank runs."""
    text = _CONTROL_RE.sub("", _NEWLINES_RE.sub("\n", text))
    return _BLANKS_RE.sub("\n\n", text).strip()


# --------------------------------------------------------------------------- trimming

_REPLY_TAIL_RE = re.compile(
    r"(?:wrote|writes|пише|пишет|написав(?:\(ла\)|ла)?|написала|написал(?:\(а\)|а)?"
    r"|schrieb|a écrit)\s*:\s*$",
    re.I,
)
_DIGIT_OR_AT_RE = re.compile(r"[\d@]")
# How wrapped reply headers start: "On Mon, ...", "Am ...", "Le ...", "01.02.2024 ...", "пн, ...".
_REPLY_START_RE = re.compile(r"^(?:on|am|le)\s|^\d|^(?:пн|вт|ср|чт|пт|сб|нд|вс)\b", re.I)
# A wrapped reply header's first line carries a time, an address or an open "<".
_REPLY_JOIN_HINT_RE = re.compile(r"\d{1,2}:\d{2}|@|<$")
_DIVIDER_RE = re.compile(
    r"^(?:_{10,}|-{2,}\s*(?:original message|оригінальне повідомлення|вихідне повідомлення"
    r"|исходное сообщение)\s*-{2,})$",
    re.I,
)
_FORWARD_MARKER_RE = re.compile(
    r"^[-=_ ]*(?:forwarded message|forwarded message follows|begin forwarded message"
    r"|пересланий лист|переслане повідомлення|переслане повідомлення|пересланное сообщение"
    r"|начало пересылаемого сообщения|weitergeleitete nachricht)[-=_ :]*$",
    re.I,
)
_FROM_LINE_RE = re.compile(r"^\*?(?:from|від|від кого|от|von|de)\s*:\*?\s*\S", re.I)
_HEADER_FIELD_RE = re.compile(
    r"^\*?(?:from|to|cc|bcc|date|sent|subject|reply-to|від|від кого|кому|копія|дата|тема"
    r"|надіслано|відправлено|от|отправлено|копия|von|an|datum|betreff|gesendet)\s*:",
    re.I,
)
_STRONG_FIELD_RE = re.compile(
    r"^\*?(?:sent|subject|тема|надіслано|відправлено|отправлено|betreff|gesendet)\s*:", re.I
)
_MOBILE_SIG_RE = re.compile(
    r"^(?:sent from my|sent from|get outlook for|надіслано з|відправлено з|отправлено с"
    r"|отправлено из)\s+(?:my |мого |моего )?(?:iphone|ipad|android|samsung|galaxy|mobile"
    r"|smartphone|outlook|yahoo mail|mail for windows|blackberry|huawei|xiaomi|смартфона"
    r"|телефона|мобільного|мобильного)\b.{0,30}$",
    re.I,
)
_CLOSING_RE = re.compile(
    r"^(?:best regards|kind regards|warm regards|regards|best wishes|best|cheers|thanks"
    r"|thank you|thanks in advance|many thanks|sincerely|yours sincerely|yours truly|br"
    r"|з повагою|з найкращими побажаннями|з побажаннями|дякую|щиро дякую|дякую заздалегідь"
    r"|заздалегідь дякую|щиро ваш|щиро ваша|всього найкращого|гарного дня|с уважением"
    r"|спасибо|заранее спасибо|с наилучшими пожеланиями)[\s,.!)]*$",
    re.I,
)
_SIG_TAIL_LINES = 12
_CLOSING_TAIL_LINES = 5
_CLOSING_TAIL_WIDTH = 80


def _is_reply_header(lines: list[str], i: int) -> bool:
    """'On <date>, <name> wrote:' style line, also when a client wrapped it over two lines."""
    line = lines[i]
    if len(line) > 300:
        return False
    if not _DIGIT_OR_AT_RE.search(line) and not _REPLY_START_RE.match(line):
        return False
    if _REPLY_TAIL_RE.search(line):
        return True
    if i + 1 < len(lines) and lines[i + 1] and _REPLY_START_RE.match(line):
        if not _REPLY_JOIN_HINT_RE.search(line):  # "1. Item" + "Manager writes:" is prose
            return False
        joined = f"{line} {lines[i + 1]}"
        return len(joined) <= 300 and bool(_REPLY_TAIL_RE.search(joined))
    return False


def _is_header_block(lines: list[str], i: int) -> bool:
    """A 'From:/Від:' line, then 2+ header fields including Sent/Subject (Outlook history).

    Requiring Sent or Subject keeps prose like "From: Kyiv / To: Lviv / Date: 5 May".
    """
    if not _FROM_LINE_RE.match(lines[i]):
        return False
    following = [s for s in lines[i + 1 : i + 8] if s][:6]
    fields = [s for s in following if _HEADER_FIELD_RE.match(s)]
    return len(fields) >= 2 and any(_STRONG_FIELD_RE.match(s) for s in fields)


def _next_nonblank(lines: list[str], i: int) -> str:
    return next((s for s in lines[i:] if s), "")


def _cut_history(lines: list[str], forward: bool) -> list[str]:
    """Drop quotes and reply history; keep forwarded content without its header lines."""
    kept: list[str] = []
    in_forward_headers = False
    i = 0
    while i < len(lines):
        s = lines[i]
        if s.startswith(">"):
            i += 1
            continue
        if _FORWARD_MARKER_RE.match(s):
            in_forward_headers = True
            i += 1
            continue
        if in_forward_headers:
            if not s or _HEADER_FIELD_RE.match(s):
                i += 1
                continue
            in_forward_headers = False
        if _MOBILE_SIG_RE.match(s):
            i += 1
            continue
        if _is_reply_header(lines, i):
            if _next_nonblank(lines, i + 1).startswith(">") or _next_nonblank(
                lines, i + 2
            ).startswith(">"):
                i += 1  # interleaved or bottom-posted reply: only the quotes go
                continue
            break
        divider = bool(_DIVIDER_RE.match(s))
        if divider or _is_header_block(lines, i):
            if not forward:
                break
            in_forward_headers = True  # a forward's header block: drop it, keep what follows
            i += 1 if divider else 0
            continue
        kept.append(s)
        i += 1
    return kept


def _strip_signature(lines: list[str]) -> list[str]:
    """Cut a '-- ' signature or a closing + short sign-off, only when it ends the text."""
    while lines and not lines[-1]:
        lines.pop()
    for i, s in enumerate(lines):
        if s == "--" and any(lines[:i]):
            if sum(1 for t in lines[i + 1 :] if t) <= _SIG_TAIL_LINES:
                lines = lines[:i]
                break
    for i in range(len(lines) - 1, -1, -1):
        if _CLOSING_RE.match(lines[i]):
            tail = [t for t in lines[i + 1 :] if t]
            if (
                len(tail) <= _CLOSING_TAIL_LINES
                and all(len(t) <= _CLOSING_TAIL_WIDTH for t in tail)
                and any(lines[:i])
            ):
                return lines[:i]
            break
    return lines


def trim_for_classification(body: str, *, forward: bool = False) -> str:
    """Body without quoted replies, history and signature, whitespace folded to spaces."""
    lines = [line.strip() for line in body.split("\n")]
    return _fold(" ".join(_strip_signature(_cut_history(lines, forward))))


# --------------------------------------------------------------------------- language

_CYR_RUN_RE = re.compile(r"[\u0400-\u04ff]+")
_LAT_RUN_RE = re.compile(r"[A-Za-z]+")
_UK_LETTERS = "іїєґІЇЄҐ"
_RU_LETTERS = "ыэъёЫЭЪЁ"


def _guess_language(text: str) -> str:
    """Cheap script-based guess: uk / ru by their specific letters, en for Latin, else und."""
    sample = text[:4000]
    cyr = sum(map(len, _CYR_RUN_RE.findall(sample)))
    lat = sum(map(len, _LAT_RUN_RE.findall(sample)))
    if cyr + lat < 2:
        return "und"
    if lat >= cyr:
        return "en"
    uk = sum(map(sample.count, _UK_LETTERS))
    ru = sum(map(sample.count, _RU_LETTERS))
    if uk and uk >= ru:
        return "uk"
    return "ru" if ru else "und"


# --------------------------------------------------------------------------- entry point


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def parse_email(raw: bytes, *, max_text_chars: int = 20000) -> ParsedEmail:
    """Parse raw message bytes into a ``ParsedEmail``; never raises on malformed content."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"parse_email() needs bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if not raw.strip():
        raise NormalizationError("The message is empty: there are no header or body bytes.")
    msg = email.message_from_bytes(raw)
    warnings: list[str] = []

    subject = _decode_words(msg.get("Subject"), warnings, "header Subject")
    sender_name, sender_address = _sender(msg, warnings)
    message_id = _first_msgid(_raw(msg, "Message-ID"))
    in_reply_to = _first_msgid(_raw(msg, "In-Reply-To"))
    references = _references(_raw(msg, "References"))

    walk = _Walk(warnings, max_text_chars)
    _walk(msg, walk)
    body = _clean_body("\n\n".join(text for _, text in walk.segments if text.strip()))
    if len(body) > max_text_chars:
        warnings.append(f"body truncated from {len(body)} to {max_text_chars} characters")
        body = body[:max_text_chars]
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
        date=_parse_date(_raw(msg, "Date")),
        body_text=body,
        text_for_classification=text,
        auto_reason=_auto_reason(msg, subject, sender_address),
        attachments=tuple(walk.attachments),
        html_only="html" in kinds and "plain" not in kinds,
        warnings=_unique(warnings),
        language=_guess_language(text),
    )
