"""Engine, sessions and schema management (Alembic migrations shipped inside the package).

A fresh database is created at head (``create_all`` + ``stamp head``); an older one is upgraded.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from triage.errors import StoreError
from triage.store.schema import Base

log = logging.getLogger(__name__)

MIGRATIONS = "triage.store:migrations"


class Database:
    """An engine plus a session factory; one per process, sessions one per job (thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def upgrade(self) -> str:
        """Bring the schema to head; returns what was done, for the admin."""
        try:
            with self.engine.begin() as connection:
                outcome = _migrate(connection)
        except DatabaseError as exc:
            raise StoreError(f"cannot open the database {self.safe_url}: {exc.orig}") from None
        self._check_writable()
        return outcome

    def _check_writable(self) -> None:
        """A read-only database (file, mount or standby server) reads fine and fails at the
        first write, in the middle of a poll: find out at start instead."""
        try:
            with self.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
        except DatabaseError as exc:
            raise StoreError(f"cannot write to the database {self.safe_url}: {exc.orig}") from None

    def is_current(self) -> bool:
        """True when the schema is at head (the worker refuses to run on an old schema)."""
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
        return current == head

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def _migrate(connection: Connection) -> str:
    current = MigrationContext.configure(connection).get_current_revision()
    has_tables = inspect(connection).has_table("messages")
    config = _alembic_config(connection)
    head = ScriptDirectory.from_config(config).get_current_head()
    if current is None and not has_tables:
        Base.metadata.create_all(connection)
        command.stamp(config, "head")
        return f"created a new database at revision {head}"
    if current == head:
        return f"database is up to date (revision {head})"
    command.upgrade(config, "head")
    return f"upgraded database from {current} to {head}"


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"database.url {url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_file(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(parsed, pool_pre_ping=True)
    event.listen(engine, "connect", _postgres_settings)
    return engine


def _private_file(path: Path) -> None:
    """The history holds customers' mail: create it readable by the worker only, and refuse
    to open one that everybody can read."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            return
    except (FileExistsError, NotADirectoryError):
        raise StoreError(
            f"cannot create the database file {path}: a file stands in its path"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot create the database file {path}: {exc.strerror}") from None
    if path.stat().st_mode & stat.S_IROTH:
        raise StoreError(f"the database file {path} is readable by everyone; run chmod o-r {path}")


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """WAL lets the outbox job read while a poll writes; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _postgres_settings(dbapi_connection: Any, _record: object) -> None:
    """Compress the stored mail with lz4: the default (pglz) cost PostgreSQL more CPU than the
    rest of storing a message. A server without lz4 (before 14, or built without) keeps pglz."""
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET default_toast_compression = 'lz4'")
        dbapi_connection.commit()
    except psycopg.Error as exc:
        dbapi_connection.rollback()
        log.debug("lz4 compression unavailable, pglz kept: %s", exc)


def _alembic_config(connection: object) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config
