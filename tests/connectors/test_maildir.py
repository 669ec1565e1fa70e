"""The Maildir connector on real folders: order, checkpoints, oversized mail, a missing folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from connectors.base import ConnectorAuthError
from connectors.maildir import MARGIN_NS, MaildirConnector
from tests.helpers import make_email


def deliver(maildir: Path, name: str, raw: bytes, sub: str = "new") -> Path:
    for folder in ("tmp", "new", "cur"):
        (maildir / folder).mkdir(parents=True, exist_ok=True)
    temp = maildir / "tmp" / name
    temp.write_bytes(raw)
    target = maildir / sub / name
    os.rename(temp, target)
    return target


def test_reads_new_and_cur_and_resumes(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email("first", "one"))
    deliver(box, "2.b:2,S", make_email("second", "two"), sub="cur")
    (box / "new" / ".hidden").write_bytes(b"not mail")
    connector = MaildirConnector("box", box)
    items = list(connector.fetch(None))
    assert sorted(item.source_id for item, _ in items) == ["maildir:box:1.a", "maildir:box:2.b"]
    checkpoint = items[-1][1]
    assert checkpoint["ctime_ns"] > 0
    # Old files are far enough below the watermark only once time has passed; fake that.
    old = {"ctime_ns": checkpoint["ctime_ns"] + MARGIN_NS + 1}
    assert list(connector.fetch(old)) == []
    time.sleep(0.01)
    deliver(box, "3.c", make_email("third", "three"))
    later = [item.source_id for item, _ in connector.fetch(old)]
    assert later == ["maildir:box:3.c"]


def test_a_message_moved_to_cur_while_polling_is_read_there_next_time(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email("first", "one"))
    second = deliver(box, "2.b", make_email("second", "two"))
    connector = MaildirConnector("box", box)
    fetching = connector.fetch(None)
    first, checkpoint = next(fetching)
    assert first.source_id == "maildir:box:1.a"
    time.sleep(0.01)
    os.rename(second, box / "cur" / "2.b:2,S")  # a mail reader opened it meanwhile
    assert list(fetching) == []
    later = [item.source_id for item, _ in connector.fetch(checkpoint)]
    assert "maildir:box:2.b" in later


def test_a_file_name_that_is_not_utf8_makes_a_storable_source_id(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email("first", "one"))
    os.rename(box / "new" / "1.a", os.fsencode(box / "new") + b"/2.h\xff\xfeost")
    [(item, _)] = list(MaildirConnector("box", box).fetch(None))
    assert item.source_id == "maildir:box:2.h\\xff\\xfeost"
    item.source_id.encode("utf-8")  # no lone surrogate left


def test_oversized_message_keeps_headers_only(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    raw = make_email("big", "x" * 5000)
    deliver(box, "big.1", raw)
    item, _ = next(MaildirConnector("box", box, max_message_bytes=1024).fetch(None))
    assert item.truncated and item.size == len(raw)
    assert b"Subject: big" in item.raw and b"xxxx" not in item.raw


def test_not_a_maildir(tmp_path: Path) -> None:
    with pytest.raises(ConnectorAuthError, match="is not a Maildir"):
        list(MaildirConnector("box", tmp_path).fetch(None))


def test_arrival_time_comes_from_the_unique_name(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1794902735.M000036P100.demo", make_email("a", "1"))
    deliver(box, "no-time-here", make_email("b", "2"))
    items = {item.source_id: item for item, _ in MaildirConnector("box", box).fetch(None)}
    assert items["maildir:box:1794902735.M000036P100.demo"].received_at.timestamp() == 1794902735
    assert abs(items["maildir:box:no-time-here"].received_at.timestamp() - time.time()) < 60
