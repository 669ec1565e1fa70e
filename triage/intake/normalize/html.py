"""HTML bodies as plain text (the standard library's parser, tolerant of broken markup)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from triage.intake.normalize.headers import _fold

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
