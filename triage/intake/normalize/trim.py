"""Trimming a body for classification: quoted history, forwarded headers and signatures."""

from __future__ import annotations

import re

from triage.intake.normalize.headers import _fold

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
    if line.endswith(":") and _REPLY_TAIL_RE.search(line):
        return True
    if i + 1 < len(lines) and lines[i + 1].endswith(":") and _REPLY_START_RE.match(line):
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


def _cut_history(lines: list[str], forward: bool) -> list[list[str]]:
    """Drop quotes and reply history; keep forwarded content without its header lines.

    Returns one list of lines per forwarded segment, so that a signature is only ever
    cut at the end of its own segment (the forwarder's note or the forwarded mail).
    """
    segments: list[list[str]] = [[]]
    in_forward_headers = False
    i = 0
    while i < len(lines):
        s = lines[i]
        if s.startswith(">"):
            i += 1
            continue
        if _FORWARD_MARKER_RE.match(s):
            in_forward_headers = True
            segments.append([])
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
            segments.append([])
            i += 1 if divider else 0
            continue
        segments[-1].append(s)
        i += 1
    return segments


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
    segments = _cut_history(lines, forward)
    return _fold(" ".join(" ".join(_strip_signature(segment)) for segment in segments))
