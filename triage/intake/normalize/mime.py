"""The MIME walk: which parts are the body, which are attachments, how deep is too deep."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from triage.intake.normalize.charsets import _META_CHARSET_RE, decode_bytes
from triage.intake.normalize.headers import _decode_words, _fold, _header_text, _sanitize
from triage.intake.normalize.html import html_to_text

# --------------------------------------------------------------------------- MIME walk

_BODY_TYPES = frozenset({"text/plain", "text/html"})
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_MAX_DEPTH = 30


@dataclass(slots=True)
class _Walk:
    """Mutable state of one message walk."""

    warnings: list[str]
    max_chars: int
    # (plain|html|sep, text); inside an alternative, HTML waits as "markup" until it is chosen
    segments: list[tuple[str, str]] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    html_later: bool = False

    def rendered(self) -> list[tuple[str, str]]:
        """The segments with any waiting markup turned into text."""
        return [
            ("html", html_to_text(text, self.max_chars)) if kind == "markup" else (kind, text)
            for kind, text in self.segments
        ]


def _declared_charset(part: Message) -> str | None:
    charset = part.get_param("charset")
    if isinstance(charset, tuple):  # RFC 2231 form: charset*=utf-8''windows-1251
        charset = charset[2]
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
        return _fold(_sanitize(decode_bytes(raw, None, warnings, "attachment filename")))
    if name.isascii():
        return _decode_words(name, warnings, "attachment filename")
    return _fold(_sanitize(name))  # already decoded from RFC 2231


def _has_param(part: Message, header: str, name: str) -> bool:
    """Whether ``header`` has a non-empty parameter ``name``. The header is parsed only when
    the name occurs in it: get_param parses it anew at each call, and most parts are plain
    text with neither a file name nor a name."""
    value = part.get(header)
    if value is None or name not in _header_text(value).lower():
        return False
    return bool(part.get_param(name, header=header))


def _disposition(part: Message) -> str:
    value = part.get("Content-Disposition")
    value = _header_text(value) if value is not None else ""
    return value.split(";", 1)[0].strip().lower()


def _payload_text(part: Message, walk: _Walk, html_part: bool = False) -> str:
    """Decoded text of a leaf part (transfer encoding, then charset)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # broken transfer encoding: use what is there
        data = None
    if not isinstance(data, bytes):
        walk.warnings.append(f"{part.get_content_type()} payload could not be decoded; left empty")
        data = b""
    declared = _declared_charset(part)
    if declared is None and html_part and not data.isascii():
        match = _META_CHARSET_RE.search(data[:4096])
        declared = match.group(1).decode("ascii") if match else None
    return decode_bytes(data, declared, walk.warnings, "part")


def _add_attachment(part: Message, ctype: str, walk: _Walk) -> None:
    name = _filename(part, walk.warnings)
    walk.attachments.append(name or f"(unnamed {ctype})")


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
    """Use one alternative: the first with non-blank plain text, else the first with HTML.

    HTML is turned into text only for the alternative chosen (or tried): most mail carries a
    plain part beside its HTML, and HTML parsing is the costliest step of a walk.
    """
    options: list[_Walk] = []
    for child in children:
        sub = _Walk(walk.warnings, walk.max_chars, html_later=True)
        _walk(child, sub, depth + 1)
        walk.attachments.extend(sub.attachments)
        options.append(sub)
    for sub in options:
        if any(k == "plain" and t.strip() for k, t in sub.segments):
            walk.segments.extend(sub.rendered())
            return
    for sub in options:
        segments = sub.rendered()
        if any(k == "html" and t.strip() for k, t in segments):
            walk.segments.extend(segments)
            return


def _walk(part: Message, walk: _Walk, depth: int = 0) -> None:
    """Collect body segments and attachment names of a part tree."""
    if depth > _MAX_DEPTH:
        walk.warnings.append("MIME nesting too deep; inner parts ignored")
        return
    ctype = part.get_content_type()
    maintype = ctype.split("/", 1)[0]
    if part.is_multipart():  # get_payload() without decode may raise on a leaf, not here
        children = [p for p in part.get_payload() if isinstance(p, Message)]
        if ctype == "message/rfc822" and children:
            _walk_message(children[0], part, walk, depth)
        elif ctype == "multipart/alternative":
            _walk_alternative(children, walk, depth)
        elif maintype != "message":  # skip delivery-status blocks
            for child in children:
                _walk(child, walk, depth + 1)
        return
    try:
        _walk_leaf(part, ctype, walk)
    except Exception as exc:  # a stdlib corner we did not foresee must not lose the message
        walk.warnings.append(f"{ctype} part skipped: {type(exc).__name__}: {exc}")


def _walk_leaf(part: Message, ctype: str, walk: _Walk) -> None:
    """A non-multipart part: body text, or an attachment name."""
    if ctype.startswith("multipart/"):
        walk.warnings.append(f"{ctype} without usable boundary; raw payload used as text")
        walk.segments.append(("plain", _payload_text(part, walk)))
        return
    disposition = _disposition(part)
    named = _has_param(part, "content-disposition", "filename") or _has_param(
        part, "content-type", "name"
    )
    if (
        ctype not in _BODY_TYPES
        or disposition == "attachment"
        or (named and disposition != "inline")
    ):
        _add_attachment(part, ctype, walk)
        return
    text = _payload_text(part, walk, html_part=ctype == "text/html")
    if ctype == "text/html" and walk.html_later:
        walk.segments.append(("markup", text))
    elif ctype == "text/html":
        walk.segments.append(("html", html_to_text(text, walk.max_chars)))
    else:
        walk.segments.append(("plain", text))


_NEWLINES_RE = re.compile(r"\r\n?")
_BLANKS_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _clean_body(text: str) -> str:
    """Unify newlines, sanitize, squeeze blank-line runs."""
    return _BLANKS_RE.sub("\n\n", _sanitize(_NEWLINES_RE.sub("\n", text))).strip()
