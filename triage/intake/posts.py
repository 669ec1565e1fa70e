"""Normalization of social posts (X, Telegram, Mastodon) into the record emails become."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from triage.intake.normalize import (
    NormalizationError,
    ParsedEmail,
    guess_language,
    trim_for_classification,
)

MAX_TEXT = 20000


def parse_post(raw: bytes) -> ParsedEmail:
    """Turn a connector's post JSON (``connectors.base.Post``) into a normalized record.

    Raises:
        NormalizationError: the bytes are not a post object with a channel and an author.
    """
    try:
        post = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NormalizationError(f"The post is not valid JSON: {exc}.") from None
    if not isinstance(post, dict) or not post.get("channel") or not post.get("author_handle"):
        raise NormalizationError("The post has no channel or no author.")
    channel = str(post["channel"])
    text = str(post.get("text") or "")[:MAX_TEXT]
    own_id = f"{channel}:{post.get('id', '')}"
    conversation = post.get("conversation_id") or post.get("in_reply_to")
    return ParsedEmail(
        message_id=own_id,
        in_reply_to=f"{channel}:{post['in_reply_to']}" if post.get("in_reply_to") else None,
        references=(),
        thread_key=str(conversation or post.get("id", "")),  # the pipeline adds the channel
        sender_address=str(post["author_handle"]).lower(),
        sender_name=str(post.get("author_name") or ""),
        subject="",  # posts have none; forwards describe the post instead
        date=_date(post.get("created_at")),
        body_text=text,
        text_for_classification=trim_for_classification(text) or text,
        auto_reason=None,
        attachments=(),
        html_only=False,
        warnings=(),
        language=guess_language(text),
        channel=channel,
        url=post.get("url"),
        post_kind=str(post["kind"])[:16] if post.get("kind") else None,
    )


def _date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
