"""Maildir connector: the embedded default, and a real option where an MTA delivers locally.

Messages are read, never moved or flagged; a message's arrival time is the delivery time at the
start of its unique name (the Maildir convention), else the file's mtime. Maildir has no UIDs, so the checkpoint is a watermark
on the files' change time (ctime): a delivery (rename into ``new/``), a copy or a move always sets
a fresh ctime, which a sender cannot back-date the way it can the mtime. Files whose ctime lies
within a safety margin below the watermark are read again (a delivery racing the scan, coarse
filesystem clocks), and the store's content key absorbs every re-read, as it does when a mail
reader moves a file from ``new/`` to ``cur/``.
"""

from __future__ import annotations

import logging
import mailbox
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connectors.base import Checkpoint, ConnectorAuthError, RawItem

log = logging.getLogger(__name__)

MARGIN_NS = 2_000_000_000
"""Files this close below the watermark are read again; the store drops what it already has."""


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    path: Path
    ctime_ns: int
    mtime: float
    size: int


class MaildirConnector:
    """Reads ``new/`` and ``cur/`` of one Maildir, oldest change first.

    Args:
        name: the source name from config.
        path: the Maildir folder (the one holding ``cur``, ``new`` and ``tmp``).
        max_message_bytes: larger files are yielded with their headers only.
    """

    def __init__(self, name: str, path: Path, max_message_bytes: int = 25_000_000) -> None:
        self.name = name
        self.path = path
        self.max_message_bytes = max_message_bytes

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]:
        """Yield every message changed since ``checkpoint``, each with the checkpoint after it."""
        watermark = int((checkpoint or {}).get("ctime_ns", 0))
        entries = sorted(
            (entry for entry in self._scan() if entry.ctime_ns >= watermark - MARGIN_NS),
            key=lambda entry: (entry.ctime_ns, entry.key),
        )
        for entry in entries:
            watermark = max(watermark, entry.ctime_ns)
            item = self._read(entry)
            if item is not None:
                yield item, {"ctime_ns": watermark}

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Maildir sources are read only: nothing to mark."""

    def interrupt(self) -> None:
        """Nothing to interrupt: files are read locally, one at a time."""

    def close(self) -> None:
        """Nothing to release: files are opened and closed per message."""

    def _scan(self) -> Iterator[_Entry]:
        if not (self.path / "new").is_dir() and not (self.path / "cur").is_dir():
            raise ConnectorAuthError(
                f"{self.path} is not a Maildir (it has neither a new/ nor a cur/ folder)"
            )
        for sub in ("new", "cur"):
            folder = self.path / sub
            if not folder.is_dir():
                continue
            with os.scandir(folder) as it:
                for dirent in it:
                    # The Maildir spec reserves dot-files; never treat them as mail.
                    if dirent.name.startswith(".") or not dirent.is_file():
                        continue
                    try:
                        st = dirent.stat()
                    except FileNotFoundError:
                        continue  # moved by a mail reader: found at its new place
                    key = _printable(dirent.name.split(mailbox.Maildir.colon, 1)[0])
                    yield _Entry(key, Path(dirent.path), st.st_ctime_ns, st.st_mtime, st.st_size)

    def _read(self, entry: _Entry) -> RawItem | None:
        """The message, or None when it was moved or deleted since the scan: a mail reader
        moving it from new/ to cur/ gives it a fresh ctime, so the next poll reads it there."""
        truncated = entry.size > self.max_message_bytes
        try:
            with entry.path.open("rb") as fh:
                raw = _read_headers(fh) if truncated else fh.read()
        except FileNotFoundError:
            log.debug("%s: %s was moved or deleted while polling", self.name, entry.path)
            return None
        return RawItem(
            source=self.name,
            source_id=f"maildir:{self.name}:{entry.key}",
            raw=raw,
            received_at=_delivered_at(entry),
            size=entry.size,
            truncated=truncated,
        )


def _printable(name: str) -> str:
    """A file name's bytes that are not UTF-8 (decoded as lone surrogates, which no database
    stores) as backslash escapes: still one stable, unique source id per file."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_headers(fh: object) -> bytes:
    """The header block of an oversized message, so it is recorded instead of dropped."""
    lines = []
    for line in fh:  # type: ignore[attr-defined]
        if line in (b"\n", b"\r\n"):
            break
        lines.append(line)
    return b"".join(lines) + b"\n"


def _delivered_at(entry: _Entry) -> datetime:
    """When the message was delivered: the Maildir unique name starts with the delivery time
    (seconds since the epoch), which survives a copy or a checkout; else the file's mtime."""
    head = entry.key.split(".", 1)[0]
    if head.isdigit() and 10**9 <= int(head) < 2**32:  # 2001 onwards: real MTAs, not "1.a"
        return datetime.fromtimestamp(int(head), UTC)
    return datetime.fromtimestamp(entry.mtime, UTC)
