"""Handing a composed mail to the next hop: an SMTP server, or a folder of ``.eml`` files.

4xx replies and network errors are temporary (``DeliveryError(permanent=False)``), 5xx replies
permanent; the SMTP connection is opened lazily and dropped after an error.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from email.message import Message as Email
from pathlib import Path
from typing import Protocol

from triage.config import Config, Smtp, resolve_secret
from triage.deliver._wire import as_bytes

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A forward could not be delivered; ``permanent`` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    """Hands a composed message to the next hop."""

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class DirectoryTransport:
    """Writes each forward as ``<dir>/<message-id>.eml`` (temp file, fsync, rename): the demo's
    outbox, and a drop folder for another mail system to pick up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(message["Message-ID"]).strip("<>")) + ".eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = "a file is in its place" if self.directory.is_file() else exc.strerror
            raise DeliveryError(
                f"cannot use {self.directory} as the forwards directory: {problem}", permanent=False
            ) from None
        temp: str | None = None
        try:
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(as_bytes(message))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.directory / name)
        except OSError as exc:
            if temp:
                Path(temp).unlink(missing_ok=True)
            raise DeliveryError(
                f"cannot write {self.directory / name}: {exc.strerror or exc}", permanent=False
            ) from None

    def close(self) -> None:
        """Files are closed as they are written."""


class SmtpTransport:
    """SMTP with STARTTLS or implicit TLS and AUTH; connects lazily, reconnects after an error."""

    def __init__(self, settings: Smtp) -> None:
        self.settings = settings
        self._connection: smtplib.SMTP | None = None

    def send(self, message: Email, sender: str, recipients: Sequence[str]) -> None:
        try:
            connection = self._connect()
            data = as_bytes(message)
            # The attached original may be 8-bit (KOI8-U, windows-1251): say so when we may.
            eight_bit = connection.has_extn("8bitmime") and not data.isascii()
            options = ["BODY=8BITMIME"] if eight_bit else []
            refused = connection.sendmail(sender, list(recipients), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"{self._where} refused every recipient: {_replies(exc.recipients)}",
                permanent=all(code >= 500 for code in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise DeliveryError(
                f"{self._where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                permanent=exc.smtp_code >= 500 and exc.smtp_code != 535,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self._reset()
            raise DeliveryError(f"{self._where} failed: {exc}", permanent=False) from None
        if refused:
            log.warning("%s accepted the forward but refused %s", self._where, _replies(refused))

    @property
    def _where(self) -> str:
        return f"SMTP server {self.settings.host}:{self.settings.port}"

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        s = self.settings
        context = ssl.create_default_context(cafile=s.cafile) if s.tls != "plain" else None
        if s.tls == "ssl":
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout, context=context
            )
        else:
            connection = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            if s.tls == "starttls":
                connection.starttls(context=context)
        if s.username:
            connection.login(s.username, resolve_secret(s, "smtp"))
        self._connection = connection
        return connection

    def _reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                log.debug("closing the SMTP connection failed", exc_info=True)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _replies(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in refused.items())


def make_transport(config: Config) -> Transport:
    """The transport the config names."""
    if config.forwarding.transport == "smtp" and config.smtp is not None:
        return SmtpTransport(config.smtp)
    return DirectoryTransport(config.forwarding.directory)
