"""XOAUTH2 logins against Dovecot with tokens from a local OAuth2 token endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest

from tests.fakes.oauth_token import FakeTokenEndpoint
from tests.helpers import make_config, make_email
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpServer
from triage.worker.scheduler import Worker

pytestmark = pytest.mark.live


@pytest.fixture
def endpoint(dovecot: DovecotServer) -> Iterator[FakeTokenEndpoint]:
    with FakeTokenEndpoint("refresh-123", dovecot.oauth_token) as server:
        yield server  # type: ignore[misc]


def oauth_worker(
    tmp_path: Path, dovecot: DovecotServer, user: str, endpoint: FakeTokenEndpoint, smtp: SmtpServer
) -> Worker:
    source = {
        "name": "m365", "type": "imap", "host": dovecot.host, "port": dovecot.port, "tls": "plain",
        "username": user,
        "oauth2": {
            "token_url": f"{endpoint.url}/oauth2/v2.0/token", "client_id": "triage-app",
            "refresh_token_env": "TRIAGE_TEST_REFRESH_TOKEN",
            "scope": "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access",
        },
    }  # fmt: skip
    worker = Worker(
        make_config(
            tmp_path,
            sources=[source],
            smtp={"host": "127.0.0.1", "port": smtp.port, "tls": "plain"},
            forwarding={"transport": "smtp", "from_address": "triage@shop.test"},
            alerts={"email": "admin@shop.test", "after_failures": 5},
        )
    )
    worker.db.upgrade()
    return worker


def test_xoauth2_login_with_a_refreshed_token(
    tmp_path: Path, dovecot: DovecotServer, endpoint: FakeTokenEndpoint, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRIAGE_TEST_REFRESH_TOKEN", "refresh-123")
    user = dovecot.new_user()
    dovecot.append(user, [make_email("hello", "via oauth")])
    worker = oauth_worker(tmp_path, dovecot, user, endpoint, smtp_server)
    assert worker.poll("m365").count("stored") == 1
    assert worker.poll("m365").error is None
    assert len(endpoint.requests) == 1  # the token is cached until shortly before expiry
    form = endpoint.requests[0]
    assert form.arg("client_id") == "triage-app" and form.arg("refresh_token") == "refresh-123"
    worker.db.dispose()


def test_token_near_expiry_is_refreshed(
    tmp_path: Path, dovecot: DovecotServer, endpoint: FakeTokenEndpoint, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRIAGE_TEST_REFRESH_TOKEN", "refresh-123")
    endpoint.expires_in = 300  # within the refresh margin: every login refreshes first
    worker = oauth_worker(tmp_path, dovecot, dovecot.new_user(), endpoint, smtp_server)
    worker.poll("m365")
    worker.poll("m365")
    assert len(endpoint.requests) == 2
    worker.db.dispose()


def test_failed_refresh_alerts_the_admin_at_once(
    tmp_path: Path, dovecot: DovecotServer, endpoint: FakeTokenEndpoint, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRIAGE_TEST_REFRESH_TOKEN", "revoked")
    worker = oauth_worker(tmp_path, dovecot, dovecot.new_user(), endpoint, smtp_server)
    result = worker.poll("m365")
    assert result.error and "token revoked" in result.error and "new refresh token" in result.error
    subjects = [
        str(message_from_bytes(m.content, policy=default)["Subject"]) for m in smtp_server.messages
    ]
    assert sum("m365 is failing" in s for s in subjects) == 1  # at once, not after 5 failures
    worker.db.dispose()
