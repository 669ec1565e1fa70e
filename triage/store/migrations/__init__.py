"""Alembic migrations of the history store (``script_location = triage.store:migrations``)."""

from __future__ import annotations
