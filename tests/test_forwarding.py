"""The forwarder against a real SMTP server (aiosmtpd): content, retries, dead letters, TLS+AUTH."""

from __future__ import annotations

import random
import string
from datetime import timedelta
from email import message_from_bytes
from email.policy import compat32, default
from pathlib import Path

import pytest

from tests.helpers import make_config, make_email
from tests.servers.dovecot import free_port
from tests.servers.smtp import SmtpServer
from triage.config import Config
from triage.deliver._wire import WIRE_POLICY, as_bytes
from triage.deliver.mail import text_part
from triage.deliver.outbox import Forwarder, requeue
from triage.deliver.transports import make_transport
from triage.errors import NothingNamed
from triage.store.database import Database
from triage.store.schema import Classification, Customer, Forward, Message, utcnow

SUBJECT = "Двічі списали гроші за замовлення KV-5531, прошу терміново повернути кошти на картку"
ORIGINAL = make_email(SUBJECT, "Доброго дня! З картки двічі списали 1200 грн за замовлення 5531.")


def smtp_config(tmp_path: Path, server: SmtpServer | None, **smtp: object) -> Config:
    settings = {
        "host": "127.0.0.1",
        "port": server.port if server else free_port(),
        "tls": "plain",
        "timeout": 5,
    }
    settings.update(smtp)
    return make_config(
        tmp_path,
        smtp=settings,
        forwarding={
            "transport": "smtp",
            "from_address": "triage@shop.test",
            "retry_base_seconds": 10,
            "max_attempts": 3,
        },
    )


def queue_forward(db: Database, *, urgent: bool = True) -> int:
    """A classified message with one queued forward, as the pipeline leaves it."""
    with db.transaction() as session:
        customer = Customer(
            channel="email", address="olena@example.com", display_name="Olena Petrenko"
        )
        session.add(customer)
        session.flush()
        earlier = Message(
            source="s",
            source_id="s:0",
            content_key="0" * 64,
            customer_id=customer.id,
            subject="Як змінити адресу?",
            raw=b"x",
            received_at=utcnow() - timedelta(days=3),
        )
        message = Message(
            source="s",
            source_id="s:1",
            content_key="1" * 64,
            customer_id=customer.id,
            subject=SUBJECT,
            body="З картки двічі списали 1200 грн.",
            header_message_id="<orig@example.com>",
            raw=ORIGINAL,
        )
        session.add_all([earlier, message])
        session.flush()
        session.add_all(
            Classification(
                message_id=message.id, axis=axis, label=label, confidence=0.87, model_version="v1"
            )
            for axis, label in [
                ("kind", "complaint"),
                ("area", "billing"),
                ("urgency", "urgent" if urgent else "normal"),
            ]
        )
        forward = Forward(
            message_id=message.id,
            department="billing",
            to_addrs=["billing@dept.test"],
            cc_addrs=["duty@dept.test"] if urgent else [],
            urgent=urgent,
            disposition="forwarded",
            reasons=[{"code": "owns_area", "area": "billing"}],
            rfc_message_id="<triage.1@shop.test>",
        )
        session.add(forward)
        session.flush()
        return forward.id


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    database.upgrade()
    return database


def forward_row(db: Database, forward_id: int) -> Forward:
    with db.session() as session:
        forward = session.get(Forward, forward_id)
        assert forward is not None
        return forward


@pytest.mark.live
def test_delivers_everything_at_a_glance_with_the_original_attached(
    tmp_path: Path, db: Database, smtp_server: SmtpServer
) -> None:
    config = smtp_config(tmp_path, smtp_server)
    forward_id = queue_forward(db)
    result = Forwarder(db, config, make_transport(config)).flush()
    assert (result.sent, result.retrying, result.failed) == (1, 0, 0)
    [received] = smtp_server.messages
    assert sorted(received.rcpt_tos) == ["billing@dept.test", "duty@dept.test"]
    mail = message_from_bytes(received.content, policy=default)
    assert mail["Message-ID"] == "<triage.1@shop.test>"
    assert mail["Subject"] == f"[URGENT] [complaint/billing] {SUBJECT}"  # spaces kept at folds
    assert mail["X-Triage-Forward"] == "billing"
    summary = mail.get_body(("plain",)).get_content()
    assert "Olena Petrenko <olena@example.com>" in summary
    assert "Kind:      complaint (87% confidence)" in summary
    assert "Earlier requests from this customer: 1" in summary and "Як змінити адресу?" in summary
    assert "З картки двічі списали 1200 грн." in summary
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_content_type() == "message/rfc822"
    original = attachment.get_content()
    assert original["Subject"] == SUBJECT
    assert original.get_content().strip().endswith("за замовлення 5531.")
    assert forward_row(db, forward_id).status == "sent"


@pytest.mark.live
def test_temporary_refusal_is_retried_with_backoff(
    tmp_path: Path, db: Database, smtp_server: SmtpServer
) -> None:
    config = smtp_config(tmp_path, smtp_server)
    forward_id = queue_forward(db, urgent=False)
    smtp_server.fail_next(451, "4.3.0 try again later")
    forwarder = Forwarder(db, config, make_transport(config))
    first = forwarder.flush()
    assert (first.sent, first.retrying) == (0, 1)
    row = forward_row(db, forward_id)
    assert row.status == "pending" and row.attempts == 1 and "451" in (row.last_error or "")
    assert row.next_attempt_at > utcnow()
    assert forwarder.flush().sent == 0  # not due yet
    second = forwarder.flush(now=row.next_attempt_at)
    assert second.sent == 1
    run = first + second  # what `run --once` reports after both flushes
    assert (run.sent, run.retrying, run.failed) == (1, 0, 0)
    assert len(smtp_server.messages) == 1
    assert forward_row(db, forward_id).status == "sent"


@pytest.mark.live
def test_permanent_refusal_is_a_dead_letter_until_retried(
    tmp_path: Path, db: Database, smtp_server: SmtpServer
) -> None:
    config = smtp_config(tmp_path, smtp_server)
    forward_id = queue_forward(db)
    smtp_server.fail_next(550, "5.1.1 no such user")
    forwarder = Forwarder(db, config, make_transport(config))
    assert forwarder.flush().failed == 1
    assert forward_row(db, forward_id).status == "failed"
    with pytest.raises(NothingNamed, match=f"there is no failed forward {forward_id + 1};"):
        requeue(db, [forward_id, forward_id + 1], all_failed=False)
    assert forward_row(db, forward_id).status == "failed"  # refused as a whole
    assert requeue(db, [forward_id], all_failed=False) == 1
    assert forwarder.flush().sent == 1
    assert forward_row(db, forward_id).status == "sent"
    with pytest.raises(NothingNamed, match=f"there is no failed forward {forward_id};"):
        requeue(db, [forward_id], all_failed=False)  # sent: nothing to retry


def test_server_down_is_retried_then_failed_after_max_attempts(
    tmp_path: Path, db: Database
) -> None:
    config = smtp_config(tmp_path, None, timeout=2)
    forward_id = queue_forward(db)
    forwarder = Forwarder(db, config, make_transport(config))
    for attempt in range(1, 4):
        now = forward_row(db, forward_id).next_attempt_at
        forwarder.flush(now=now)
        assert forward_row(db, forward_id).attempts == attempt
    row = forward_row(db, forward_id)
    assert row.status == "failed" and "Connection refused" in (row.last_error or "")


@pytest.mark.live
def test_starttls_and_auth(
    tmp_path: Path, db: Database, smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_TEST_SMTP_PASSWORD", smtp_tls_server.password)
    config = smtp_config(
        tmp_path,
        smtp_tls_server,
        tls="starttls",
        cafile=str(smtp_tls_server.cafile),
        username=smtp_tls_server.username,
        password_env="TRIAGE_TEST_SMTP_PASSWORD",
    )
    queue_forward(db)
    assert Forwarder(db, config, make_transport(config)).flush().sent == 1
    assert len(smtp_tls_server.messages) == 1


def test_directory_transport_writes_one_file_per_forward(tmp_path: Path, db: Database) -> None:
    config = make_config(tmp_path)
    queue_forward(db)
    assert Forwarder(db, config, make_transport(config)).flush().sent == 1
    [written] = list((tmp_path / "forwards").iterdir())
    assert written.name == "triage.1_shop.test.eml"
    assert message_from_bytes(written.read_bytes())["Message-ID"] == "<triage.1@shop.test>"


def test_a_file_in_place_of_the_forwards_directory_is_retried_not_raised(
    tmp_path: Path, db: Database
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "forwards").write_text("not a directory")
    forward_id = queue_forward(db)
    result = Forwarder(db, config, make_transport(config)).flush()
    assert (result.sent, result.retrying) == (0, 1)
    row = forward_row(db, forward_id)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error == (
        f"cannot use {tmp_path / 'forwards'} as the forwards directory: a file is in its place"
    )


@pytest.mark.parametrize(
    ("raw", "attached_as", "encoding"),
    [
        (b"Subject: hi\r\n\r\nplain ascii\r\n", "message/rfc822", None),
        ("Subject: x\n\nГроші не повернули\n".encode("koi8-u"), "message/rfc822", "8bit"),
        (b"Subject: x\n\nnul \x00 inside\n", "application/octet-stream", "base64"),
        (b"Subject: x\n\n" + b"y" * 1200 + b"\n", "application/octet-stream", "base64"),
        (b"Subject: x\n\nbare \r carriage return\n", "application/octet-stream", "base64"),
        (b"Subject: x\n\n" + b"y" * 998 + b"\n", "message/rfc822", None),
    ],
)
def test_the_attached_original_is_declared_as_what_it_is(
    tmp_path: Path, db: Database, raw: bytes, attached_as: str, encoding: str | None
) -> None:
    """A department's mail server may refuse 8-bit or NUL bytes that no header announces."""
    config = make_config(tmp_path)
    forward_id = queue_forward(db)
    with db.transaction() as session:
        forward = session.get(Forward, forward_id)
        assert forward is not None
        forward.message.raw = raw
    Forwarder(db, config, make_transport(config)).flush()
    [written] = list((tmp_path / "forwards").iterdir())
    mail = message_from_bytes(written.read_bytes())
    [attachment] = [part for part in mail.walk() if part.get_filename() == "original.eml"]
    assert attachment.get_content_type() == attached_as
    assert attachment["Content-Transfer-Encoding"] == encoding
    assert mail["Content-Transfer-Encoding"] == ("8bit" if encoding == "8bit" else None)
    if encoding == "base64":
        assert attachment.get_payload(decode=True) == raw


def test_customer_text_cannot_inject_headers(tmp_path: Path, db: Database) -> None:
    config = make_config(tmp_path)
    forward_id = queue_forward(db)
    with db.transaction() as session:
        forward = session.get(Forward, forward_id)
        assert forward is not None
        forward.message.subject = "Hello\r\nBcc: victim@example.org\r\n\r\nfake body" + "x" * 500
    assert Forwarder(db, config, make_transport(config)).flush().sent == 1
    [written] = list((tmp_path / "forwards").iterdir())
    mail = message_from_bytes(written.read_bytes(), policy=default)
    assert mail["Bcc"] is None
    assert "Bcc: victim@example.org" in mail["Subject"]  # harmless text, one header
    assert len(mail["Subject"]) < 260


def test_short_headers_are_written_as_the_compat32_folder_writes_them() -> None:
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + " \t=?<>@.,;:\"'()[]!#$%&*+-/\\^_`{|}~"
    stock = compat32.clone(linesep="\r\n")
    mine = WIRE_POLICY.clone(linesep="\r\n")
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(5000)]
    values += ["[complaint/billing] Refund", "a" * 76, "a" * 69 + " b", "x  y", " lead", "ü"]
    for name in ("Subject", "X-Triage-Department", "Message-ID"):
        for value in values:
            assert mine.fold_binary(name, value) == stock.fold_binary(name, value), value


@pytest.mark.parametrize(
    "text",
    [
        "Доброго дня! Прошу повернути кошти.\nДякую, Олена\n",
        "trailing spaces   \ntab\tinside and at end\t\n= signs =3D and ==\n",
        "From the start of a line\n.\n..\nno newline at the end",
        "а" * 300 + "\n" + "x" * 200 + "\n\n\n",
        "\u2028 line separator, \x0c form feed, emoji \U0001f600\n",
    ],
)
def test_text_part_round_trips_and_keeps_short_ascii_lines(text: str) -> None:
    wire = as_bytes(text_part(text))
    part = message_from_bytes(wire, policy=default)
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content().replace("\r\n", "\n") == text
    body = wire.partition(b"\r\n\r\n")[2]
    assert body.isascii() and b"\n" not in body.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
