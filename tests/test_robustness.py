"""Real and hostile mail through the whole IMAP path (Dovecot): nothing crashes the worker,
nothing is lost, every item ends stored or quarantined. Plus generated malformed MIME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from classifiers.model import Classifier
from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from triage.intake.normalize import parse_email
from triage.store.schema import Message
from triage.worker.scheduler import Worker


def cpython_corpus() -> list[bytes]:
    try:
        import test  # the interpreter's own test package, where installed
    except ImportError:
        return []
    folder = Path(os.path.dirname(test.__file__)) / "test_email" / "data"
    return [p.read_bytes() for p in sorted(folder.glob("msg_*.txt"))] if folder.is_dir() else []


def hostile() -> list[bytes]:
    """Mail that breaks naive parsers: each case is one realistic failure seen in the wild."""
    boundary_missing = (
        b"From: a@x.ua\nSubject: no boundary\nContent-Type: multipart/mixed\n\n--x\nbody\n"
    )
    nested = make_email("outer", "outer text")
    for depth in range(40):
        nested = (
            f"From: n{depth}@x.ua\nSubject: layer {depth}\nContent-Type: message/rfc822\n\n".encode()
            + nested
        )
    return [
        boundary_missing,
        b"Subject: \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd1\x96\xd1\x82 8-bit header\nFrom: \xcf\xf0\xe8 <p@x.ua>\n\nbody\n",
        b"From: z@x.ua\nSubject: zero body\n\n",
        b"From: h@x.ua\nX-Huge: " + b"a" * 200_000 + b"\nSubject: huge header\n\nbody\n",
        b"From: c@x.ua\nSubject: bad charset\nContent-Type: text/plain; charset=x-no-such\n\n\xff\xfe\xfd\n",
        b"From: b@x.ua\nSubject: bad base64\nContent-Transfer-Encoding: base64\n\n!!!not base64***\n",
        nested,
        make_email("big attachment", "see attached").replace(
            b"Content-Type: text/plain", b"X-Was: text/plain"
        )
        + b"\n"
        + b"A" * 30_000_000,
    ]


@pytest.mark.live
@pytest.mark.slow
def test_real_and_hostile_mail_through_dovecot(
    tmp_path: Path,
    dovecot: DovecotServer,
    tiny_model: tuple[Classifier, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = cpython_corpus() + hostile()
    user = dovecot.new_user()
    dovecot.append(user, corpus)
    monkeypatch.setenv("TRIAGE_ROBUST_PASSWORD", dovecot.password)
    source = {
        "name": "support", "type": "imap", "host": dovecot.host, "port": dovecot.port, "tls": "plain",
        "username": user, "password_env": "TRIAGE_ROBUST_PASSWORD", "max_message_bytes": 10_000_000,
    }  # fmt: skip
    worker = Worker(make_config(tmp_path, sources=[source]))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    [poll] = worker.run_once().polls
    assert poll.error is None
    assert poll.count("stored") + poll.count("quarantined") + poll.count("duplicate") == len(corpus)
    with worker.db.session() as session:
        stored = session.scalar(select(func.count()).select_from(Message))
        big = session.scalars(select(Message).where(Message.truncated)).one()
    assert stored == len(corpus) - poll.count("duplicate")
    assert big.size > 30_000_000 and len(big.raw) < 10_000
    assert worker.run_once().polls[0].count("stored") == 0
    worker.db.dispose()


MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=\"b\"\n", b"Content-Type: text/html; charset=koi8-u\n",
        b"Content-Transfer-Encoding: base64\n", b"Content-Transfer-Encoding: quoted-printable\n",
        b"--b\n", b"--b--\n", b"Subject: =?utf-8?B?0J/RgA==?= =?bogus?Q?x?=\n", b"\n", b"=\n",
        b"<html><body><p>\xd0\x9f", b"\xff\xfe\x00", b"From: \"\" <>\n", b"References: <a> <b\n",
        b"Content-Type: message/rfc822\n", b"Date: 31 Feb 99 25:61 +9999\n",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(MIME_PIECES, st.binary(max_size=40)), max_size=30))
def test_generated_malformed_mime_never_crashes_the_parser(pieces: list[bytes]) -> None:
    raw = b"From: fuzz@example.org\n" + b"".join(pieces)
    parsed = parse_email(raw)
    assert isinstance(parsed.body_text, str) and isinstance(parsed.subject, str)
    assert "\n" not in parsed.subject and "\r" not in parsed.subject
