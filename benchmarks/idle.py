"""IDLE latency: how long a message appended to an IMAP mailbox takes to be forwarded by SMTP.

Starts a throwaway Dovecot and an aiosmtpd sink on loopback, trains the bundled demo model with
``triage train`` (as benchmarks/ingest.py does) and runs the real daemon, ``triage run``, on one
IMAP source with ``idle = true`` and the default poll and outbox intervals (60 s and 15 s), so
only IMAP IDLE can make delivery fast. It then appends N complaints (copies of the demo mailbox's
complaints that the demo model forwards to a department, each with its own Message-ID and
sender) one at a time, at random intervals around ``--interval``, and measures the time from
the APPEND command to the forward's arrival at the SMTP sink (matched by its References header).
The stored and sent times in the database split each latency into "append -> stored" (IDLE wake,
poll, parse, classify, commit) and "stored -> received" (outbox flush and SMTP). The baseline,
measured in the same run, is the server's own push: when a bare imapclient session in IDLE on
the first mailbox hears the EXISTS of each message appended there (no parsing, no database).

Usage: ``python benchmarks/idle.py [--n 100] [--interval 1.0] [--json] [--postgres]``.
Needs Dovecot (``apt-get install dovecot-imapd``) and, with ``--postgres``, the local server.
Benchmarks are not tests: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable
from datetime import UTC
from email import message_from_bytes
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402
from imapclient import IMAPClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from tests.helpers import wait_until  # noqa: E402
from tests.servers.certs import make_cert  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.postgres import drop_database, make_database  # noqa: E402
from tests.servers.smtp import Received, SmtpServer  # noqa: E402
from triage.store.database import Database  # noqa: E402
from triage.store.schema import Forward, Message, SourceState  # noqa: E402

TRAIN = ["--data", str(ROOT / "demo/training.csv"), "--text-column", "subject",
         "--text-column", "body", "--label", "kind", "--label", "area", "--label", "urgency"]  # fmt: skip
PASSWORD_ENV = "BENCH_IMAP_PASSWORD"
_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[^\n]*\n(?:[ \t][^\n]*\n)*")
_FROM = re.compile(rb"(?im)^From:[^\n]*\n(?:[ \t][^\n]*\n)*")


class TimedSink(SmtpServer):
    """The SMTP sink, noting when each forward arrived, by the Message-ID it references."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    def _store(self, received: Received) -> None:
        at = time.time()
        references = message_from_bytes(received.content).get("References", "")
        for reference in str(references).split():
            self.arrived.setdefault(reference, at)
        super()._store(received)


class PushFloor(threading.Thread):
    """A bare IDLE session on one mailbox, noting when the server announces each message."""

    def __init__(self, client: IMAPClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.exists = int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])
        self.first = self.exists + 1  # the number the next appended message gets
        self.heard: dict[int, float] = {}  # message sequence number -> when EXISTS announced it
        self.stop = threading.Event()

    def run(self) -> None:
        self.client.idle()
        while not self.stop.is_set():
            for response in self.client.idle_check(timeout=0.2):
                if len(response) > 1 and response[1] == b"EXISTS":
                    at = time.time()
                    for number in range(self.exists + 1, int(response[0]) + 1):
                        self.heard[number] = at
                    self.exists = max(self.exists, int(response[0]))
        self.client.idle_done()
        self.client.logout()


def complaints() -> list[bytes]:
    """The demo mailbox's complaints (by demo/mailbox-labels.csv), routed to a department."""
    with (ROOT / "demo/mailbox-labels.csv").open(encoding="utf-8", newline="") as labels:
        names = [row["file"] for row in csv.DictReader(labels) if row["kind"] == "complaint"]
    return [(ROOT / "demo/mailbox" / name).read_bytes() for name in names]


def unique(template: bytes, tag: str) -> tuple[str, bytes]:
    """A copy of ``template`` with its own Message-ID and sender (a sender is capped per hour)."""
    raw = _MESSAGE_ID.sub(b"", template, count=1)
    raw = _FROM.sub(f"From: Bench Customer <{tag}@customers.test>\n".encode(), raw, count=1)
    message_id = f"<{tag}@bench.test>"
    return message_id, f"Message-ID: {message_id}\n".encode() + raw


def write_config(workdir: Path, db_url: str, server: DovecotServer, users: list[str],
                 smtp_port: int, args: argparse.Namespace) -> Path:  # fmt: skip
    demo = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    settings: dict[str, Any] = {
        "database": {"url": db_url},
        "classifier": {"models_dir": str(workdir / "models")},
        "sources": [{
            "name": f"bench{k}", "type": "imap", "host": server.host, "port": server.port,
            "tls": "plain", "username": user, "password_env": PASSWORD_ENV, "idle": True,
        } for k, user in enumerate(users)],
        "departments": demo["departments"],
        "routing": demo["routing"],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "plain"},
        "forwarding": {"transport": "smtp", "from_address": "triage@bench.test"},
        "schedule": {"poll_interval": args.poll_interval, "outbox_interval": args.outbox_interval},
        "web": {"enabled": False},
    }  # fmt: skip
    config = workdir / "config.toml"
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")
    return config


class Store:
    """Read-only looks into the daemon's database."""

    def __init__(self, url: str, sources: int) -> None:
        self.db = Database(url)
        self.sources = sources

    def polled(self) -> bool:
        """Every source has been polled once."""
        with self.db.session() as session:
            done = session.scalars(
                select(SourceState.source).where(SourceState.last_success_at.is_not(None))
            ).all()
        return len(done) == self.sources

    def stored(self, message_ids: Iterable[str]) -> dict[str, tuple[float, bool]]:
        """Header Message-ID -> (stored at, as epoch seconds; has a forward)."""
        wanted = list(message_ids)
        with self.db.session() as session:
            rows = session.execute(
                select(Message.header_message_id, Message.created_at, Forward.id)
                .outerjoin(Forward, Forward.message_id == Message.id)
                .where(Message.header_message_id.in_(wanted))
            ).all()
        return {mid: (_epoch(at), forward is not None) for mid, at, forward in rows}


def _epoch(at: Any) -> float:
    return float(at.replace(tzinfo=UTC).timestamp() if at.tzinfo is None else at.timestamp())


def calibrate(clients: list[IMAPClient], store: Store, sink: TimedSink) -> list[bytes]:
    """Append every demo complaint once; keep those the demo model forwards (also a warm-up)."""
    templates = complaints()
    tagged = [unique(raw, f"warm-{k}") for k, raw in enumerate(templates)]
    for k, (_, raw) in enumerate(tagged):
        clients[k % len(clients)].append("INBOX", raw)
    ids = [mid for mid, _ in tagged]
    if not wait_until(lambda: len(store.stored(ids)) == len(ids), 120, 0.2):
        raise SystemExit("the daemon did not store the warm-up messages; see its log")
    stored = store.stored(ids)
    forwarded = [k for k, mid in enumerate(ids) if stored[mid][1]]
    if not forwarded:
        raise SystemExit("the demo model forwarded none of the demo complaints")
    # The warm-up forwards wait for the outbox; the measurement starts with a quiet daemon.
    wait_until(lambda: all(ids[k] in sink.arrived for k in forwarded), 60, 0.2)
    return [templates[k] for k in forwarded]


def measure(args: argparse.Namespace, clients: list[IMAPClient], store: Store, sink: TimedSink,
            templates: list[bytes], floor: PushFloor) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(args.seed)
    appended: dict[str, float] = {}
    floor_numbers: dict[int, float] = {}  # sequence number in the first mailbox -> appended at
    for i in range(args.n):
        message_id, raw = unique(templates[i % len(templates)], f"idle-{i}")
        appended[message_id] = time.time()
        if i % len(clients) == 0:
            floor_numbers[floor.first + len(floor_numbers)] = appended[message_id]
        clients[i % len(clients)].append("INBOX", raw)
        time.sleep(rng.uniform(0.5, 1.5) * args.interval)
    wait_until(lambda: all(mid in sink.arrived for mid in appended), args.timeout, 0.2)
    floor.stop.set()
    floor.join(5)
    pushed = [floor.heard[n] - at for n, at in floor_numbers.items() if n in floor.heard]
    stored = store.stored(appended)
    total, to_store, to_smtp = [], [], []
    for mid, at in appended.items():
        if mid in sink.arrived:
            total.append(sink.arrived[mid] - at)
            if mid in stored:
                to_store.append(stored[mid][0] - at)
                to_smtp.append(sink.arrived[mid] - stored[mid][0])
    return {
        "n": args.n,
        "received": len(total),
        "missing": args.n - len(total),
        "not_forwarded": sum(1 for mid in appended if mid in stored and not stored[mid][1]),
        "latency": summary(total),
        "push_floor": summary(pushed),
        "append_to_stored": summary(to_store),
        "stored_to_received": summary(to_smtp),
        "latencies": [round(x, 4) for x in total],
    }


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    ordered = sorted(values)
    rank = max(0, -(-95 * len(ordered) // 100) - 1)  # nearest-rank percentile
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[rank],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = DovecotServer(workdir / "dovecot", cert=make_cert(workdir))
    (workdir / "dovecot").mkdir()
    server.start()
    db_url = make_database() if args.postgres else f"sqlite:///{workdir / 'triage.db'}"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        with TimedSink() as sink:
            users = [server.new_user() for _ in range(args.mailboxes)]
            config = write_config(workdir, db_url, server, users, sink.port, args)
            env = {**os.environ, PASSWORD_ENV: server.password}
            triage = [sys.executable, "-m", "triage", "--config", str(config)]
            subprocess.run([*triage, "train", *TRAIN, "--activate"], env=env, check=True,
                           capture_output=True)  # fmt: skip
            with (workdir / "daemon.log").open("wb") as log:
                daemon = subprocess.Popen([*triage, "--log-level", args.log_level, "run"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            store = Store(db_url, len(users))
            if not wait_until(store.polled, 60, 0.1):
                raise SystemExit(f"the daemon never polled; see {workdir / 'daemon.log'}")
            clients = [server.client(user) for user in users]
            try:
                templates = calibrate(clients, store, sink)
                floor = PushFloor(server.client(users[0]))
                floor.start()
                load_before = os.getloadavg()
                report = measure(args, clients, store, sink, templates, floor)
            finally:
                for client in clients:
                    client.logout()
                store.db.dispose()
            report.update(
                templates=len(templates),
                mailboxes=args.mailboxes,
                interval=args.interval,
                poll_interval=args.poll_interval,
                outbox_interval=args.outbox_interval,
                database="postgres" if args.postgres else "sqlite",
                load_before=load_before,
                load_after=os.getloadavg(),
            )
            return report
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if args.keep_log and (workdir / "daemon.log").exists():
            Path(args.keep_log).write_bytes((workdir / "daemon.log").read_bytes())
        server.close()
        if args.postgres:
            drop_database(db_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="messages to measure")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="mean seconds between appends (uniform, 0.5x to 1.5x)")  # fmt: skip
    parser.add_argument("--mailboxes", type=int, default=1,
                        help="IDLE-watched mailboxes, appended to in turn")  # fmt: skip
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument("--outbox-interval", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for the last forwards after the last append")  # fmt: skip
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--keep-log", metavar="FILE", help="copy the daemon's log here")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triage-bench-idle-") as temp:
        report = run(Path(temp), args)
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['n']} messages appended one at a time, every {args.interval:g} s on average, "
        f"to {args.mailboxes} mailbox(es) watched with IDLE ({report['database']}; poll every "
        f"{args.poll_interval:g} s, outbox every {args.outbox_interval:g} s)"
    )
    print(f"forwarded and received: {report['received']}, missing: {report['missing']}")
    print(f"{'seconds':<28}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}")
    for key, title in (
        ("push_floor", "baseline: append -> EXISTS"),
        ("latency", "append -> SMTP received"),
        ("append_to_stored", "  append -> stored"),
        ("stored_to_received", "  stored -> SMTP received"),
    ):
        row = report[key]
        cells = "".join(f"{'-' if row[k] is None else f'{row[k]:.3f}':>8}" for k in row)
        print(f"{title:<28}{cells}")
    before, after = report["load_before"], report["load_after"]
    print(f"load average: {before[0]:.2f} before, {after[0]:.2f} after")


if __name__ == "__main__":
    main()
