"""One module per schema revision."""

from __future__ import annotations
