"""Errors the worker reports to the admin: each carries one plain sentence, no traceback needed."""

from __future__ import annotations


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
