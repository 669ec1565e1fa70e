"""Errors the worker reports to the admin: each carries one plain sentence, no traceback needed."""

from __future__ import annotations

from collections.abc import Collection, Iterable


class TriageError(Exception):
    """Base class of the worker's own errors; ``str(exc)`` is what the admin reads."""

    exit_code = 1


class ConfigError(TriageError):
    """The configuration is invalid; the message names the key."""

    exit_code = 2


class StoreError(TriageError):
    """The history store cannot be opened or migrated."""

    exit_code = 3


class NoActiveModel(TriageError):
    """No classifier is active yet, or the active one cannot be loaded."""

    exit_code = 4


class NothingNamed(TriageError):
    """An id given on the command line names nothing the command can act on."""


def check_named(named: Collection[int], found: Iterable[int], what: str, hint: str) -> None:
    """Refuse ids that name no such thing: a script must not read "0 done" as success."""
    missing = sorted(set(named) - set(found))
    if missing:
        ids = ", ".join(map(str, missing))
        raise NothingNamed(f"there is no {what} {ids}; see `{hint}`")
