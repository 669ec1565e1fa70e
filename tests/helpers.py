"""Builders shared by the tests: configs made in code, emails made as raw bytes."""

from __future__ import annotations

import base64
import quopri
import threading
import time
from collections.abc import Callable
from email.header import Header
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from triage.config import Config, parse_config

DEPARTMENTS = [
    {"name": "billing", "email": "billing@dept.test", "areas": ["billing"]},
    {"name": "logistics", "email": "logistics@dept.test", "areas": ["delivery"]},
    {"name": "review", "email": "review@dept.test"},
]


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """A valid config rooted in ``tmp_path``; each keyword replaces one top-level section."""
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "departments": DEPARTMENTS,
        "routing": {
            "escalation_email": "duty@dept.test",
            "review_department": "review",
            "min_confidence": 0.0,
        },
        "forwarding": {"transport": "directory", "directory": str(tmp_path / "forwards")},
        "classifier": {"models_dir": str(tmp_path / "models")},
        "sources": [],
    }
    data.update(sections)
    return parse_config(data, base_dir=tmp_path)


def make_email(
    subject: str,
    body: str,
    *,
    sender: str = "Olena Petrenko <olena@example.com>",
    to: str = "support@shop.test",
    charset: str = "utf-8",
    headers: dict[str, str] | None = None,
    date: Any = None,
) -> bytes:
    """One realistic RFC 5322 message as bytes, encoded as mail clients do (RFC 2047 headers)."""
    message = MIMEText(body, "plain", charset)
    name, address = parseaddr(sender)
    message["From"] = formataddr((name, address)) if name else address
    message["To"] = to
    message["Subject"] = Header(subject, "us-ascii" if subject.isascii() else charset)
    message["Message-ID"] = make_msgid(domain="example.com")
    if date is not None:
        message["Date"] = format_datetime(date)
    for header, value in (headers or {}).items():
        message[header] = value
    return message.as_bytes()


def wait_until(condition: Callable[[], bool], seconds: float, step: float = 0.2) -> bool:
    """Poll ``condition`` every ``step`` seconds until it holds or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class ProcessTree:
    """Every process descended from ``pid`` while it runs (sampled from /proc by a thread), so
    a test can check that none of them outlives it."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.seen: dict[int, str] = {}  # pid -> its start time, so a reused pid is not counted
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def survivors(self, within: float = 10.0) -> dict[int, str]:
        """The descendants still alive after ``within`` seconds (their command lines)."""
        wait_until(lambda: not self._alive(), within, step=0.1)
        return {pid: _cmdline(pid) for pid in self._alive()}

    def _alive(self) -> list[int]:
        return [pid for pid, started in self.seen.items() if _stat(pid)[1] == started]

    def _sample(self, every: float) -> None:
        while not self._done.is_set():
            children: dict[int, list[int]] = {}
            for entry in Path("/proc").glob("[0-9]*"):
                parent, _ = _stat(int(entry.name))
                if parent is not None:
                    children.setdefault(parent, []).append(int(entry.name))
            todo = list(children.get(self.pid, []))
            while todo:
                pid = todo.pop()
                started = _stat(pid)[1]
                if started is not None:
                    self.seen.setdefault(pid, started)
                todo.extend(children.get(pid, []))
            self._done.wait(every)


def _stat(pid: int) -> tuple[int | None, str | None]:
    """(parent pid, start time) of a live process; (None, None) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    return int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


# --- raw mail built by hand (no email package involved) ---------------------------------

UK_TEXT = (
    "Доброго дня! Прошу повернути кошти за замовлення 4512, товар прийшов пошкоджений. "
    "Їжак на упаковці, ґудзик відірваний, є подряпини."
)
EN_TEXT = "Hello, my parcel arrived damaged and I would like a refund for order 4512."


def raw_mail(
    body: bytes,
    *,
    content_type: str | None = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
    cte: str | None = None,
    sender: str | None = "Customer <customer@example.com>",
    subject: str | None = "Question",
) -> bytes:
    """Raw message bytes with CRLF line ends, built by hand (no email package involved)."""
    lines: list[str] = []
    if sender is not None:
        lines.append(f"From: {sender}")
    lines.append("To: support@triage.example")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    lines.append("MIME-Version: 1.0")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if cte is not None:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    head = "\r\n".join(lines).encode("ascii")
    return head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def b_word(text: str, charset: str) -> str:
    """RFC 2047 B-encoded word."""
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def q_word(text: str, charset: str) -> str:
    """RFC 2047 Q-encoded word."""
    return f"=?{charset}?Q?{quopri.encodestring(text.encode(charset), header=True).decode()}?="


def multipart(subtype: str, parts: list[bytes], boundary: str = "BOUNDARY") -> tuple[str, bytes]:
    """(Content-Type value, body) of a multipart built from raw part bytes."""
    body = b"".join(b"--" + boundary.encode() + b"\n" + part + b"\n" for part in parts)
    return f'multipart/{subtype}; boundary="{boundary}"', body + b"--" + boundary.encode() + b"--\n"


def part(body: bytes, content_type: str, *extra: str) -> bytes:
    head = "\n".join([f"Content-Type: {content_type}", *extra])
    return head.encode("ascii") + b"\n\n" + body
