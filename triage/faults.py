"""Named crash points, so the crash-safety tests can kill the worker exactly where it hurts.

``TRIAGE_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time) makes the process SIGKILL
itself when it reaches that point: no cleanup, no finally blocks, as a power cut would. Unset, a
crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = frozenset(
    {
        "fetched",  # a batch is fetched, nothing of it is stored yet
        "classified",  # the batch is classified, its transaction not yet committed
        "committed",  # the batch and its checkpoint are committed
        "smtp-sending",  # a forward is about to be handed to the SMTP server
        "smtp-accepted",  # the SMTP server accepted a forward, we have not recorded it
    }
)

_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Kill this process if ``TRIAGE_CRASH_AT`` names this point (and its count is reached)."""
    wanted = os.environ.get("TRIAGE_CRASH_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
