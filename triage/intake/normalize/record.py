"""The record a mail becomes (``ParsedEmail``), and whether its body was lost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class NormalizationError(Exception):
    """Raised with a one-sentence message when bytes are not a usable email at all."""


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """One email reduced to what classification and forwarding need."""

    message_id: str | None  # with angle brackets, as in the header
    in_reply_to: str | None
    references: tuple[str, ...]
    thread_key: str  # first Reference, In-Reply-To, own Message-ID, else "sha256:..."
    sender_address: str  # lowercased; From, else Sender, else Return-Path; "" if none
    sender_name: str  # decoded display name, "" if none
    subject: str  # RFC 2047 decoded, whitespace folded
    date: datetime | None  # tz-aware (UTC when the header had no zone)
    body_text: str  # plain text preferred, else HTML as text; attachments excluded
    text_for_classification: str  # body without quotes/history/signature, one line
    auto_reason: str | None  # why this is machine mail that must never be forwarded
    attachments: tuple[str, ...]  # decoded filenames; "(unnamed type/subtype)" if nameless
    html_only: bool
    warnings: tuple[str, ...]  # decoding problems met and how they were resolved
    language: str  # "uk", "ru", "en" or "und"
    channel: str = "email"  # "email", or the social network a post came from
    url: str | None = None  # a link to the post, for social channels
    post_kind: str | None = None  # a post's kind on its channel: "mention", "dm", ...


_LOST = ("ignored", "skipped", "could not be decoded")
"""Words of the warnings above that mean content was dropped, not that it was absent."""


def lost_body(email: ParsedEmail) -> str | None:
    """Why the body is empty when the mail had one we could not read (hostile nesting, a
    broken part), else None: such a mail must not be classified on its subject alone."""
    if email.body_text.strip():
        return None
    return next((w for w in email.warnings if any(word in w for word in _LOST)), None)
