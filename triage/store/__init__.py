"""The history store: customers, conversations, messages, classifications, outbox, checkpoints."""

from __future__ import annotations
