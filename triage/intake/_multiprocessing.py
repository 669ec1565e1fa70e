"""Ending the processes ``multiprocessing`` starts: depends on library internals.

A stop must not wait for the parsing processes to finish batches nobody will store (they may
still be starting: a fork server preloads scikit-learn, each process loads the model), so their
processes are killed; ProcessPoolExecutor can only do that from Python 3.14
(``terminate_workers``). And a pool with the forkserver context leaves two helpers behind its
shutdown: the fork server (the pool's processes are its children) and the resource tracker.
They end when this process exits and they read EOF on a pipe, so a worker stopped by SIGTERM
would exit before its children, and they would be reparented to PID 1. The stop reaps them.

Re-check after upgrading Python: ``ProcessPoolExecutor._processes``,
``multiprocessing.forkserver._forkserver._stop()`` and
``multiprocessing.resource_tracker._resource_tracker._stop()`` (private, used by CPython's own
tests; present in 3.11 to 3.13). Without them a stop waits for the batches in flight, and the
helpers still end at exit, only unreaped.
"""

from __future__ import annotations

import logging
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver, resource_tracker
from pathlib import Path

log = logging.getLogger(__name__)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's processes now; its futures fail (BrokenProcessPool) and a shutdown
    that follows returns at once."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # already ended, or closed
            log.debug("a parsing process was already gone", exc_info=True)


def stop_helpers() -> None:
    """Stop the fork server and the resource tracker if they run, and reap them."""
    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(helper, "_stop", None)
        if stop is None:
            continue
        try:
            stop()
        except (OSError, ChildProcessError):
            log.debug("a multiprocessing helper was already gone", exc_info=True)


def kill_descendants() -> int:
    """SIGKILL every process descended from this one (a cold stop); returns how many.

    Reads ``/proc`` (Linux; elsewhere nothing is killed) and takes no lock, so it is safe in
    a signal handler.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(found)
