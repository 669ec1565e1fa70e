"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 that keeps what it accepts.

Every accepted message is stored as ``Received(mail_from, rcpt_tos, content, client_port)`` in
``server.messages``. ``fail_next()`` makes the next transactions get a chosen reply at RCPT or
DATA, as GNU Mailman's ``testing/mta.py`` does with ``_next_error``, so a test can drive a
forwarder through 4xx (retry) and 5xx (dead letter) paths against a real SMTP conversation.
With a certificate the server requires STARTTLS, and with credentials it requires AUTH (offered
only after STARTTLS).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers.certs import CertPair
from tests.servers.dovecot import free_port

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
Stage = Literal["RCPT", "DATA"]
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


class Received(NamedTuple):
    """One accepted message: envelope sender, envelope recipients, raw bytes, and the port the
    client sent it from (which process sent it, when several do)."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    client_port: int = 0


@dataclass(frozen=True, slots=True)
class _Fault:
    code: int
    text: str
    stage: Stage

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"


class _Handler:
    """aiosmtpd hooks; they run on the controller's event-loop thread."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server
        # The fault of each transaction, decided at MAIL FROM; weak so finished envelopes go.
        self._faults: weakref.WeakKeyDictionary[Envelope, _Fault] = weakref.WeakKeyDictionary()

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        fault = self._server._take_fault()
        if fault is not None:
            self._faults[envelope] = fault
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self._faults.get(envelope)
        if fault is not None and fault.stage == "RCPT":
            log.debug("injected %r for RCPT %s", fault.reply, address)
            return fault.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._faults.pop(envelope, None)
        if fault is not None and fault.stage == "DATA":
            log.debug("injected %r for DATA", fault.reply)
            return fault.reply
        content = envelope.original_content or b""
        port = session.peer[1] if isinstance(session.peer, tuple) else 0
        self._server._store(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), content, port)
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on a free port of 127.0.0.1; use as a context manager or start()/stop().

    Attributes:
        host: ``127.0.0.1``.
        port: the port it listens on.
        cafile: the certificate to verify against (None without TLS).
        username, password: the one accepted login (None without AUTH).
    """

    def __init__(
        self,
        *,
        cert: CertPair | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is not None and cert is None:
            raise ValueError("AUTH needs TLS: give a cert as well")
        self.host = HOST
        self.port = 0
        self.cafile = cert.cafile if cert is not None else None
        self.username = username
        self.password = password
        self._cert = cert
        self._changed = threading.Condition()  # guards _messages and _faults
        self._messages: list[Received] = []
        self._faults: deque[_Fault] = deque()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[Received]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._changed:
            return list(self._messages)

    def fail_next(self, code: int, text: str, times: int = 1, stage: Stage = "RCPT") -> None:
        """Answer the next *times* transactions with ``code text`` at *stage*.

        At ``RCPT`` every recipient of the transaction is refused; at ``DATA`` the message is
        refused after its content was sent. Transactions are counted at MAIL FROM.
        """
        if stage not in ("RCPT", "DATA"):
            raise ValueError(f"stage must be RCPT or DATA, not {stage!r}")
        with self._changed:
            self._faults.extend([_Fault(code, text, stage)] * times)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least *count* messages arrived and return them.

        Raises:
            TimeoutError: fewer arrived within *timeout* seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"{len(self._messages)} of {count} messages within {timeout}s")
            return list(self._messages)

    def start(self) -> None:
        """Start listening; a no-op when already started."""
        if self._controller is not None:
            return
        started = time.monotonic()
        self._controller = self._bind()
        self.port = self._controller.port
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("smtp up on %s:%d in %.0f ms", self.host, self.port, elapsed_ms)

    def _bind(self) -> Controller:
        """Start a Controller on a free port (port=0 does not work with aiosmtpd)."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port()
            controller = Controller(
                _Handler(self), hostname=self.host, port=port, **self._smtp_options()
            )
            try:
                controller.start()
            except OSError:
                controller.loop.close()
                if attempt == _START_ATTEMPTS:
                    raise
                log.debug("port %d was taken meanwhile, trying another", port)
            else:
                return controller
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _smtp_options(self) -> dict[str, Any]:
        if self._cert is None:
            return {}
        options: dict[str, Any] = {
            "tls_context": self._cert.server_context(),
            "require_starttls": True,
        }
        if self.username is not None:
            options.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=True,
            )
        return options

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        # handled=False: with the default True a failed login leaves the client hanging.
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.username is not None
            and self.password is not None
            and hmac.compare_digest(auth_data.login, self.username.encode())
            and hmac.compare_digest(auth_data.password, self.password.encode())
        )
        return AuthResult(success=ok, handled=False)

    def _take_fault(self) -> _Fault | None:
        with self._changed:
            return self._faults.popleft() if self._faults else None

    def _store(self, received: Received) -> None:
        with self._changed:
            self._messages.append(received)
            self._changed.notify_all()
