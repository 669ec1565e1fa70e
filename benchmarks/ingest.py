"""Ingest throughput: the IMAP fetch floor against `triage run --once` end to end, in one run.

Seeds a throwaway Dovecot on loopback with N messages (the bundled demo mailbox's real-world mix:
Ukrainian and English, windows-1251, KOI8-U, HTML-only, multipart with attachments, each copy
made unique: its Message-ID, sender and MIME boundaries), then measures side by side:

- floor: imapclient, 500 UIDs per ``FETCH BODY.PEEK[]``, bytes discarded (the issue's Python fetch
  floor, which the ratios are taken against); also the same with imaplib's protocol trace off, as
  triage fetches, reported beside it (``floor_untraced_msgs_per_s``): nearly three times faster;
- triage on SQLite and on PostgreSQL: one ``run --once`` pass (fetch, parse, classify with the
  demo model, store, queue forwards), each in its own process, so peak RSS is its own; with the
  CPU time per message of the polling process (all its threads) and of the parsing processes.

Usage: ``python benchmarks/ingest.py [--n 10000] [--json] [--skip-postgres] [--preload M]
[--repeat K]``; ``--repeat K`` measures each database K times (each pass on a fresh one) and shows
the median, with the range: this machine varies by 10-20% from run to run.
``--preload M`` stores M synthetic messages (with their customers and labels) first, to show that
deduplication and the history reads go by index, not by scan.
Needs Dovecot (``apt-get install dovecot-imapd``) and, for PostgreSQL, the local server.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imapclient import IMAPClient  # noqa: E402

from tests.servers.certs import make_cert  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.postgres import drop_database, make_database  # noqa: E402
from triage.intake import prepare  # noqa: E402
from triage.intake.normalize import ParsedEmail  # noqa: E402

PARSE_FREE_ENV = "BENCH_PARSE_FREE"

TRAIN = ["--data", str(ROOT / "demo/training.csv"), "--text-column", "subject",
         "--text-column", "body", "--label", "kind", "--label", "area", "--label", "urgency"]  # fmt: skip


def corpus(n: int, mix: str = "real", first: int = 0) -> Iterator[bytes]:
    """N unique messages cycling through the demo mailbox's real-world mix, made one at a time.

    Each customer (sender address) writes about three of them. ``mix="real"`` also gives 10% of them a small attachment (a logo or scan, 3-15 KB) and 3% a
    large one (a PDF or photo, 20-150 KB), for a mean near 7 KB: the size the issue's reference
    mailbox implies (10,000 msgs/s at its fetch floor). ``mix="demo"``: the demo mail only.
    """
    templates = [p.read_bytes() for p in sorted((ROOT / "demo/mailbox").glob("*/*"))]
    rng = random.Random(f"{n}:{first}")  # the same corpus for the same N, run after run
    for i in range(first, first + n):
        raw = re.sub(rb"(?im)^Message-ID:[^\n]*\n", b"", templates[i % len(templates)], count=1)
        # A support mailbox's customers write a few times each, not thousands of times.
        customer = f"c{i % max(len(templates), n // 3)}.".encode()
        raw = re.sub(rb"(?im)^(From:[^\n@]*?)([\w.+-]+@)", rb"\1" + customer + rb"\2", raw, count=1)
        raw = _unique_boundaries(raw, i)
        roll = rng.random() if mix == "real" else 1.0
        if roll < 0.03:
            raw = _with_attachment(raw, rng.randint(20_000, 150_000), rng)
        elif roll < 0.13:
            raw = _with_attachment(raw, rng.randint(3_000, 15_000), rng)
        yield f"Message-ID: <bench-{i}@bench.test>\n".encode() + raw


def _unique_boundaries(raw: bytes, index: int) -> bytes:
    """Every mail program draws a new MIME boundary for each message: so do the copies."""
    boundaries = set(re.findall(rb'(?i)boundary="?([^";\r\n]+)"?', raw))
    for boundary in sorted(boundaries, key=len, reverse=True):
        raw = raw.replace(boundary, boundary + b".%d" % index)
    return raw


def _with_attachment(raw: bytes, size: int, rng: random.Random) -> bytes:
    """The message wrapped in multipart/mixed with a binary attachment of ``size`` bytes."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    fields = re.split(rb"\n(?![ \t])", head)
    content = [f for f in fields if f.lower().startswith((b"content-", b"mime-version"))]
    others = [f for f in fields if f not in content]
    part = b"\n".join(f for f in content if not f.lower().startswith(b"mime-version"))
    data = base64.encodebytes(rng.randbytes(size))
    boundary = f"bench-{rng.getrandbits(64):016x}".encode()
    return b"\n".join([
        *others, b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"', b"",
        b"--" + boundary, part or b"Content-Type: text/plain", b"", body,
        b"--" + boundary, b"Content-Type: application/octet-stream; name=scan.bin",
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment; filename=scan.bin", b"", data,
        b"--" + boundary + b"--", b"",
    ])  # fmt: skip


def floor(server: DovecotServer, user: str, trace: bool = True) -> dict[str, float]:
    """The fetch floor; ``trace=False``: with imaplib's protocol trace off, as triage fetches
    (IMAPClient turns it on, and imaplib then formats every response it reads)."""
    client = IMAPClient(server.host, port=server.port, ssl=False)
    if not trace:
        client._imap.debug = 0
    client.login(user, server.password)
    started = time.perf_counter()
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])
    size = 0
    for start in range(0, len(uids), 500):
        for data in client.fetch(uids[start : start + 500], ["BODY.PEEK[]"]).values():
            size += len(data[b"BODY[]"])
    seconds = time.perf_counter() - started
    client.logout()
    return {"msgs_per_s": len(uids) / seconds, "mb_per_s": size / seconds / 1e6, "seconds": seconds}


def parse_free() -> None:
    """The what-if behind ``--parse-ceiling``: each template mail is parsed once; its copies get
    that result with their own Message-ID and sender (a few regex searches), as if parsing and
    normalizing cost nothing, while classification, storage and forwards stay real."""
    parse = prepare.NORMALIZERS["rfc822"]
    parsed: dict[tuple[bytes, bytes], ParsedEmail] = {}
    headers = re.compile(rb"(?im)^(message-id|from|subject|date):[ \t]*([^\r\n]*)")
    address = re.compile(rb"[\w.+-]+@[\w.-]+")

    def memoized(raw: bytes) -> ParsedEmail:
        found = {name.lower(): value for name, value in headers.findall(raw, 0, 4096)}
        key = found.get(b"subject", b""), found.get(b"date", b"")
        if key not in parsed:
            parsed[key] = parse(raw)
        template, own_id = parsed[key], found[b"message-id"].decode()
        starts_thread = template.thread_key == template.message_id
        sender = address.search(found.get(b"from", b""))
        return replace(
            template,
            message_id=own_id,
            thread_key=own_id if starts_thread else template.thread_key,
            sender_address=sender.group().decode().lower() if sender else "",
        )

    prepare.NORMALIZERS["rfc822"] = memoized


if os.environ.get(PARSE_FREE_ENV):  # also in the parsing processes, which import this module
    parse_free()


def child(config_path: str, go: str | None) -> None:
    """One `run --once` pass in this process; prints its numbers as JSON.

    With ``go``, waits for that file to appear before starting the clock, so several workers
    ready at different times start together.
    """
    from triage.config import load_config
    from triage.worker.scheduler import Worker

    worker = Worker(load_config(Path(config_path)), worker_id=f"bench-{os.getpid()}")
    worker.db.upgrade()
    # Load the model and start the parsing processes before the clock starts, as a daemon has.
    model = worker.pipeline.classifier.current()
    worker.pipeline.preparer.start(model, worker.pipeline.classifier.path)
    while go and not Path(go).exists():
        time.sleep(0.01)
    memory = TreeMemory()
    memory.start()
    parsers = _descendants(os.getpid())
    cpu_before = _cpu_seconds([os.getpid()]), _cpu_seconds(parsers)
    started = time.time()
    result = worker.run_once()
    ended = time.time()
    cpu_after = _cpu_seconds([os.getpid()]), _cpu_seconds(parsers)
    memory.stop()
    assert all(poll.error is None for poll in result.polls), result.polls
    print(json.dumps({
        "stored": sum(poll.count("stored") for poll in result.polls),
        "started": started, "ended": ended, "seconds": ended - started,
        # VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork over into a child's
        # ru_maxrss, and the parent may have just stored a million messages (--preload).
        "peak_rss_mb": _kb(os.getpid(), "status", "VmHWM:") / 1024,
        "parse_rss_mb": memory.child_rss_mb, "tree_pss_mb": memory.tree_pss_mb,
        "poller_cpu_s": cpu_after[0] - cpu_before[0], "parser_cpu_s": cpu_after[1] - cpu_before[1],
    }))  # fmt: skip


def _cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` (all their threads), from /proc."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class TreeMemory(threading.Thread):
    """Samples this process's descendants (the parsing processes) every 0.1 s for the largest
    RSS, and the whole tree's PSS (shared pages counted once) every second: reading
    smaps_rollup walks a process's page tables (~3 ms at 300 MB), which would slow the run."""

    PSS_EVERY = 10  # RSS samples

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.child_rss_mb = 0.0
        self.tree_pss_mb = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        count = 0
        while not self._stop_event.wait(0.1):
            count += 1
            self.sample(pss=count % self.PSS_EVERY == 0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample(pss=True)

    def sample(self, pss: bool) -> None:
        pids = _descendants(os.getpid())
        rss = [_kb(pid, "status", "VmRSS:") for pid in pids]
        self.child_rss_mb = max(self.child_rss_mb, max(rss, default=0) / 1024)
        if pss:
            total = sum(_kb(pid, "smaps_rollup", "Pss:") for pid in [os.getpid(), *pids])
            self.tree_pss_mb = max(self.tree_pss_mb, total / 1024)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found.extend(int(c) for c in children)
        todo.extend(int(c) for c in children)
    return found


def _kb(pid: int, file: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _preload(url: str, count: int) -> None:
    """Store ``count`` messages from ``count // 3`` customers, labelled on every axis and
    received over the last 30 days: a history that deduplication and the repeat-contact reads
    must reach through their indexes, never by a scan. Done here, not in the measured worker."""
    from sqlalchemy import func, insert, literal, select

    from triage.store.database import Database
    from triage.store.schema import Classification, Customer, Message, utcnow

    db = Database(url)
    db.upgrade()
    now, step = utcnow(), timedelta(days=30) / max(1, count)
    with db.transaction() as session:
        session.execute(insert(Customer), [
            {"channel": "email", "address": f"p{i}@preload.test", "display_name": "",
             "created_at": now}
            for i in range(max(1, count // 3))
        ])  # fmt: skip
        customers = session.scalars(select(Customer.id).order_by(Customer.id)).all()
        for start in range(0, count, 50_000):
            session.execute(insert(Message), [
                {"source": "preload", "source_id": f"p:{i}", "content_key": f"{i:064x}",
                 "customer_id": customers[i % len(customers)], "raw": b"x", "subject": "old",
                 "channel": "email", "status": "classified", "received_at": now - i * step,
                 "created_at": now}
                for i in range(start, min(count, start + 50_000))
            ])  # fmt: skip
        for axis, label in (("kind", "complaint"), ("area", "billing"), ("urgency", "normal")):
            labels = select(
                Message.id, literal(axis), literal(label), literal(0.9), literal("preload"),
                literal(now, type_=Message.received_at.type),
            ).where(Message.source == "preload")  # fmt: skip
            session.execute(
                insert(Classification).from_select(
                    ["message_id", "axis", "label", "confidence", "model_version", "created_at"],
                    labels,
                )
            )
        assert session.scalar(select(func.count()).select_from(Classification)) == 3 * count
    db.dispose()


def write_config(workdir: Path, server: DovecotServer, users: list[str], db_url: str) -> Path:
    """A config with one IMAP source per user and the demo model active: trained by the first
    config of a benchmark run, then only activated (every config shares the models folder)."""
    workdir.mkdir(parents=True, exist_ok=True)
    models = workdir.parent / "models"
    trained = sorted(p.name for p in models.iterdir()) if models.is_dir() else []
    config = workdir / "config.toml"
    sources = "".join(
        f'[[sources]]\nname = "bench-{i}"\ntype = "imap"\nhost = "{server.host}"\n'
        f'port = {server.port}\ntls = "plain"\nusername = "{user}"\n'
        'password_env = "BENCH_IMAP_PASSWORD"\nidle = false\n'
        for i, user in enumerate(users)
    )
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[classifier]\nmodels_dir = "{models}"\n'
        f'[forwarding]\ndirectory = "{workdir / "forwards"}"\n'
        '[[departments]]\nname = "billing"\nemail = "b@x.test"\nareas = ["billing"]\n' + sources,
        encoding="utf-8",
    )
    triage = [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "WARNING"]
    env = {**os.environ, "BENCH_IMAP_PASSWORD": server.password}
    model = ["models", "activate", trained[-1]] if trained else ["train", *TRAIN, "--activate"]
    subprocess.run([*triage, *model], env=env, check=True, capture_output=True)
    return config


def triage_pass(
    config: Path, server: DovecotServer, workers: int = 1, free_parsing: bool = False
) -> dict[str, float]:
    """``workers`` processes each run one pass over the config's sources, started together;
    returns the messages stored, the wall time from the first start to the last end, and the
    largest memory figures of any one worker. ``free_parsing``: see `parse_free`."""
    go = config.parent / f"go-{workers}"
    env = {**os.environ, "BENCH_IMAP_PASSWORD": server.password}
    env.pop(PARSE_FREE_ENV, None)
    if free_parsing:
        env[PARSE_FREE_ENV] = "1"
    command = [sys.executable, __file__, "--child", str(config)]
    children = [
        subprocess.Popen([*command, "--go", str(go)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    time.sleep(0.5)  # let them get ready; each waits for `go` after loading the model
    go.touch()
    numbers = []
    for process in children:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"a benchmark worker failed with exit code {process.returncode}")
        numbers.append(json.loads(out.strip().splitlines()[-1]))
    seconds = max(n["ended"] for n in numbers) - min(n["started"] for n in numbers)
    return {
        "stored": sum(n["stored"] for n in numbers),
        "seconds": seconds,
        **{
            key: max(n[key] for n in numbers)
            for key in ("peak_rss_mb", "parse_rss_mb", "tree_pss_mb")
        },
        **{key: sum(n[key] for n in numbers) for key in ("poller_cpu_s", "parser_cpu_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages in the mailbox")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--preload", type=int, default=0, help="messages stored beforehand")
    parser.add_argument("--mix", choices=("real", "demo"), default="real",
                        help="message sizes: demo mail with attachments (mean ~7 KB), or demo mail only")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1,
                        help="passes per database, each on a fresh one; the median is shown")  # fmt: skip
    parser.add_argument("--workers", action="store_true",
                        help="also 1 and 2 worker processes over 8 mailboxes (PostgreSQL)")  # fmt: skip
    parser.add_argument("--parse-ceiling", action="store_true",
                        help="also a SQLite pass as if parsing cost nothing: the most a faster "
                        "MIME parser could give")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.go)
        return
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as temp:
        workdir = Path(temp)
        server = DovecotServer(workdir / "dovecot", cert=make_cert(workdir))
        (workdir / "dovecot").mkdir()
        server.start()
        try:
            report = run(workdir, server, args)
        finally:
            server.close()
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report, args)


def print_table(report: dict[str, float | None], args: argparse.Namespace) -> None:
    print(f"{args.n} messages ({args.mix} mix), {report['mb']:.1f} MB, "
          f"mean {report['mb'] * 1e3 / args.n:.1f} KB (preloaded: {args.preload})")  # fmt: skip
    print(f"{'contender':<34}{'msgs/s':>9}{'MB/s':>7}{'ratio':>7}"
          f"{'RSS MB':>8}{'parser RSS':>11}{'tree PSS':>10}{'CPU ms/msg poll+parse':>23}")  # fmt: skip
    print(f"{'fetch floor (imapclient)':<34}{report['floor_msgs_per_s']:>9.0f}"
          f"{report['floor_mb_per_s']:>7.1f}")  # fmt: skip
    print(f"{'  the same, imaplib trace off':<34}{report['floor_untraced_msgs_per_s']:>9.0f}"
          f"{report['floor_untraced_mb_per_s']:>7.1f}")  # fmt: skip
    rows = [(f"triage run --once, {b}", b) for b in ("sqlite", "postgres")]
    rows.append(("  sqlite, parsing free (ceiling)", "sqlite_parse_free"))
    rows += [(f"{k} worker(s), 8 mailboxes, postgres", f"workers_{k}") for k in (1, 2)]
    for label, key in rows:
        rate = report.get(f"{key}_msgs_per_s")
        if rate is None:
            continue
        print(f"{label:<34}{rate:>9.0f}{rate * report['mb'] / args.n:>7.1f}"
              f"{rate / report['floor_msgs_per_s']:>7.2f}{report[f'{key}_peak_rss_mb']:>8.0f}"
              f"{report[f'{key}_parse_rss_mb']:>11.0f}{report[f'{key}_tree_pss_mb']:>10.0f}"
              f"{report[f'{key}_poller_cpu_ms']:>16.2f} + {report[f'{key}_parser_cpu_ms']:.2f}")  # fmt: skip
    for backend in ("sqlite", "postgres"):
        if args.repeat > 1 and report.get(f"{backend}_min_msgs_per_s") is not None:
            print(f"{backend}: the median of {args.repeat} passes; they ranged from "
                  f"{report[f'{backend}_min_msgs_per_s']:.0f} to "
                  f"{report[f'{backend}_max_msgs_per_s']:.0f} msgs/s")  # fmt: skip


def run(workdir: Path, server: DovecotServer, args: argparse.Namespace) -> dict[str, float | None]:
    sizes: list[int] = []
    user = server.new_user()
    server.append(user, (sizes.append(len(m)) or m for m in corpus(args.n, args.mix)))
    measured, untraced = floor(server, user), floor(server, user, trace=False)
    report: dict[str, float | None] = {
        "n": args.n,
        "mb": sum(sizes) / 1e6,
        "floor_msgs_per_s": measured["msgs_per_s"],
        "floor_mb_per_s": measured["mb_per_s"],
        "floor_untraced_msgs_per_s": untraced["msgs_per_s"],
        "floor_untraced_mb_per_s": untraced["mb_per_s"],
        "postgres_msgs_per_s": None,
        "ratio_postgres": None,
    }
    backends = ["sqlite"] if args.skip_postgres else ["sqlite", "postgres"]
    for name in backends:
        runs = [
            _measure(workdir / f"{name}-{k}", name, server, user, args) for k in range(args.repeat)
        ]
        rates = sorted(n["stored"] / n["seconds"] for n in runs)
        _record(
            report, name, sorted(runs, key=lambda n: n["stored"] / n["seconds"])[len(runs) // 2]
        )
        report[f"{name}_min_msgs_per_s"], report[f"{name}_max_msgs_per_s"] = rates[0], rates[-1]
        report[f"ratio_{name}"] = report[f"{name}_msgs_per_s"] / measured["msgs_per_s"]  # type: ignore[operator]
    report["peak_rss_mb"] = max(report[f"{n}_peak_rss_mb"] for n in backends)  # type: ignore[type-var]
    if args.parse_ceiling:
        numbers = _measure(workdir / "sqlite-parse-free", "sqlite", server, user, args, True)
        _record(report, "sqlite_parse_free", numbers)
        rate = numbers["stored"] / numbers["seconds"]
        report["ratio_sqlite_parse_free"] = rate / measured["msgs_per_s"]
    if args.workers and not args.skip_postgres:
        users = [server.new_user() for _ in range(8)]
        for index, mailbox in enumerate(users):
            server.append(mailbox, corpus(args.n // 8, args.mix, first=args.n * (index + 1)))
        for workers in (1, 2):
            url = make_database()
            try:
                config = write_config(workdir / f"workers-{workers}", server, users, url)
                numbers = triage_pass(config, server, workers=workers)
            finally:
                drop_database(url)
            assert numbers["stored"] == args.n // 8 * 8, numbers
            _record(report, f"workers_{workers}", numbers)
    return report


def _measure(
    workdir: Path,
    backend: str,
    server: DovecotServer,
    user: str,
    args: argparse.Namespace,
    free_parsing: bool = False,
) -> dict[str, float]:
    """One ``run --once`` pass over the mailbox, on a fresh database of ``backend``."""
    url = f"sqlite:///{workdir / 'triage.db'}" if backend == "sqlite" else make_database()
    try:
        config = write_config(workdir, server, [user], url)
        if args.preload:
            _preload(url, args.preload)
        numbers = triage_pass(config, server, free_parsing=free_parsing)
    finally:
        if backend == "postgres":
            drop_database(url)
    assert numbers["stored"] == args.n, numbers
    return numbers


def _record(report: dict[str, float | None], key: str, numbers: dict[str, float]) -> None:
    report[f"{key}_msgs_per_s"] = numbers["stored"] / numbers["seconds"]
    for name in ("peak_rss_mb", "parse_rss_mb", "tree_pss_mb"):
        report[f"{key}_{name}"] = numbers[name]
    for name in ("poller", "parser"):  # CPU ms per message stored
        report[f"{key}_{name}_cpu_ms"] = numbers[f"{name}_cpu_s"] * 1e3 / max(1, numbers["stored"])


if __name__ == "__main__":
    main()
