"""Named crash points, so the crash-safety tests can kill the worker exactly where it hurts.

``TRIAGE_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time) makes the process SIGKILL
itself when it reaches that point: no cleanup, no finally blocks, as a power cut would.
``TRIAGE_SIGNAL_AT=<point>[:<n>]`` sends it SIGTERM there instead (an admin's stop at that very
moment) and goes on, so the stop tests see what the handler does from there. Unset, a crash
point costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = frozenset(
    {
        "fetched",  # a batch is fetched, nothing of it is stored yet
        "submitted",  # a batch is handed to the parsing processes
        "classified",  # the batch is classified, its transaction not yet committed
        "committed",  # the batch and its checkpoint are committed
        "smtp-sending",  # a forward is about to be handed to the SMTP server
        "smtp-accepted",  # the SMTP server accepted a forward, we have not recorded it
    }
)

_reached: Counter[tuple[str, str]] = Counter()


def crash_point(name: str) -> None:
    """Kill this process if ``TRIAGE_CRASH_AT`` names this point (and its count is reached);
    send it SIGTERM, once, if ``TRIAGE_SIGNAL_AT`` does."""
    for variable, sig in (
        ("TRIAGE_CRASH_AT", signal.SIGKILL),
        ("TRIAGE_SIGNAL_AT", signal.SIGTERM),
    ):
        wanted = os.environ.get(variable)
        if not wanted:
            continue
        point, _, nth = wanted.partition(":")
        if point != name:
            continue
        _reached[variable, name] += 1
        if _reached[variable, name] == int(nth or 1):
            os.kill(os.getpid(), sig)
