"""The language of a text (Ukrainian, Russian, English), from its letters."""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- language

_CYR_RUN_RE = re.compile(r"[\u0400-\u04ff]+")
_LAT_RUN_RE = re.compile(r"[A-Za-z]+")
_UK_LETTERS = "іїєґІЇЄҐ"
_RU_LETTERS = "ыэъёЫЭЪЁ"


def guess_language(text: str) -> str:
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
