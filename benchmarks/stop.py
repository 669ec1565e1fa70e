"""How long the daemon takes to stop on SIGTERM, at the moments an admin meets, beside a baseline.

Seeds a throwaway Dovecot on loopback with N messages (the ingest benchmark's realistic mix),
starts ``triage run`` (the daemon, with the demo model, forwarding to a directory) on a fresh
database, sends SIGTERM at a moment seen from outside, and measures the seconds from the signal
to the exit of the process, its exit code, and the processes of its tree still alive 5 s later:

- ``mid-poll``: some of the mailbox is stored, not all (a batch is being fetched, parsed or
  committed, forwards are being written);
- ``stalled-fetch``: the server stopped sending in the middle of a FETCH response (a proxy holds
  the rest back);
- ``idle``: everything is stored and forwarded; the worker waits in IMAP IDLE.

``--baseline REV`` runs the same moments with that git revision (checked out in a temporary
worktree) in the same run, so the two builds meet the same machine and the same mail. A stop
that does not end within ``--hang`` seconds is recorded as a hang and the process is killed.

Usage: ``python benchmarks/stop.py [--n 3000] [--baseline REV] [--skip-postgres] [--hang 60]
[--json]``. Needs Dovecot and, for PostgreSQL, the local server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from benchmarks.ingest import corpus, write_config  # noqa: E402
from tests.helpers import ProcessTree, wait_until  # noqa: E402
from tests.servers.certs import make_cert  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.postgres import drop_database, make_database  # noqa: E402
from tests.servers.proxy import FaultyProxy  # noqa: E402

MOMENTS = ("mid-poll", "stalled-fetch", "idle")


def stop_once(
    build: Path, workdir: Path, server: DovecotServer, user: str, backend: str, moment: str,
    n: int, hang: float,
) -> dict[str, object]:  # fmt: skip
    """One daemon of ``build`` on a fresh database, stopped at ``moment``."""
    url = f"sqlite:///{workdir / 'triage.db'}" if backend == "sqlite" else make_database()
    proxy = FaultyProxy(server.host, server.port)
    try:
        with _in(build):  # the database is created and the model activated by that build
            config = write_config(workdir, server, [user], url)
        _through(config, proxy.port)
        if moment == "stalled-fetch":
            proxy.hold_after = 200_000  # inside the first FETCH response
        stored = _counter(url)
        log = workdir / "daemon.log"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "INFO",
             "run"],
            cwd=build, env={**os.environ, "PYTHONPATH": str(build),
                            "BENCH_IMAP_PASSWORD": server.password},
            stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        tree = ProcessTree(daemon.pid)
        ready = {
            "mid-poll": lambda: 0 < stored() < n,
            "stalled-fetch": proxy.holding.is_set,
            "idle": lambda: stored() == n and _forwarded(workdir) and _quiet(log),
        }[moment]
        reached = wait_until(ready, 600, step=0.01)
        began = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            code: int | None = daemon.wait(hang)
            seconds: float | None = time.monotonic() - began
        except subprocess.TimeoutExpired:
            code, seconds = None, None  # a hang
            daemon.kill()
            daemon.wait()
        tree.stop()
        survivors = len(tree.survivors(within=5))
        for pid in tree.survivors(within=0):
            os.kill(pid, signal.SIGKILL)
        return {"reached": reached, "seconds": seconds, "exit": code, "survivors": survivors,
                "stored_at_stop": stored()}  # fmt: skip
    finally:
        proxy.close()
        if backend == "postgres":
            drop_database(url)


@contextmanager
def _in(build: Path) -> Iterator[None]:
    """Commands started meanwhile (``python -m triage``) run ``build``'s code."""
    before, path = Path.cwd(), os.environ.get("PYTHONPATH")
    os.chdir(build)
    os.environ["PYTHONPATH"] = str(build)
    try:
        yield
    finally:
        os.chdir(before)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


def _through(config: Path, port: int) -> None:
    """The config's IMAP source through the proxy, with IDLE on."""
    body = config.read_text(encoding="utf-8")
    body = body.replace("idle = false", "idle = true")
    body = body.replace("\nport = ", f"\nport = {port}\n# dovecot port = ", 1)
    config.write_text(body, encoding="utf-8")


def _counter(url: str) -> Callable[[], int]:
    engine = create_engine(url)

    def stored() -> int:
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT count(*) FROM messages")).scalar() or 0)
        except Exception:  # not created yet
            return 0

    return stored


def _forwarded(workdir: Path) -> bool:
    return (workdir / "forwards").is_dir() and any((workdir / "forwards").iterdir())


def _quiet(log: Path) -> bool:
    """The last batch's summary is logged: the poll is over."""
    return "queued for forwarding" in log.read_text(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="messages in the mailbox")
    parser.add_argument("--baseline", metavar="REV", help="a git revision to measure beside")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--hang", type=float, default=60.0, help="seconds that count as a hang")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triage-stop-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        builds = {"this build": ROOT}
        if args.baseline:
            builds[f"baseline {args.baseline}"] = work / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                            str(work / "baseline"), args.baseline], check=True,
                           capture_output=True)  # fmt: skip
        server = DovecotServer(work / "dovecot", cert=make_cert(work / "tls"))
        server.start()
        try:
            user = server.new_user()
            server.append(user, corpus(args.n))
            backends = ["sqlite"] if args.skip_postgres else ["sqlite", "postgres"]
            report = {
                f"{name}|{backend}|{moment}": stop_once(
                    build, work / f"{'this' if build == ROOT else 'base'}-{backend}-{moment}",
                    server, user, backend, moment, args.n, args.hang,
                )
                for moment in MOMENTS
                for backend in backends
                for name, build in builds.items()
            }  # fmt: skip
        finally:
            server.close()
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(work / "baseline")], check=False)  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return
    print(f"SIGTERM to exit, N={args.n} (seconds; 'hang' = still running after {args.hang:g} s)")
    print(f"{'moment':<14} {'db':<9} {'build':<22} {'stop s':>7} {'exit':>5} {'left':>5}")
    for key, row in report.items():
        name, backend, moment = key.split("|")
        seconds = "hang" if row["seconds"] is None else f"{row['seconds']:.2f}"
        print(f"{moment:<14} {backend:<9} {name:<22} {seconds:>7} {row['exit']!s:>5} "
              f"{row['survivors']:>5}")  # fmt: skip


if __name__ == "__main__":
    main()
