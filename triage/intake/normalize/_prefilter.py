"""Byte rewrites before parsing, for speed: depends on the standard parser's behaviour.

The base64 data of binary attachments is cut out of large mail (only names are used), and
multipart boundaries are renamed to canonical ones: ``email.feedparser`` compiles a regex
for every boundary it meets (~0.4 ms), and real mail has a new boundary in every message.
Each rewrite is tested to parse identically to the original (tests/test_normalize.py).
Re-check after upgrading Python: the feedparser's boundary handling.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

CUT_BINARY_ABOVE = 16 * 1024
"""Messages larger than this have the base64 bodies of their binary parts cut before parsing."""

# A blank line, then at least 64 lines of base64 only (~5 KB): the body of an encoded part.
_BASE64_RUN = re.compile(rb"\n\r?\n((?:[A-Za-z0-9+/=]{40,}\r?\n){64,})")
_PART_TYPE = re.compile(rb"(?im)^content-type:[ \t]*([a-z0-9!#$&^_.+-]+)/")
_PART_BASE64 = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*base64[ \t]*\r?$")


def _without_binary_bodies(raw: bytes) -> bytes:
    """``raw`` with the base64 data of attachments (PDFs, images, ...) cut out.

    The parser reads a message line by line, so a scan or a photo cost it ten times what the
    text did; yet only an attachment's headers (its name) are used. A run of base64 lines is
    cut only when the part headers just above it declare base64 and a type other than text,
    message or multipart: text is never cut, whatever its encoding. Base64 has no "-", so
    such a run never hides a MIME boundary.
    """
    if len(raw) <= CUT_BINARY_ABOVE:
        return raw
    kept: list[bytes] = []
    done = 0
    for match in _BASE64_RUN.finditer(raw):
        head = raw[raw.rfind(b"\n--", done, match.start()) + 1 : match.start()]
        part_type = _PART_TYPE.search(head)
        if (
            not head.startswith(b"--")
            or part_type is None
            or part_type.group(1).lower() in (b"text", b"message", b"multipart")
            or not _PART_BASE64.search(head)
        ):
            continue
        kept.append(raw[done : match.start(1)])
        done = match.end(1)
    return b"".join([*kept, raw[done:]]) if kept else raw


# A multipart Content-Type field (with its folded lines), and a boundary parameter in it that
# the stdlib reads verbatim: quoted without escapes or angle brackets, or a bare token. Both
# start with a newline, which the regex engine finds fast ("^" would be tried at every byte).
_MULTIPART_FIELD = re.compile(rb"(?i)\ncontent-type:[ \t]*multipart/[^\n]*(?:\n[ \t][^\n]*)*")
_BOUNDARY_PARAM = re.compile(
    rb"""(?i)(?<![\w-])boundary[ \t]*=[ \t]*(?:"([\x20\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]+)"
    |([\x21\x23-\x27\x2a\x2b\x2d-\x39\x3d\x3f-\x5a\x5e-\x7e]+))(?=[ \t]*(?:;|\r?\n|\r?$))""",
    re.X,
)
# Any boundary parameter, also in forms the one above does not take (RFC 2231, folded).
_BOUNDARY_NAME = re.compile(rb"(?i)(?<![\w-])boundary\s*\*?\s*=")
_DELIMITER_LINE = re.compile(rb"\n--([^\r\n]+)")
_DELIMITER_TAIL = re.compile(rb"(?:--)?[ \t]*")
_Edit = tuple[int, int, bytes]  # replace raw[start:end] with bytes


def _boundary_params(raw: bytes) -> tuple[dict[bytes, bytes], list[_Edit]] | None:
    """Each boundary of ``raw`` with its new name, and the edits of its parameters; None when
    one cannot be renamed safely (a form the regex does not read as the stdlib does, or a
    boundary that is the start of another)."""
    names: dict[bytes, bytes] = {}
    edits: list[_Edit] = []
    for header in _MULTIPART_FIELD.finditer(raw):
        if not _in_header_block(raw, header.start(), names):
            continue
        params = list(_BOUNDARY_PARAM.finditer(raw, header.start(), header.end()))
        if len(params) != len(_BOUNDARY_NAME.findall(header.group())):
            return None
        for param in params:
            group = 1 if param.group(1) is not None else 2
            value = param.group(group).rstrip()
            if not value:
                return None
            name = names.setdefault(value, b"triage=_%d" % (len(names) + 1))
            edits.append((param.start(group), param.start(group) + len(value), name))
    values = sorted(names)
    if any(longer.startswith(value) for value, longer in itertools.pairwise(values)):
        return None
    return names, edits


def _in_header_block(raw: bytes, at: int, boundaries: Iterable[bytes]) -> bool:
    """Whether the line at ``at`` is a header: of the message (no blank line before it), or of
    a part (after a delimiter line of a boundary declared before it, with no blank line
    between). A header quoted in a text is neither: the parser never reads it as one."""
    blank = max(raw.rfind(b"\n\n", 0, at), raw.rfind(b"\n\r\n", 0, at))
    if blank == -1:
        return True
    dash = raw.rfind(b"\n--", blank, at)
    if dash == -1:
        return False
    line = raw[dash + 3 : raw.index(b"\n", dash + 1)].rstrip(b"\r")
    return any(_is_delimiter(line, boundary) for boundary in boundaries)


def _is_delimiter(line: bytes, boundary: bytes) -> bool:
    """Whether a line (after its "--") delimits ``boundary``, as the stdlib parser matches it."""
    return line.startswith(boundary) and _DELIMITER_TAIL.fullmatch(line, len(boundary)) is not None


def _with_canonical_boundaries(raw: bytes) -> bytes:
    """``raw`` with its multipart boundaries renamed ``triage=_1``, ``triage=_2``, ...

    The stdlib parser compiles a regular expression for every boundary it meets, and real mail
    has a new boundary in every message: a compile costs more than parsing the rest of a
    typical mail. Renamed, boundaries repeat and the compiled expressions are reused. Only what
    the parser reads as a boundary is renamed (the parameter of a multipart Content-Type and
    the delimiter lines that match it exactly), so it parses the same; unusual forms (bare CR
    line ends, escapes, overlapping boundaries) and attached messages are left as they are.
    """
    if b"oundary" not in raw and b"OUNDARY" not in raw:
        return raw
    if raw.count(b"\r") != raw.count(b"\r\n"):
        return raw
    raw = b"\n" + raw  # the first line is found like the others
    found = _boundary_params(raw)
    if not found or not found[0]:
        return raw[1:]
    names, edits = found
    for line in _DELIMITER_LINE.finditer(raw):
        rest = line.group(1)
        for value, name in names.items():
            if _is_delimiter(rest, value):
                edits.append((line.start(1), line.start(1) + len(value), name))
                break
    edits.sort()
    pieces: list[bytes] = []
    done = 1  # past the newline added above
    for start, end, name in edits:
        pieces += [raw[done:start], name]
        done = end
    pieces.append(raw[done:])
    return b"".join(pieces)
