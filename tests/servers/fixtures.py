"""Pytest plugin with the real-server fixtures; ``tests/conftest.py`` loads it via pytest_plugins.

Fixtures:
    tls_cert (session): a self-signed CertPair for localhost/127.0.0.1, shared by the servers.
    dovecot (session): a running DovecotServer; take a fresh ``dovecot.new_user()`` per test.
    smtp_server: a plain SmtpServer.
    smtp_tls_server: an SmtpServer requiring STARTTLS, then AUTH as triage / smtp-secret.
    postgres_database (session): a throw-away database for this test session.
    postgres_url: a fresh schema in it, as a SQLAlchemy URL.
    db_url: parametrized ``sqlite`` (a file in tmp_path) and ``postgresql`` (``postgres_url``).

A server that is not installed or not running skips the test locally and fails it when the CI
environment variable is set (non-empty), so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.servers.certs import CertError, CertPair, make_cert
from tests.servers.dovecot import DovecotServer, dovecot_binary
from tests.servers.postgres import (
    PostgresUnavailable,
    check_server,
    drop_database,
    drop_schema,
    make_database,
    make_schema,
)
from tests.servers.smtp import SmtpServer

SMTP_USERNAME = "triage"
SMTP_PASSWORD = "smtp-secret"


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything non-empty."""
    return bool(os.environ.get("CI"))


def missing(reason: str) -> NoReturn:
    """Skip the test for *reason*, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so a missing server fails instead of skipping)")
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Call ``missing()`` unless *condition* is truthy and not an exception.

    Pass an exception to add its message to *reason*: ``require(exc, "no PostgreSQL")``.
    """
    if isinstance(condition, BaseException):
        missing(f"{reason}: {condition}")
    if not condition:
        missing(reason)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    try:
        return make_cert(tmp_path_factory.mktemp("tls"))
    except CertError as exc:
        missing(f"cannot make a TLS certificate: {exc}")


@pytest.fixture(scope="session")
def dovecot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DovecotServer]:
    require(
        dovecot_binary(), "dovecot not found on PATH (apt-get install dovecot-imapd; in /usr/sbin)"
    )
    cert: CertPair = request.getfixturevalue("tls_cert")
    server = DovecotServer(tmp_path_factory.mktemp("dovecot"), cert=cert)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def smtp_tls_server(tls_cert: CertPair) -> Iterator[SmtpServer]:
    with SmtpServer(cert=tls_cert, username=SMTP_USERNAME, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    try:
        check_server()
    except PostgresUnavailable as exc:
        missing(str(exc))
    url = make_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    url = make_schema(postgres_database)
    try:
        yield url
    finally:
        drop_schema(url)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.live)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/triage.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
