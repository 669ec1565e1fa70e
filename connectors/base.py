"""The connector contract: what every source (IMAP, Maildir, X, ...) yields to the pipeline.

A connector knows how to read its source and nothing else: it never parses, classifies or stores.
It yields raw items together with the checkpoint that is valid once that item (and every item
before it) has been stored, so the pipeline can commit a batch and its checkpoint atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

Checkpoint = dict[str, Any]
"""Opaque JSON-serialisable state owned by the connector (e.g. IMAP ``{uidvalidity, last_uid}``)."""


@dataclass(frozen=True, slots=True)
class RawItem:
    """One item as the source delivered it, before normalization.

    ``source_id`` is stable for the item's life in the source
    ("imap:<account>/<folder>:<uidvalidity>:<uid>"); ``raw`` holds the RFC 5322 bytes for mail
    (``format="rfc822"``). ``truncated`` is set when the item exceeded the size limit and only
    its headers were fetched; ``size`` is then the full size.
    """

    source: str
    source_id: str
    raw: bytes
    received_at: datetime
    format: str = "rfc822"
    size: int = 0
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Post(TypedDict, total=False):
    """A social post or direct message, as social connectors hand it to the pipeline.

    Serialised as JSON into ``RawItem.raw`` (``format="post"``), so the store keeps exactly what
    the connector saw and the content key recognises a post read twice.
    """

    channel: str  # "x", "telegram", "mastodon"
    id: str
    kind: str  # "mention", "reply", "dm", "message"
    author_id: str
    author_handle: str  # "@name" where the network has handles, else the user id
    author_name: str
    text: str
    url: str | None
    created_at: str  # ISO 8601, UTC
    conversation_id: str | None
    in_reply_to: str | None


def post_item(source: str, source_id: str, post: Post) -> RawItem:
    """The RawItem for one post; ``received_at`` is the post's own time when it has one."""
    raw = json.dumps(post, ensure_ascii=False, sort_keys=True).encode("utf-8")
    created = post.get("created_at")
    received = datetime.fromisoformat(created) if created else datetime.now(UTC)
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return RawItem(source, source_id, raw, received, format="post", size=len(raw))


class Connector(Protocol):
    """A source of raw items. ``fetch`` resumes after ``checkpoint`` (None: from the beginning)."""

    name: str

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]: ...

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Called during ``fetch`` once ``items`` are committed: mark, flag or move them now."""
        ...

    def interrupt(self) -> None:
        """Called from another thread to stop a ``fetch`` blocked on the server (a stop
        request); the fetch then fails, and what it read but was not committed is read again
        at the next poll. A connector whose every call is short may do nothing."""
        ...

    def close(self) -> None: ...


class ConnectorError(Exception):
    """Base class of connector failures; the message is one plain sentence."""


class ConnectorUnavailable(ConnectorError):
    """A transient failure (server down, timeout, dropped connection): retry later."""


class ConnectorAuthError(ConnectorError):
    """A permanent failure (login refused, folder missing): retrying will not help until fixed."""


class ConnectorRateLimited(ConnectorUnavailable):
    """The service asked us to slow down: do not poll this source again before ``retry_at``.

    Raised instead of sleeping inside the poll (as tweepy's ``wait_on_rate_limit`` would), so a
    rate-limited source never holds a worker thread and never blocks other sources.
    """

    def __init__(self, message: str, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at
