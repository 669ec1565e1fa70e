"""Charsets: decoding bytes whose declared charset is wrong, missing or exotic.

Our mail is Ukrainian and English: windows-1251, KOI8-U, wrongly declared and missing charsets
are routine. One tolerant routine decodes every payload and RFC 2047 word.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from operator import mul

from charset_normalizer import from_bytes as _detect_charset

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
    # KOI8-U is KOI8-R plus Ukrainian letters where KOI8-R has box drawing: Ukrainian
    # written in a client set to KOI8-R decodes right, Russian loses nothing.
    "koi8u": "koi8_u",
    "koi8-u": "koi8_u",
    "koi8-ru": "koi8_u",
    "koi8-r": "koi8_u",
    "koi8r": "koi8_u",
    "koi8": "koi8_u",
    "cskoi8r": "koi8_u",
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
    "ascii iso8859-1 cp1252 iso8859-15 iso8859-2 cp1250 iso8859-9 cp1254 iso8859-13 cp1257"
    " iso8859-3 iso8859-4 iso8859-10 iso8859-14 iso8859-16 mac-roman cp437 cp850".split()
)
_CYRILLIC_PAIR = frozenset({"cp1251", "koi8-u", "koi8-r"})
_SINGLE_BYTE = _LATIN | _CYRILLIC_PAIR | {"iso8859-5", "mac-cyrillic", "cp866"}
_STATEFUL_PREFIXES = ("utf-7", "iso2022", "hz")
_WIDE_PREFIXES = ("utf-16", "utf-32")
_CTRL_BYTES_RE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")

# Candidates for charset-normalizer once UTF-8 and the cheap Cyrillic guess have failed:
# only what Ukrainian and English mail is written in (a wider list mistakes short
# Cyrillic for CJK, and CJK mail is not ours to classify).
_DETECT_CANDIDATES = ["cp1251", "koi8_u", "cp1252", "mac_cyrillic", "iso8859_5"]
_DETECT_SAMPLE = 65536

_CHARSET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._:()+-]{0,39}")
_HIGH_BYTES = bytes(range(128, 256))
# Non-ASCII beyond Latin-1, Cyrillic, punctuation, symbols and emoji: suspicious when short.
_IMPLAUSIBLE_RE = re.compile(
    "[^\x00-\x7f\u00a0-\u00ff\u0400-\u045f\u0490\u0491\u2000-\u206f\u20ac\u2116"
    "\u2122\u2190-\u21ff\u2500-\u27bf\U0001f000-\U0001faff]"
)
_HIGH_RUN_RE = re.compile(rb"[\x80-\xff]{2,}")
_ACCENT_IN_WORD_RE = re.compile(rb"[A-Za-z][\x80-\xff]|[\x80-\xff](?=[A-Za-z])")
# Rough letter frequencies (%) of Ukrainian/Russian text: a right decode is made of common
# letters; cp1251 read as KOI8 (or back) is a permutation heavy in rare ones.
_CYR_FREQ = {
    "о": 9.5, "а": 8.0, "е": 7.0, "н": 6.5, "и": 6.0, "т": 5.5, "і": 5.0, "в": 4.5, "р": 4.5,
    "с": 4.5, "л": 4.0, "к": 3.5, "у": 3.0, "д": 3.0, "п": 2.8, "м": 2.8, "я": 2.0, "з": 2.0,
    "ы": 1.9, "ь": 1.8, "б": 1.6, "г": 1.5, "ч": 1.3, "х": 1.0, "й": 1.0, "ж": 0.8, "ш": 0.7,
    "ю": 0.6, "ц": 0.6, "ї": 0.6, "є": 0.5, "щ": 0.4, "ф": 0.3, "э": 0.3, "ё": 0.1, "ъ": 0.05,
    "ґ": 0.05,
}  # fmt: skip
_CYR_LETTERS = tuple(_CYR_FREQ)
_CYR_WEIGHTS = tuple(_CYR_FREQ.values())
# Common Ukrainian/Russian bigrams (grouped by first letter, which is faster for re):
# frequent in a right decode, rare in the permuted one.
_CYR_BIGRAM_RE = re.compile(
    "с[тя]|н[аеиояі]|п[ор]|р[аеио]|к[аиоу]|т[еиоуьі]|е[лмнр]|о[вдлмрсю]|го|в[аеиі]|а[лнт]"
    "|л[аеи]|и[йнт]|ми|д[аеиоуі]|ую|з[аі]|ці|хо|що|ч[аеи]|ж[еи]"
)
# The wrong decode also flips case: "Привіт" becomes "пРИВ¦Т"; lower->upper inside a word.
_CASE_FLIP_RE = re.compile(r"[а-яёіїєґ][А-ЯЁІЇЄҐ]")
_SCORE_SAMPLE = 8192
_CYR_MIN_SCORE = 2.0
_CYR_SWITCH_MARGIN = 1.0
_CYR_SWITCH_MIN_LETTERS = 8
_META_CHARSET_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([\w.:-]{2,40})""", re.I)


@lru_cache(maxsize=512)
def _resolve_charset(declared: str) -> str | None:
    """Map a declared charset to a Python codec name, or None when it is bogus/unknown."""
    name = declared.strip().strip("\"'").strip().lower().split("*", 1)[0]
    if name in _BOGUS or not _CHARSET_NAME_RE.fullmatch(name):
        return None
    name = _ALIASES.get(name, name)
    info = None
    for candidate in (name, re.sub(r"[^a-z0-9]+", "", name)):
        try:
            info = codecs.lookup(candidate)
            break
        except LookupError:
            continue
    if info is None or not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
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
    """True when the bytes are valid UTF-8 text that our mail could contain.

    Real 8-bit Cyrillic/Latin text is almost never valid UTF-8, but a word or two can be
    ("ні" in KOI8-U is UTF-8 "Φ"), so short results must also be plausible characters.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(data) - len(text) >= 8 or not _IMPLAUSIBLE_RE.search(text)


def _high_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, _HIGH_BYTES))


def _cyrillic_score(data: bytes, codec: str) -> float:
    """How much ``data`` decoded with ``codec`` looks like Ukrainian/Russian text.

    Per non-ASCII char: mean letter frequency (right decode ~4.5-6, wrong one ~2-4, in
    either letter case), plus common bigrams, minus case flips inside words.
    """
    text = data[:_SCORE_SAMPLE].decode(codec, "replace")
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if not non_ascii:
        return 0.0
    low = text.lower()
    freq = sum(map(mul, map(low.count, _CYR_LETTERS), _CYR_WEIGHTS))
    bigrams = len(_CYR_BIGRAM_RE.findall(low))
    flips = len(_CASE_FLIP_RE.findall(text))
    return float(freq + 10 * bigrams - 15 * flips) / non_ascii


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
        score = _cyrillic_score(sample, codec)
        if score > best_score:
            best, best_score = codec, score
    return best if best_score >= _CYR_MIN_SCORE else None


def _charset_normalizer(data: bytes) -> str | None:
    """Ask charset-normalizer, restricted to charsets plausible for our mail."""
    try:
        match = _detect_charset(data[:_DETECT_SAMPLE], cp_isolation=_DETECT_CANDIDATES).best()
    except Exception:  # a detector bug must not stop the pipeline
        return None
    return match.encoding if match is not None else None


def _looks_western(data: bytes) -> bool:
    """High bytes mostly glued to ASCII letters ("café", "Müller"): a Latin-1 family text."""
    sample = data[:_DETECT_SAMPLE]
    return len(_ACCENT_IN_WORD_RE.findall(sample)) * 2 >= _high_count(sample)


def _detect(data: bytes, warnings: list[str], problem: str) -> str:
    """Decode bytes whose charset is unknown: UTF-8, Cyrillic, Western, detector, cp1252."""
    if _is_utf8(data):
        codec = "utf-8"
    elif (cyrillic := _guess_cyrillic(data)) is not None:
        codec = cyrillic
    elif _looks_western(data):
        codec = "cp1252"
    else:
        codec = _charset_normalizer(data) or "cp1252"
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
    try:
        text = data.decode(codec, "replace")
    except (ValueError, LookupError):  # codecs that fail even with errors="replace"
        return _detect(data, warnings, problem)
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
    elif codec in _CYRILLIC_PAIR and _high_count(data) >= _CYR_SWITCH_MIN_LETTERS:
        # Short texts are too noisy to overrule their label.
        other = "koi8_u" if codec == "cp1251" else "cp1251"
        theirs = _cyrillic_score(data, other)
        if theirs >= _CYR_MIN_SCORE and theirs >= _cyrillic_score(data, codec) + _CYR_SWITCH_MARGIN:
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
        if codec.startswith(_WIDE_PREFIXES) and data.isascii() and not _CTRL_BYTES_RE.search(data):
            # UTF-16/32 of any alphabet has NUL or control bytes; plain text has none.
            return _detect(data, warnings, f"{where} declared charset {declared!r} is wrong")
        try:
            return data.decode(codec)
        except ValueError:
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
    except ValueError:
        return _decode_mismatch(data, codec, declared or "", warnings, where)
    if codec in _SINGLE_BYTE:
        return _recheck_single_byte(data, text, codec, declared or "", warnings, where)
    return text
