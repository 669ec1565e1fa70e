"""The IMAP connector against a real Dovecot on loopback."""

from __future__ import annotations

import logging

import pytest

from connectors.base import ConnectorAuthError, ConnectorUnavailable
from connectors.imap import ImapConnector
from tests.helpers import make_email
from tests.servers.dovecot import DovecotServer

pytestmark = pytest.mark.live


def connector(dovecot: DovecotServer, user: str, **options: object) -> ImapConnector:
    settings: dict = {
        "host": dovecot.host,
        "port": dovecot.port,
        "username": user,
        "password": lambda: dovecot.password,
        "tls": "starttls",
        "cafile": str(dovecot.cafile),
        "timeout": 5,
        "batch_size": 2,
    }
    settings.update(options)
    return ImapConnector("support", **settings)  # type: ignore[arg-type]


def test_reads_new_messages_in_batches_and_resumes(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email(f"request {i}", f"text {i}") for i in range(5)])
    items = list(connector(dovecot, user).fetch(None))
    assert [item.raw.count(f"request {i}".encode()) for i, (item, _) in enumerate(items)] == [1] * 5
    uidvalidity, last_uid = items[-1][1]["uidvalidity"], items[-1][1]["last_uid"]
    assert items[0][0].source_id == f"imap:{user}/INBOX:{uidvalidity}:1"
    assert last_uid == 5
    assert list(connector(dovecot, user).fetch(items[-1][1])) == []
    dovecot.append(user, [make_email("request 5", "later")])
    later = list(connector(dovecot, user).fetch(items[-1][1]))
    assert len(later) == 1 and later[0][1]["last_uid"] == 6


def test_mail_stays_out_of_the_protocol_trace(
    dovecot: DovecotServer, caplog: pytest.LogCaptureFixture
) -> None:
    """imaplib's trace formats every response, whole messages too: it is off (cost, privacy)."""
    user = dovecot.new_user()
    dovecot.append(user, [make_email("my card number is 4111", "private matter")])
    caplog.set_level(logging.DEBUG, logger="imapclient")
    items = list(connector(dovecot, user).fetch(None))
    assert b"4111" in items[0][0].raw
    assert caplog.records  # imapclient logs its own steps, it is not silenced altogether
    assert not [r for r in caplog.records if "4111" in r.getMessage()]


def test_never_marks_mail_seen(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email("hello", "text")])
    list(connector(dovecot, user).fetch(None))
    client = dovecot.client(user)
    client.select_folder("INBOX", readonly=True)
    assert client.search(["UNSEEN"]) == [1]
    client.logout()


def test_uidvalidity_change_reads_the_folder_again(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email("a", "1"), make_email("b", "2")])
    checkpoint = list(connector(dovecot, user).fetch(None))[-1][1]
    dovecot.set_uidvalidity(user, checkpoint["uidvalidity"] + 1000)
    again = list(connector(dovecot, user).fetch(checkpoint))
    assert len(again) == 2
    assert again[-1][1]["uidvalidity"] == checkpoint["uidvalidity"] + 1000


def test_oversized_message_is_fetched_as_headers(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email("big", "y" * 4000), make_email("small", "z")])
    items = [item for item, _ in connector(dovecot, user, max_message_bytes=2048).fetch(None)]
    assert [item.truncated for item in items] == [True, False]
    assert b"Subject: big" in items[0].raw and b"yyyy" not in items[0].raw
    assert items[0].size > 4000


def test_implicit_tls_verifies_the_certificate(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    dovecot.append(user, [make_email("tls", "ok")])
    assert len(list(connector(dovecot, user, tls="ssl", port=dovecot.ssl_port).fetch(None))) == 1
    untrusted = connector(dovecot, user, tls="ssl", port=dovecot.ssl_port, cafile=None)
    with pytest.raises(ConnectorAuthError, match="certificate"):
        list(untrusted.fetch(None))


def test_refused_login_and_missing_folder_are_permanent(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    with pytest.raises(ConnectorAuthError, match="refused the login"):
        list(connector(dovecot, user, password=lambda: "wrong").fetch(None))
    with pytest.raises(ConnectorAuthError, match="cannot open folder 'Nope'"):
        list(connector(dovecot, user, folder="Nope").fetch(None))


def test_server_down_is_transient(dovecot: DovecotServer) -> None:
    user = dovecot.new_user()
    with dovecot.down(), pytest.raises(ConnectorUnavailable, match="IMAP server"):
        list(connector(dovecot, user).fetch(None))
