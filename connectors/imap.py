"""IMAP connector (imapclient): reads one folder of one account, new UIDs only, never marking mail.

The checkpoint is ``{uidvalidity, last_uid}``. When the server reports another UIDVALIDITY the
folder is read again from the start: ``source_id`` carries the UIDVALIDITY, so every id is new, and
the store's content key (account, sha256 of the raw bytes) absorbs the re-read.
"""

from __future__ import annotations

import imaplib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from connectors.base import (
    Checkpoint,
    ConnectorAuthError,
    ConnectorError,
    ConnectorUnavailable,
    RawItem,
)

log = logging.getLogger(__name__)

SIZE_CHUNK = 5000
PREFIX_BYTES = 1 << 20
"""Each FETCH asks for the first MiB of every message with its size: nearly all mail arrives
whole in that one round trip; a longer message is fetched again whole, or (above
max_message_bytes) cut to its headers, so an oversized message never costs more than this."""
"""UIDs per size query; Dovecot refuses command lines over 64 KB (about 15,000 UIDs)."""


class ImapConnector:
    """One IMAP folder as a source.

    Args:
        name: the source name from config.
        host, port: the server.
        username: the login.
        password: called at each connect, so a rotated secret is picked up without a restart.
        folder: the folder to read.
        tls: "ssl" (implicit TLS), "starttls", or "plain" (only when the config says so).
        cafile: extra CA bundle to verify the server against (certificates are always verified
            when TLS is on).
        timeout: seconds for connect and every read.
        batch_size: UIDs per ``FETCH BODY.PEEK[]``.
        max_message_bytes: larger messages are fetched as headers only and marked truncated.
        post_action: what to do with a message once it is stored: "none" (the folder is opened
            read only), "seen", "keyword:<name>" or "move:<folder>".
        oauth_token: returns an OAuth2 access token; given, the login is XOAUTH2, not a password.
    """

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        username: str,
        password: Callable[[], str],
        folder: str = "INBOX",
        tls: str = "ssl",
        cafile: str | None = None,
        timeout: float = 30.0,
        batch_size: int = 500,
        max_message_bytes: int = 25_000_000,
        post_action: str = "none",
        oauth_token: Callable[[], str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.folder = folder
        self.tls = tls
        self.cafile = cafile
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.post_action = post_action
        self._oauth_token = oauth_token
        self._client: IMAPClient | None = None
        self._live: IMAPClient | None = None  # the newest connection, for interrupt()

    @property
    def _where(self) -> str:
        return f"IMAP server {self.host}:{self.port}"

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]:
        """Yield the folder's messages after ``checkpoint`` in UID order.

        Raises:
            ConnectorUnavailable: the server is down, slow or dropped the connection.
            ConnectorAuthError: the login was refused, TLS verification failed, or the folder
                does not exist.
        """
        try:
            client = self._connect()
        except ConnectorError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        self.close()
        self._client = client  # kept until close(), so acknowledge() can follow the last batch
        try:
            yield from self._fetch_folder(client, checkpoint)
        except ConnectorError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Apply the post-action to stored messages; repeating it changes nothing."""
        uids = [item.extra["uid"] for item in items if "uid" in item.extra]
        if self.post_action == "none" or not uids or self._client is None:
            return
        try:
            self._apply(self._client, uids)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _apply(self, client: IMAPClient, uids: Sequence[int]) -> None:
        action, _, argument = self.post_action.partition(":")
        if action == "seen":
            client.add_flags(uids, [b"\\Seen"])
        elif action == "keyword":
            client.add_flags(uids, [argument.encode()])
        elif action == "move":
            client.move(uids, argument)

    def _catch_up(self, client: IMAPClient, last_uid: int) -> None:
        """Finish post-actions a crash cut short: every UID up to the checkpoint is stored."""
        action, _, argument = self.post_action.partition(":")
        pending = {"seen": ["UNSEEN"], "keyword": ["UNKEYWORD", argument], "move": ["ALL"]}
        uids = client.search([*pending[action], "UID", f"1:{last_uid}"])
        uids = [uid for uid in uids if uid <= last_uid]
        for start in range(0, len(uids), SIZE_CHUNK):
            self._apply(client, uids[start : start + SIZE_CHUNK])
        if uids:
            log.info("%s: completed the post-action on %d stored message(s)", self.name, len(uids))

    def close(self) -> None:
        """Log out: a connection lives for one poll, nothing stays open between polls."""
        client, self._client = self._client, None
        if client is not None:
            _logout_quietly(client)

    def interrupt(self) -> None:
        """Cut the connection from another thread (a stop request): a FETCH blocked on the
        server fails at once instead of waiting for its data or the timeout. Shut down at
        the socket level, under TLS too, so the reading thread's TLS state is left alone."""
        client = self._live
        if client is None:
            return
        try:
            socket.socket.shutdown(client.socket(), socket.SHUT_RDWR)
        except OSError:
            log.debug("%s: the connection was already closed", self.name)

    def _connect(self) -> IMAPClient:
        context = ssl.create_default_context(cafile=self.cafile) if self.tls != "plain" else None
        client = IMAPClient(
            self.host,
            port=self.port,
            ssl=self.tls == "ssl",
            ssl_context=context,
            timeout=self.timeout,
        )
        client.normalise_times = False
        self._live = client
        # IMAPClient turns imaplib's protocol trace on and hands it to a logger: imaplib then
        # formats every response, whole messages included, whether or not anyone logs them.
        # That tripled the cost of a FETCH, and would put customers' mail into debug logs.
        client._imap.debug = 0
        if self.tls == "starttls":
            client.starttls(context)
        try:
            if self._oauth_token is not None:
                client.oauth2_login(self.username, self._oauth_token())
            else:
                client.login(self.username, self._password())
        except LoginError:
            _logout_quietly(client)
            raise ConnectorAuthError(
                f"{self._where} refused the login of {self.username!r}"
            ) from None
        return client

    def _fetch_folder(
        self, client: IMAPClient, checkpoint: Checkpoint | None
    ) -> Iterator[tuple[RawItem, Checkpoint]]:
        try:
            if self.post_action.startswith("move:"):
                target = self.post_action.partition(":")[2]
                if not client.folder_exists(target):
                    client.create_folder(target)
            info = client.select_folder(self.folder, readonly=self.post_action == "none")
        except IMAPClientError as exc:
            raise ConnectorAuthError(
                f"{self._where} cannot open folder {self.folder!r}: {exc}"
            ) from None
        uidvalidity = int(info[b"UIDVALIDITY"])
        last_uid = self._resume_after(checkpoint, uidvalidity)
        if self.post_action != "none" and last_uid:
            self._catch_up(client, last_uid)
        # "UID n:*" always matches the newest message, even below n: keep only the new ones.
        uids = sorted(uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid)
        if uids:
            log.info("%s: %d new message(s) in %s", self.name, len(uids), self.folder)
        for start in range(0, len(uids), self.batch_size):
            chunk = uids[start : start + self.batch_size]
            for uid, item in self._fetch_chunk(client, chunk, uidvalidity):
                yield item, {"uidvalidity": uidvalidity, "last_uid": uid}

    def _resume_after(self, checkpoint: Checkpoint | None, uidvalidity: int) -> int:
        if not checkpoint:
            return 0
        if checkpoint.get("uidvalidity") != uidvalidity:
            log.warning(
                "%s: UIDVALIDITY of %s changed from %s to %s; reading the folder again "
                "(messages already stored are recognised by content)",
                self.name,
                self.folder,
                checkpoint.get("uidvalidity"),
                uidvalidity,
            )
            return 0
        return int(checkpoint.get("last_uid", 0))

    def _fetch_chunk(
        self, client: IMAPClient, chunk: Sequence[int], uidvalidity: int
    ) -> Iterator[tuple[int, RawItem]]:
        prefix = min(PREFIX_BYTES, self.max_message_bytes)
        response = client.fetch(chunk, ["RFC822.SIZE", "INTERNALDATE", f"BODY.PEEK[]<0.{prefix}>"])
        found = {
            uid: (int(data.get(b"RFC822.SIZE", 0)), data.get(b"INTERNALDATE"), data[b"BODY[]<0>"])
            for uid, data in response.items()
            if b"BODY[]<0>" in data
        }
        oversized = {uid for uid, (size, _, _) in found.items() if size > self.max_message_bytes}
        longer = sorted(
            uid for uid, (size, _, _) in found.items() if prefix < size <= self.max_message_bytes
        )
        whole = _fetch_part(client, longer, "BODY.PEEK[]", b"BODY[]")
        for uid in chunk:
            if uid not in found:
                # Expunged between SEARCH and FETCH: nothing left to store.
                log.info("%s: UID %d vanished before it could be fetched", self.name, uid)
                continue
            size, internal_date, raw = found[uid]
            if uid in oversized:
                raw = self._headers(client, uid, raw)
            yield (
                uid,
                RawItem(
                    source=self.name,
                    source_id=f"imap:{self.username}/{self.folder}:{uidvalidity}:{uid}",
                    raw=whole.get(uid, raw),
                    received_at=_as_utc(internal_date),
                    size=size or len(raw),
                    truncated=uid in oversized,
                    extra={"uid": uid},
                ),
            )

    def _headers(self, client: IMAPClient, uid: int, prefix: bytes) -> bytes:
        """The header block of an oversized message, from its first bytes when it is there."""
        end = prefix.find(b"\r\n\r\n")
        if end >= 0:
            return prefix[: end + 4]
        return _fetch_part(client, [uid], "BODY.PEEK[HEADER]", b"BODY[HEADER]").get(uid, prefix)

    def _translate(self, exc: Exception) -> ConnectorError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConnectorAuthError(
                f"{self._where} presented a certificate that failed verification: "
                f"{exc.verify_message}"
            )
        if isinstance(exc, socket.timeout | TimeoutError):
            return ConnectorUnavailable(f"{self._where} did not answer within {self.timeout:g} s")
        if isinstance(exc, OSError | imaplib.IMAP4.abort | IMAPClientError):
            return ConnectorUnavailable(f"{self._where} failed: {exc}")
        return ConnectorError(f"{self._where}: unexpected {type(exc).__name__}: {exc}")


def _fetch_part(client: IMAPClient, uids: Sequence[int], item: str, key: bytes) -> dict[int, bytes]:
    if not uids:
        return {}
    return {uid: data[key] for uid, data in client.fetch(uids, [item]).items() if key in data}


def _as_utc(value: object) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _closed_by_peer(client: IMAPClient) -> bool:
    """True when the server has closed the connection (EOF waits on the socket). Looked at
    without waiting (the socket's own timeout would make a read wait) and at the socket level,
    so a TLS connection's state is left as it is."""
    sock = client.socket()
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False  # nothing to read: the connection is alive and quiet
        return socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # closed meanwhile
        return True


def _logout_quietly(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the connection may already be gone; nothing to report
        log.debug("IMAP logout failed", exc_info=True)


class ImapIdleWatcher:
    """Waits in IMAP IDLE on one folder and calls ``on_news`` when mail arrives.

    It only signals: the poll itself still runs as the source's scheduled job (one at a time),
    so IDLE shortens the delay to seconds without a second path into the store. IDLE is
    re-issued before the server's 29-minute limit; without IDLE support, or while the server is
    unreachable, the scheduled polling carries on alone.
    """

    RENEW_AFTER = 25 * 60.0
    CHECK_EVERY = 1.0  # seconds per idle_check, so a stop request is seen promptly
    RETRY_AFTER = 30.0

    def __init__(self, connector: ImapConnector, on_news: Callable[[], None]) -> None:
        self.connector = connector
        self.on_news = on_news

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set; reconnects after errors, gives up if IDLE is missing."""
        while not stop.is_set():
            try:
                client = self.connector._connect()
            except Exception as exc:
                log.info(
                    "%s: IDLE cannot connect (%s); polling meanwhile", self.connector.name, exc
                )
                stop.wait(self.RETRY_AFTER)
                continue
            try:
                if b"IDLE" not in client.capabilities():
                    log.info("%s: the server has no IDLE; polling only", self.connector.name)
                    return
                client.select_folder(self.connector.folder, readonly=True)
                self._watch(client, stop)
            except Exception as exc:  # a dropped connection: reconnect and resync
                log.info("%s: IDLE interrupted (%s); reconnecting", self.connector.name, exc)
                stop.wait(1.0)
            finally:
                _logout_quietly(client)

    def _watch(self, client: IMAPClient, stop: threading.Event) -> None:
        client.idle()
        started = time.monotonic()
        self.on_news()  # catch up with anything that arrived while we were not watching
        while not stop.is_set():
            responses = client.idle_check(timeout=self.CHECK_EVERY)
            if not responses and _closed_by_peer(client):
                # imapclient's idle_check reads the server's EOF as "no news" and returns at
                # once: without this, a dropped connection would spin the thread forever.
                raise ConnectionError("the server closed the connection")
            news = any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses)
            if news or time.monotonic() - started > self.RENEW_AFTER:
                client.idle_done()
                if news:
                    self.on_news()
                client.idle()
                started = time.monotonic()
        client.idle_done()
