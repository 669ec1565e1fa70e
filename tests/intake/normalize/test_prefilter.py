"""The byte rewrites done before parsing, for speed (triage/intake/normalize/_prefilter.py):
each must leave the parse exactly as it was, over the demo mail and hundreds of random trees."""

from __future__ import annotations

import base64
import email
import random
import re
from pathlib import Path

import pytest

from tests.helpers import UK_TEXT, multipart, part, raw_mail
from triage.intake import normalize
from triage.intake.normalize import _prefilter, parse_email

ROOT = Path(__file__).parents[3]


def with_big_attachments(text_part: bytes, size: int = 40_000) -> tuple[str, bytes]:
    """(Content-Type, body) of a mixed multipart: ``text_part`` (a raw part), then a PDF and an
    inline image of ``size`` bytes each."""
    data = base64.encodebytes(random.Random(size).randbytes(size))
    return multipart(
        "mixed",
        [
            text_part,
            part(data, "application/pdf", "Content-Transfer-Encoding: base64",
                 'Content-Disposition: attachment; filename="scan.pdf"'),
            part(data, "image/png", "Content-Transfer-Encoding: base64",
                 'Content-Disposition: inline; filename="photo.png"'),
        ],
    )  # fmt: skip


def test_binary_attachment_data_is_cut_before_parsing_but_never_text() -> None:
    long_text = "\n".join([UK_TEXT] * 40)
    encoded = base64.encodebytes(long_text.encode("cp1251"))  # ~150 lines of base64 text
    text = part(encoded, "text/plain; charset=windows-1251", "Content-Transfer-Encoding: base64")
    ctype, body = with_big_attachments(text)
    raw = raw_mail(body, content_type=ctype)
    cut = _prefilter._without_binary_bodies(raw)
    assert len(cut) < len(raw) - 100_000  # both 54 KB attachments are gone
    assert encoded.replace(b"\n", b"\r\n") in cut  # the text part, base64 too, is kept
    assert b'filename="scan.pdf"' in cut and b'filename="photo.png"' in cut
    parsed = parse_email(raw)
    assert parsed.body_text == long_text
    assert parsed.attachments == ("scan.pdf", "photo.png")


def test_cutting_attachment_data_changes_no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every demo mail, its body beside big attachments, parses the same with and without
    the cut."""
    mails = sorted((ROOT / "demo" / "mailbox").glob("*/*"))
    assert mails
    for path in mails:
        head, _, body = path.read_bytes().replace(b"\r\n", b"\n").partition(b"\n\n")
        fields = re.split(rb"\n(?![ \t])", head)
        content = [f for f in fields if f.lower().startswith(b"content-")]
        ctype, mixed = with_big_attachments(b"\n".join([*content, b"", body]), size=20_000)
        others = [f for f in fields if not f.lower().startswith((b"content-", b"mime-version"))]
        raw = b"\n".join([*others, b"MIME-Version: 1.0", f"Content-Type: {ctype}".encode(), b""])
        raw += b"\n" + mixed
        assert len(_prefilter._without_binary_bodies(raw)) < len(raw) - 40_000, path.name
        with_cut = parse_email(raw)
        monkeypatch.setattr(_prefilter, "CUT_BINARY_ABOVE", len(raw))
        assert parse_email(raw) == with_cut, path.name
        monkeypatch.undo()
        assert with_cut.attachments[-2:] == ("scan.pdf", "photo.png"), path.name


BOUNDARIES = [
    "BOUNDARY", "BOUNDARY-1", "----=_Part_1234_5678.1700000000000", "000000000000a1b2c3d4e5f6",
    " leading space", "trailing  ", "<angled>", "a b=c", "Mixed=Case_42", "x", "=_?.;+/", "\"",
]  # fmt: skip


def _random_tree(rng: random.Random, depth: int = 0) -> tuple[str, bytes]:
    """(Content-Type, body) of a random multipart over BOUNDARIES, with decoy lines."""
    boundary = rng.choice(BOUNDARIES)
    token = all(c.isalnum() or c in "'+-.=_?/" for c in boundary)
    name = rng.choice(["boundary", "Boundary", "BOUNDARY "])
    value = boundary if token and rng.random() < 0.5 else f'"{boundary}"'
    fold = rng.choice([" ", "\n\t"])
    ctype = f"multipart/{rng.choice(['mixed', 'alternative', 'related'])};{fold}{name}={value}"
    lines = [b"preamble", b"--" + boundary.encode() + b"x decoy"]
    for index in range(rng.randint(1, 3)):
        lines.append(b"--" + boundary.encode() + rng.choice([b"", b"  ", b"\t"]))
        if depth < 2 and rng.random() < 0.4:
            inner_type, inner = _random_tree(rng, depth + 1)
            lines.append(f"Content-Type: {inner_type}\n".encode() + b"\n" + inner)
            continue
        quoted = b'Content-Type: multipart/mixed; boundary="QUOTED"\n\n--QUOTED\nq\n--QUOTED--'
        decoy = rng.choice([b"--" + rng.choice(BOUNDARIES).encode() + b" text", b"-- ", quoted])
        kind = rng.choice(["text/plain; charset=utf-8", "text/html", "application/pdf"])
        lines.append(part(f"part {index} {UK_TEXT[:40]}".encode() + b"\n" + decoy, kind))
    lines.append(b"--" + boundary.encode() + b"--" + rng.choice([b"", b" "]))
    lines.append(b"epilogue")
    return ctype, b"\n".join(lines) + b"\n"


def _structure(raw: bytes) -> list[tuple[str, bytes | None]]:
    message = email.message_from_bytes(raw)
    return [
        (p.get_content_type(), None if p.is_multipart() else p.get_payload(decode=True))
        for p in message.walk()
    ]


def test_renaming_boundaries_changes_no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo mail and random multipart trees (boundaries that are prefixes of others,
    quoted, folded, with spaces, decoy lines) parse the same with and without the renaming."""
    mails = [p.read_bytes() for p in sorted((ROOT / "demo").glob("mailbox/*/*"))]
    rng = random.Random(11)
    for _ in range(300):
        ctype, body = _random_tree(rng)
        raw = raw_mail(body, content_type=ctype)
        mails.append(raw if rng.random() < 0.5 else raw.replace(b"\r\n", b"\n"))
    renamed = []
    for raw in mails:
        canonical = _prefilter._with_canonical_boundaries(raw)
        renamed.append(canonical != raw)
        assert _structure(canonical) == _structure(raw)
        with_renaming = parse_email(raw)
        monkeypatch.setattr(normalize, "_with_canonical_boundaries", lambda raw: raw)
        assert parse_email(raw) == with_renaming
        monkeypatch.undo()
    # Not simply skipped: every demo multipart is renamed, and random trees often enough.
    demo = [b"multipart/" in raw.lower() for raw in mails[:-300]]
    assert renamed[:-300] == demo and any(demo)
    assert sum(renamed[-300:]) > 100


def test_boundaries_are_renamed_only_where_the_parser_reads_them() -> None:
    quoted = b'Content-Type: multipart/mixed; boundary="QUOTED"\n\n--QUOTED\n'
    text = part(b"--BOUNDARY is my word\n--BOUNDARYX\n" + quoted, "text/plain")
    ctype, body = multipart("mixed", [text])
    raw = raw_mail(body, content_type=ctype)
    canonical = _prefilter._with_canonical_boundaries(raw)
    assert b'boundary="triage=_1"' in canonical and b"\r\n--triage=_1\r\n" in canonical
    assert b"\r\n--triage=_1--\r\n" in canonical
    assert b"--BOUNDARY is my word\r\n--BOUNDARYX" in canonical
    assert quoted.replace(b"\n", b"\r\n") in canonical  # a header quoted in a text is text
    for odd in (raw.replace(b"\r\n", b"\r"), raw.replace(b'"BOUNDARY"', b'"BOUND\\ARY"')):
        assert _prefilter._with_canonical_boundaries(odd) == odd
