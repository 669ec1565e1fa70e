"""A stop request shared by every part of one worker process, and the signals that make it.

SIGTERM or SIGINT sets it; polls look at it between batches and abandon what is not committed
(the checkpoint did not move, so the next start reads it again), a flush looks at it between
forwards (the forward in hand finishes), and a connector blocked on its server is interrupted
(its socket shut down) so a stop never waits for a slow FETCH. A second signal gives up on the
work still running (a cold stop). Each part notes what it finished or abandoned, and the worker
logs the notes in one line when it has stopped.

The handlers only set an event and shut sockets down: no lock is taken in a signal handler,
which runs in the main thread between two bytecodes of whatever it was doing.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


class Stopped(Exception):
    """A stop was requested: the work in hand was abandoned (nothing of it is committed).

    ``abandoned`` counts the items read but left uncommitted, when the raiser knows them.
    """

    def __init__(self, abandoned: int = 0) -> None:
        super().__init__(f"stop requested; {abandoned} item(s) abandoned")
        self.abandoned = abandoned


class Stop:
    """The stop request of one worker process."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interrupts: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._notes: list[str] = []
        self.cause: str | None = None  # the signal's name, once requested
        self.cold = False  # a second request: stop waiting for the work still running
        self.requested_at: float | None = None
        self.on_request: Callable[[], None] | None = None  # wakes the daemon's main loop

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise Stopped when a stop was requested."""
        if self._event.is_set():
            raise Stopped()

    def request(self, cause: str) -> None:
        """Ask every part to stop; interrupt what blocks on a server. Safe in a signal handler.

        A second request makes the stop cold: the worker stops waiting for what still runs.
        """
        if self._event.is_set():
            self.cold = True
        else:
            self.cause, self.requested_at = cause, time.monotonic()
            self._event.set()
        for interrupt in list(self._interrupts.values()):  # list(): one atomic copy
            _quietly(interrupt)
        if self.on_request is not None:
            self.on_request()

    @contextmanager
    def interruptible(self, interrupt: Callable[[], None]) -> Iterator[None]:
        """Within the block, a stop request calls ``interrupt`` (at once, if already made)."""
        key = next(self._ids)
        self._interrupts[key] = interrupt
        if self._event.is_set():
            _quietly(interrupt)
        try:
            yield
        finally:
            self._interrupts.pop(key, None)

    def note(self, what: str) -> None:
        """Remember what a part finished or abandoned because of the stop, for the last line."""
        self._notes.append(what)

    def summary(self) -> str:
        """One sentence: what the stop finished and abandoned, and how long it took."""
        took = time.monotonic() - self.requested_at if self.requested_at else 0.0
        done = "; ".join(self._notes) or "nothing was in hand"
        return f"stopped on {self.cause} in {took:.1f} s: {done}"


@contextmanager
def on_signals(stop: Stop, cold: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT request ``stop``; a second one calls ``cold``.

    Only in the main thread (Python delivers signals there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s received again: stopping now, without waiting", name)
            stop.request(name)
            if cold is not None:
                cold()
            return
        log.info(
            "%s received: stopping (a batch being committed is finished, forwards in hand go "
            "out; what is being fetched or parsed is left for the next start)",
            name,
        )
        stop.request(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _quietly(interrupt: Callable[[], None]) -> None:
    try:
        interrupt()
    except Exception:  # an interrupt is best effort: the work it cuts short fails anyway
        log.debug("interrupting failed", exc_info=True)
