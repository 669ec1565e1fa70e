"""Shared pytest setup: loads the real-server fixtures (tests/servers/fixtures.py)."""

from __future__ import annotations

pytest_plugins = ["tests.servers.fixtures"]
