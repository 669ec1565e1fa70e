"""systemd's notify protocol (sd_notify(3)), in a few lines instead of a dependency.

Under ``Type=notify`` systemd passes a unix datagram socket in ``NOTIFY_SOCKET``; the worker
sends ``READY=1`` once its jobs are scheduled, ``WATCHDOG=1`` from a scheduler job (so a hung
scheduler stops the pings and systemd restarts the worker), ``RELOADING=1`` around a SIGHUP
and ``STOPPING=1`` at a warm stop. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to systemd; False when not under it.

    Errors are logged, never raised: a lost notification must not stop the worker.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2_000_000)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None


def watchdog() -> None:
    """One keep-alive ping (a scheduler job)."""
    notify("WATCHDOG=1")


def reloading() -> None:
    """Tell systemd a reload started (MONOTONIC_USEC is what Type=notify-reload wants)."""
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
