"""Ingest throughput: the IMAP fetch floor against `triage run --once` end to end, in one run.

Seeds a throwaway Dovecot on loopback with N messages (the bundled demo mailbox's real-world mix:
Ukrainian and English, windows-1251, KOI8-U, HTML-only, multipart with attachments, each copy
made unique), then measures side by side:

- floor: imapclient, 500 UIDs per ``FETCH BODY.PEEK[]``, bytes discarded (what Python can fetch);
- triage on SQLite and on PostgreSQL: one ``run --once`` pass (fetch, parse, classify with the
  demo model, store, queue forwards), each in its own process, so peak RSS is its own.

Usage: ``python benchmarks/ingest.py [--n 10000] [--json] [--skip-postgres] [--preload M]``.
``--preload M`` stores M synthetic messages first, to show that dedup is by index, not by scan.
Needs Dovecot (``apt-get install dovecot-imapd``) and, for PostgreSQL, the local server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imapclient import IMAPClient  # noqa: E402

from tests.servers.certs import make_cert  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.postgres import drop_database, make_database  # noqa: E402

TRAIN = ["--data", str(ROOT / "demo/training.csv"), "--text-column", "subject",
         "--text-column", "body", "--label", "kind", "--label", "area", "--label", "urgency"]  # fmt: skip


def corpus(n: int) -> list[bytes]:
    """N unique messages cycling through the demo mailbox's real-world mix."""
    templates = [p.read_bytes() for p in sorted((ROOT / "demo/mailbox").glob("*/*"))]
    messages = []
    for i in range(n):
        raw = templates[i % len(templates)]
        raw = re.sub(rb"(?im)^Message-ID:[^\n]*\n", b"", raw, count=1)
        messages.append(f"Message-ID: <bench-{i}@bench.test>\n".encode() + raw)
    return messages


def floor(server: DovecotServer, user: str) -> dict[str, float]:
    client = IMAPClient(server.host, port=server.port, ssl=False)
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


def child(config_path: str, preload: int) -> None:
    """One `run --once` pass in this process; prints its numbers as JSON."""
    from triage.config import load_config
    from triage.scheduler import Worker

    worker = Worker(load_config(Path(config_path)))
    worker.db.upgrade()
    if preload:
        _preload(worker, preload)
    # Load the model and start the parsing processes before the clock starts, as a daemon has.
    model = worker.pipeline.classifier.current()
    worker.pipeline.preparer.start(model, worker.pipeline.classifier.path)
    started = time.perf_counter()
    result = worker.run_once()
    seconds = time.perf_counter() - started
    [poll] = result.polls
    assert poll.error is None, poll.error
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"stored": poll.count("stored"), "seconds": seconds, "peak_rss_mb": rss_mb}))


def _preload(worker: object, count: int) -> None:
    from sqlalchemy import insert

    from triage.store.schema import Message

    rows = ({"source": "preload", "source_id": f"p:{i}", "content_key": f"{i:064x}",
             "raw": b"x", "subject": "old", "channel": "email", "status": "stored"}
            for i in range(count))  # fmt: skip
    with worker.db.transaction() as session:  # type: ignore[attr-defined]
        batch: list[dict[str, object]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 50_000:
                session.execute(insert(Message), batch)
                batch.clear()
        if batch:
            session.execute(insert(Message), batch)


def triage_pass(
    workdir: Path, server: DovecotServer, user: str, db_url: str, preload: int
) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[classifier]\nmodels_dir = "{workdir / "models"}"\n'
        f'[forwarding]\ndirectory = "{workdir / "forwards"}"\n'
        '[[departments]]\nname = "billing"\nemail = "b@x.test"\nareas = ["billing"]\n'
        '[[sources]]\nname = "bench"\ntype = "imap"\n'
        f'host = "{server.host}"\nport = {server.port}\ntls = "plain"\nusername = "{user}"\n'
        'password_env = "BENCH_IMAP_PASSWORD"\nidle = false\n',
        encoding="utf-8",
    )
    env = {**os.environ, "BENCH_IMAP_PASSWORD": server.password}
    triage = [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "WARNING"]
    subprocess.run(
        [*triage, "train", *TRAIN, "--activate"], env=env, check=True, capture_output=True
    )
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(config), "--preload", str(preload)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages in the mailbox")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--preload", type=int, default=0, help="messages stored beforehand")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.preload)
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
        return
    print(f"{args.n} messages, {report['mb']:.1f} MB (preloaded: {args.preload})")
    print(f"{'contender':<28}{'msgs/s':>10}{'MB/s':>8}{'ratio':>8}{'peak RSS MB':>13}")
    print(
        f"{'fetch floor (imapclient)':<28}{report['floor_msgs_per_s']:>10.0f}{report['floor_mb_per_s']:>8.1f}"
    )
    for backend in ("sqlite", "postgres"):
        rate = report.get(f"{backend}_msgs_per_s")
        if rate is not None:
            print(f"{'triage run --once, ' + backend:<28}{rate:>10.0f}"
                  f"{rate * report['mb'] / args.n:>8.1f}{report[f'ratio_{backend}']:>8.2f}"
                  f"{report[f'{backend}_peak_rss_mb']:>13.0f}")  # fmt: skip


def run(workdir: Path, server: DovecotServer, args: argparse.Namespace) -> dict[str, float | None]:
    messages = corpus(args.n)
    user = server.new_user()
    server.append(user, messages)
    measured = floor(server, user)
    report: dict[str, float | None] = {
        "n": args.n,
        "mb": sum(map(len, messages)) / 1e6,
        "floor_msgs_per_s": measured["msgs_per_s"],
        "floor_mb_per_s": measured["mb_per_s"],
    }
    backends = {"sqlite": f"sqlite:///{workdir / 'sqlite' / 'triage.db'}"}
    if not args.skip_postgres:
        backends["postgres"] = make_database()
    rss = []
    for name, url in backends.items():
        try:
            numbers = triage_pass(workdir / name, server, user, url, args.preload)
        finally:
            if name == "postgres":
                drop_database(url)
        assert numbers["stored"] == args.n, numbers
        rate = args.n / numbers["seconds"]
        report[f"{name}_msgs_per_s"] = rate
        report[f"ratio_{name}"] = rate / measured["msgs_per_s"]
        report[f"{name}_peak_rss_mb"] = numbers["peak_rss_mb"]
        rss.append(numbers["peak_rss_mb"])
    report.setdefault("postgres_msgs_per_s", None)
    report.setdefault("ratio_postgres", None)
    report["peak_rss_mb"] = max(rss)
    return report


if __name__ == "__main__":
    main()
