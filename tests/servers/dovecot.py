"""A private Dovecot IMAP server on loopback, one per test session (see /work/shared/TESTING.md).

The instance never touches the system Dovecot: it has its own config, base_dir, state_dir and log
under a work directory, listens on two free ports of 127.0.0.1 (plain IMAP with STARTTLS, and
implicit TLS), and keeps the mail on /dev/shm when it exists (6-10x faster than ext4 /tmp).
A static passdb accepts one password for every user name, so each test takes a fresh user from
``new_user()`` and is isolated without any setup. The hierarchy separator is ``/``.
A failed login is answered within 0.5 s: ``auth_failure_delay = 0`` and no anvil penalty, but
Dovecot 2.3 still flushes failures on a 500 ms timer.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from imapclient import IMAPClient

from tests.servers.certs import CertPair, make_cert

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
APPEND_CHUNK = 500  # messages per MULTIAPPEND command: measured 0.4 s for 10,000 small mails
_STOP_GRACE = 1.5  # a login caught mid-handshake can stall a clean shutdown for seconds
_APPENDUID = re.compile(rb"\[APPENDUID \d+ ([0-9:,]+)\]")

_CONFIG = """\
# Private test instance written by tests/servers/dovecot.py; do not edit.
protocols = imap
listen = {host}
instance_name = {instance}
base_dir = {workdir}/run
state_dir = {workdir}/state
log_path = {workdir}/dovecot.log
{internal_users}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 1
first_valid_gid = 1

# "/" as most providers use (Dovecot's maildir default is "."), so tests can say "Support/New".
namespace inbox {{
  inbox = yes
  separator = /
}}

protocol imap {{
  mail_max_userip_connections = 200
}}

# Any user name logs in with the one password (or the bearer token for XOAUTH2/OAUTHBEARER).
passdb {{
  driver = static
  args = password={password}
  mechanisms = plain login
}}
passdb {{
  driver = static
  args = password={oauth_token}
  mechanisms = xoauth2 oauthbearer
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail_root}/%u allow_all_users=yes
}}

service imap-login {{
  {chroot}
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {ssl_port}
    ssl = yes
  }}
}}

# Without this a failed login delays the next one from the same IP by ~4 s.
service anvil {{
  {chroot}
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


class DovecotError(RuntimeError):
    """The private Dovecot failed to start, or a doveadm/IMAP helper failed."""


class DovecotMissing(DovecotError):
    """The ``dovecot`` binary is not installed (or not on PATH)."""


def dovecot_binary() -> str | None:
    """Return the path of the ``dovecot`` binary, or None when it is not on PATH."""
    return shutil.which("dovecot")


def free_port(host: str = HOST) -> int:
    """Return a TCP port on *host* that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _mail_owner() -> tuple[int, int]:
    """Uid and gid for mail processes: Dovecot refuses uid 0, so root runs them as nobody."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid
    return os.getuid(), os.getgid()


def _internal_users() -> tuple[str, str]:
    """Config lines that let a non-root user run Dovecot (empty strings under root)."""
    if os.geteuid() == 0:
        return "", ""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    lines = (
        f"default_internal_user = {user}\n"
        f"default_internal_group = {group}\n"
        f"default_login_user = {user}"
    )
    return lines, "chroot ="


def _chunks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _parse_uid_set(text: bytes) -> list[int]:
    """Expand an IMAP UID set such as ``1:3,7`` into ``[1, 2, 3, 7]``."""
    uids: list[int] = []
    for part in text.split(b","):
        first, _, last = part.partition(b":")
        low, high = sorted((int(first), int(last or first)))
        uids.extend(range(low, high + 1))
    return uids


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _exited(pid: int) -> bool:
    """True once *pid* has exited, without reaping it (so its pid cannot be reused yet)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


class DovecotServer:
    """A private Dovecot instance: ``start()``, use, ``stop()``; ``close()`` removes the mail.

    Attributes:
        host: always ``127.0.0.1``.
        port: plain IMAP (STARTTLS offered); stays the same across stop()/start().
        ssl_port: IMAP over implicit TLS.
        cafile: PEM file a client verifies the server against (names localhost, 127.0.0.1).
        password: the password every user logs in with.
        oauth_token: the bearer token every user logs in with over XOAUTH2/OAUTHBEARER.
        workdir: config, runtime sockets, state and ``dovecot.log``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cert: CertPair | None = None,
        password: str = "test-pass",
        oauth_token: str = "test-token",
        binary: str | None = None,
    ) -> None:
        self.host = HOST
        self.workdir = workdir
        self.password = password
        self.oauth_token = oauth_token
        self.port = free_port()
        self.ssl_port = free_port()
        self._binary = binary
        self._cert = cert
        self._mail_root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def cafile(self) -> Path:
        if self._cert is None:
            raise DovecotError("the server has not been started yet")
        return self._cert.cafile

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (a no-op when it runs) and wait for the greeting on both ports.

        Raises:
            DovecotMissing: no ``dovecot`` binary.
            DovecotError: it did not greet within *timeout* seconds.
        """
        if self.running:
            return
        binary = self._binary or dovecot_binary()
        if binary is None:
            raise DovecotMissing("dovecot not found on PATH (apt-get install dovecot-imapd)")
        if not self.config_path.exists():
            self._configure()
        started = time.monotonic()
        with open(self.workdir / "dovecot.out", "ab") as out:
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() can kill it whole
            )
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "dovecot up on %s:%d/%d in %.0f ms",
            self.host,
            self.port,
            self.ssl_port,
            (time.monotonic() - started) * 1000,
        )

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL of its process group after 1.5 s."""
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        while not _exited(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        # The master is at worst a zombie here, so its pid (= the group id) is still ours.
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        log.info("dovecot on port %d stopped", self.port)

    def close(self) -> None:
        """Stop the server and remove the mail it stored."""
        self.stop()
        if self._mail_root is not None:
            shutil.rmtree(self._mail_root, ignore_errors=True)
            self._mail_root = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server for the duration of the block, and start it again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._cert is None:
            self._cert = make_cert(self.workdir / "tls")
        uid, gid = _mail_owner()
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
        self._mail_root = Path(tempfile.mkdtemp(prefix="triage-dovecot-mail-", dir=base))
        os.chown(self._mail_root, uid, gid)
        internal_users, chroot = _internal_users()
        self.config_path.write_text(
            _CONFIG.format(
                host=self.host,
                instance=f"triage-test-{uuid.uuid4().hex[:8]}",
                workdir=self.workdir,
                internal_users=internal_users,
                chroot=chroot,
                cert=self._cert.cert,
                key=self._cert.key,
                password=self.password,
                oauth_token=self.oauth_token,
                uid=uid,
                gid=gid,
                mail_root=self._mail_root,
                port=self.port,
                ssl_port=self.ssl_port,
            )
        )

    def _wait_ready(self, deadline: float) -> None:
        for port, tls in ((self.port, False), (self.ssl_port, True)):
            while not self._greets(port, tls):
                if self._process is None or self._process.poll() is not None:
                    raise DovecotError(f"dovecot exited at start:\n{self._log_tail()}")
                if time.monotonic() > deadline:
                    raise DovecotError(f"no IMAP greeting on port {port}:\n{self._log_tail()}")
                time.sleep(0.02)

    def _greets(self, port: int, tls: bool) -> bool:
        """True when *port* answers with ``* OK`` (over verified TLS when *tls*)."""
        try:
            with socket.create_connection((self.host, port), timeout=2) as raw:
                if not tls:
                    return raw.recv(1024).startswith(b"* OK")
                context = ssl.create_default_context(cafile=str(self.cafile))
                with context.wrap_socket(raw, server_hostname="localhost") as sock:
                    return sock.recv(1024).startswith(b"* OK")
        except OSError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.workdir / "dovecot.out", self.log_path):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # -- helpers for tests -------------------------------------------------------------------

    def new_user(self) -> str:
        """Return a user name no other test uses (any name logs in with ``password``)."""
        return f"user-{uuid.uuid4().hex[:16]}"

    def ssl_context(self) -> ssl.SSLContext:
        """Return a client TLS context that verifies this server's certificate."""
        return ssl.create_default_context(cafile=str(self.cafile))

    def client(self, user: str, *, tls: bool = False, timeout: float = 10.0) -> IMAPClient:
        """Return an IMAPClient logged in as *user*, over the plain port (or implicit TLS).

        The caller logs it out (``with dovecot.client(user) as client: ...``).
        """
        if tls:
            client = IMAPClient(
                self.host,
                port=self.ssl_port,
                ssl=True,
                ssl_context=self.ssl_context(),
                timeout=timeout,
            )
        else:
            client = IMAPClient(self.host, port=self.port, ssl=False, timeout=timeout)
        try:
            client.login(user, self.password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def append(self, user: str, messages: Iterable[bytes], folder: str = "INBOX") -> list[int]:
        """Store *messages* in *folder* (created if missing) with MULTIAPPEND, 500 at a time.

        Returns:
            The UIDs the server assigned, in order (empty if it does not report APPENDUID).
        """
        uids: list[int] = []
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for chunk in _chunks(messages, APPEND_CHUNK):
                typ, data = client.multiappend(folder, chunk)
                if typ != "OK":
                    raise DovecotError(f"APPEND to {folder} failed: {typ} {data!r}")
                match = _APPENDUID.search(data[0] if data else b"")
                if match:
                    uids.extend(_parse_uid_set(match.group(1)))
        log.debug("appended %d messages to %s/%s", len(uids), user, folder)
        return uids

    def create_folder(self, user: str, folder: str) -> None:
        with self.client(user) as client:
            client.create_folder(folder)

    def delete_folder(self, user: str, folder: str) -> None:
        with self.client(user) as client:
            client.delete_folder(folder)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        with self.client(user) as client:
            client.rename_folder(old, new)

    def set_uidvalidity(self, user: str, value: int, folder: str = "INBOX") -> None:
        """Force a new UIDVALIDITY on *folder*; a client that has it selected gets dropped."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <our config> ARGS...`` against this instance and return stdout.

        Raises:
            DovecotError: doveadm is missing or exited non-zero.
        """
        binary = shutil.which("doveadm")
        if binary is None:
            raise DovecotMissing("doveadm not found on PATH (apt-get install dovecot-core)")
        command = [binary, "-c", str(self.config_path), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout
