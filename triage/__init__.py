"""triage: a support-triage worker that polls mailboxes, classifies requests and forwards them."""

from __future__ import annotations

__version__ = "0.1.0"
