"""Self-tests of the real-server fixtures: Dovecot, aiosmtpd and PostgreSQL, and the skip policy."""

from __future__ import annotations

import smtplib
import ssl
import time
from email.message import EmailMessage

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, LoginError
from sqlalchemy import create_engine, inspect, text

from tests.servers.dovecot import DovecotServer
from tests.servers.fixtures import SMTP_PASSWORD, SMTP_USERNAME, missing, require
from tests.servers.postgres import drop_database, drop_schema, make_database, make_schema
from tests.servers.smtp import SmtpServer


def _mail(number: int) -> bytes:
    message = EmailMessage()
    message["From"] = "customer@example.com"
    message["To"] = "support@example.com"
    message["Subject"] = f"Request {number}"
    message.set_content(f"Body of request {number}\n")
    return message.as_bytes().replace(b"\n", b"\r\n")


# -- missing-server policy -------------------------------------------------------------------


def test_missing_server_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        missing("no server")


def test_missing_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        require(ConnectionRefusedError("refused"), "no server")


def test_require_passes_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require("/usr/sbin/dovecot", "dovecot missing")


# -- Dovecot --------------------------------------------------------------------------------


@pytest.mark.live
def test_dovecot_plain_login_offers_starttls(dovecot: DovecotServer) -> None:
    client = IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=5)
    try:
        assert client.has_capability("STARTTLS")
        client.starttls(ssl.create_default_context(cafile=str(dovecot.cafile)))
        client.login(dovecot.new_user(), dovecot.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        client.logout()


@pytest.mark.live
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_dovecot_tls_verifies_against_cafile(dovecot: DovecotServer, host: str) -> None:
    context = ssl.create_default_context(cafile=str(dovecot.cafile))
    with IMAPClient(host, port=dovecot.ssl_port, ssl_context=context, timeout=5) as client:
        client.login(dovecot.new_user(), dovecot.password)
        assert client.noop()


@pytest.mark.live
def test_dovecot_tls_rejected_without_cafile(dovecot: DovecotServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(dovecot.host, port=dovecot.ssl_port, ssl_context=ssl.create_default_context())


@pytest.mark.live
def test_dovecot_failed_login_does_not_slow_the_next(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    started = time.monotonic()
    client = IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=5)
    with pytest.raises(LoginError):
        client.login(user, "wrong")
    client.shutdown()
    with dovecot.client(user) as client:
        assert client.noop()
    # Dovecot's defaults would take 2 s to refuse and then delay the next login by 2 s more.
    assert time.monotonic() - started < 1.5


@pytest.mark.live
def test_dovecot_append_and_fetch(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    messages = [_mail(number) for number in range(3)]

    uids = dovecot.append(user, messages)

    assert len(uids) == 3
    with dovecot.client(user, tls=True) as client:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
    assert [fetched[uid][b"BODY[]"] for uid in uids] == messages
    assert not any(b"\\Seen" in fetched[uid][b"FLAGS"] for uid in uids)  # PEEK kept them unseen


@pytest.mark.live
def test_dovecot_users_are_isolated(dovecot: DovecotServer) -> None:
    first, second = dovecot.new_user(), dovecot.new_user()
    dovecot.append(first, [_mail(1)])
    with dovecot.client(second) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


@pytest.mark.live
def test_dovecot_folders(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    assert dovecot.append(user, [_mail(1), _mail(2)], folder="Support/New") == [1, 2]
    dovecot.create_folder(user, "Archive")
    dovecot.rename_folder(user, "Archive", "Old")
    dovecot.delete_folder(user, "Support/New")
    with dovecot.client(user) as client:
        names = {name for _flags, _delimiter, name in client.list_folders()}
    assert {"INBOX", "Old"} <= names
    assert "Archive" not in names
    assert "Support/New" not in names


@pytest.mark.live
def test_dovecot_set_uidvalidity(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [_mail(1)])
    with dovecot.client(user) as watcher:
        before = watcher.select_folder("INBOX")[b"UIDVALIDITY"]
        dovecot.set_uidvalidity(user, before + 1000)
        with pytest.raises(IMAPClientAbortError):  # Dovecot drops a client that has it selected
            watcher.noop()
    with dovecot.client(user) as client:
        assert client.select_folder("INBOX")[b"UIDVALIDITY"] == before + 1000


@pytest.mark.live
def test_dovecot_stop_and_start(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [_mail(1)])
    port = dovecot.port
    with dovecot.down():
        assert not dovecot.running
        with pytest.raises(ConnectionRefusedError):
            IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=2)
    assert dovecot.running
    assert dovecot.port == port
    with dovecot.client(user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1


# -- SMTP -----------------------------------------------------------------------------------


@pytest.mark.live
def test_smtp_receives(smtp_server: SmtpServer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.sendmail("triage@example.com", ["billing@example.com", "ops@example.com"], _mail(1))

    [received] = smtp_server.messages
    assert received.mail_from == "triage@example.com"
    assert received.rcpt_tos == ["billing@example.com", "ops@example.com"]
    assert b"Subject: Request 1" in received.content


@pytest.mark.live
def test_smtp_temporary_failure_then_success(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(451, "4.3.0 Try again later")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("triage@example.com", ["billing@example.com"], _mail(1))
        assert refused.value.recipients["billing@example.com"][0] == 451
        assert smtp_server.messages == []
        client.sendmail("triage@example.com", ["billing@example.com"], _mail(1))
    assert len(smtp_server.wait_for(1)) == 1


@pytest.mark.live
def test_smtp_permanent_failure_at_data(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(550, "5.7.1 Rejected", times=2, stage="DATA")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPDataError) as error:
                client.sendmail("triage@example.com", ["billing@example.com"], _mail(1))
            assert error.value.smtp_code == 550
        client.sendmail("triage@example.com", ["billing@example.com"], _mail(2))
    assert [m.content.count(b"Request 2") for m in smtp_server.messages] == [1]


@pytest.mark.live
def test_smtp_tls_requires_starttls_before_auth(smtp_tls_server: SmtpServer) -> None:
    assert smtp_tls_server.cafile is not None
    context = ssl.create_default_context(cafile=str(smtp_tls_server.cafile))
    with smtplib.SMTP(smtp_tls_server.host, smtp_tls_server.port, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPException):
            client.login(SMTP_USERNAME, SMTP_PASSWORD)
        client.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(SMTP_USERNAME, "wrong")
        with pytest.raises(smtplib.SMTPSenderRefused):  # AUTH is required to send
            client.sendmail("triage@example.com", ["billing@example.com"], _mail(1))
        client.login(smtp_tls_server.username or "", smtp_tls_server.password or "")
        client.sendmail("triage@example.com", ["billing@example.com"], _mail(1))
    assert len(smtp_tls_server.messages) == 1


# -- PostgreSQL and SQLite ------------------------------------------------------------------


def test_db_url_is_usable(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
            connection.execute(text("INSERT INTO item (id, name) VALUES (1, 'one')"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM item")).scalar_one() == "one"
        assert inspect(engine).get_table_names() == ["item"]
    finally:
        engine.dispose()


@pytest.mark.live
def test_postgres_schemas_are_isolated(postgres_url: str, postgres_database: str) -> None:
    other_url = make_schema(postgres_database)
    engine, other = create_engine(postgres_url), create_engine(other_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
        assert inspect(other).get_table_names() == []
        with other.begin() as connection:  # the same name again, in its own schema
            connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
    finally:
        engine.dispose()
        other.dispose()
        drop_schema(other_url)


@pytest.mark.live
def test_make_and_drop_database(postgres_database: str) -> None:
    url = make_database()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            name = connection.execute(text("SELECT current_database()")).scalar_one()
        assert url.endswith(f"/{name}")
        leaked = engine.connect()  # dropping must not wait for connections left open
        drop_database(url)
        leaked.invalidate()
    finally:
        engine.dispose()
    admin = create_engine(postgres_database)
    try:
        with admin.connect() as connection:
            query = text("SELECT count(*) FROM pg_database WHERE datname = :name")
            assert connection.execute(query, {"name": name}).scalar_one() == 0
    finally:
        admin.dispose()
