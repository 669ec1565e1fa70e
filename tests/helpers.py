"""Builders shared by the tests: configs made in code, emails made as raw bytes."""

from __future__ import annotations

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
