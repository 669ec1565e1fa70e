"""Telegram: a bot's incoming messages through the Bot API's ``getUpdates`` (long polling).

Telegram forgets an update as soon as ``getUpdates`` is called with a higher ``offset``, so one
fetch makes one call with the stored offset and yields what it got; the next poll's call, made
with the committed checkpoint ``{"offset": last_update_id + 1}``, is what confirms them. A crash
before the commit therefore re-reads the same updates. The bot token is part of every URL: it is
redacted from every error and never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from connectors.base import (
    Checkpoint,
    ConnectorAuthError,
    ConnectorRateLimited,
    ConnectorUnavailable,
    Post,
    RawItem,
    post_item,
)

log = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org"
DEFAULT_BACKOFF = timedelta(seconds=30)
MAX_SKIP_ROUNDS = 10
"""Calls per fetch while every update is chatter not addressed to the bot."""


class TelegramConnector:
    """Private chats with the bot, and group messages that mention, reply to or command it."""

    def __init__(
        self,
        name: str,
        *,
        token: Callable[[], str],
        api_base_url: str = TELEGRAM_API,
        bot_username: str | None = None,
        long_poll_seconds: int = 10,
        limit: int = 100,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._token_source = token
        self._token: str | None = None
        self.api_base_url = api_base_url.rstrip("/")
        self.bot_username = bot_username.lstrip("@").lower() if bot_username else None
        self.long_poll_seconds = long_poll_seconds
        self.limit = limit
        self.timeout = timeout
        self._session: requests.Session | None = None
        # urllib3 logs each request line (with the token in the path) at DEBUG.
        urllib3_log = logging.getLogger("urllib3.connectionpool")
        if urllib3_log.getEffectiveLevel() < logging.INFO:
            urllib3_log.setLevel(logging.INFO)

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]:
        """The messages addressed to the bot among the pending updates, in update order."""
        offset = (checkpoint or {}).get("offset")
        bot = self._bot_username()
        for _ in range(MAX_SKIP_ROUNDS):
            updates = self._call("getUpdates", self._updates_params(offset))
            if not isinstance(updates, list) or not all(_is_update(u) for u in updates):
                raise ConnectorUnavailable("Telegram sent an unexpected answer to getUpdates")
            if not updates:
                return
            end = max(int(u["update_id"]) for u in updates) + 1
            addressed = [u for u in updates if _addressed(u.get("message"), bot)]
            for i, update in enumerate(addressed):
                last = i == len(addressed) - 1
                # The last one also covers the chatter after it: that needs no storing.
                state = {"offset": end if last else int(update["update_id"]) + 1}
                yield self._item(update["message"]), state
            if addressed:
                return
            offset = end  # only chatter: confirming it loses nothing

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Nothing to do: the next call with the committed offset confirms the updates."""

    def interrupt(self) -> None:
        """Nothing to interrupt: every request ends within the timeout (a long poll too)."""

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ HTTP

    def _updates_params(self, offset: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "timeout": self.long_poll_seconds,
            "limit": self.limit,
            "allowed_updates": '["message"]',
        }
        if offset is not None:
            params["offset"] = offset
        return params

    def _bot_username(self) -> str:
        if self.bot_username is None:
            me = self._call("getMe", {})
            self.bot_username = str(me.get("username") or "").lower()
        return self.bot_username

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        """One Bot API call; the ``result`` of an ``ok`` answer, else a connector error."""
        token = self._token or self._token_source()
        self._token = token
        url = f"{self.api_base_url}/bot{token}/{method}"
        try:
            response = self._http().get(
                url, params=params, timeout=self.timeout + self.long_poll_seconds
            )
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            detail = str(exc).replace(token, "<token>")
            raise ConnectorUnavailable(
                f"cannot reach the Telegram Bot API for {method}: {type(exc).__name__}: {detail}"
            ) from None
        if not isinstance(body, dict) or "ok" not in body:
            raise ConnectorUnavailable(f"Telegram sent an unexpected answer to {method}")
        if body["ok"]:
            return body.get("result")
        raise self._error(method, response.status_code, body)

    def _error(self, method: str, status: int, body: dict[str, Any]) -> Exception:
        code = int(body.get("error_code") or status)
        description = str(body.get("description") or "no description")
        if code == 429:
            retry_after = (body.get("parameters") or {}).get("retry_after")
            delay = timedelta(seconds=int(retry_after)) if retry_after else DEFAULT_BACKOFF
            retry_at = datetime.now(UTC) + delay
            return ConnectorRateLimited(
                f"Telegram rate limit reached ({description}); paused until "
                f"{retry_at:%Y-%m-%d %H:%M:%S} UTC",
                retry_at,
            )
        if code in (401, 403, 404):
            return ConnectorAuthError(
                f"Telegram refused the bot token of source {self.name} ({code} {description}); "
                "check its token_env or token_file"
            )
        if code == 409:  # a webhook is set, or another process polls with the same token
            return ConnectorAuthError(
                f"Telegram refused {method} for source {self.name}: {description}"
            )
        return ConnectorUnavailable(f"Telegram answered {code} to {method}: {description}")

    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False
        return self._session

    # ------------------------------------------------------------------ posts

    def _item(self, message: dict[str, Any]) -> RawItem:
        post = _post(message)
        return post_item(self.name, f"telegram:{post['id']}", post)


def _is_update(update: object) -> bool:
    return isinstance(update, dict) and isinstance(update.get("update_id"), int)


def _addressed(message: dict[str, Any] | None, bot: str) -> bool:
    """Private chats always; in groups a mention of the bot, a reply to it, or its command."""
    if not isinstance(message, dict) or not (message.get("text") or message.get("caption")):
        return False
    if (message.get("chat") or {}).get("type") == "private":
        return True
    replied = (message.get("reply_to_message") or {}).get("from") or {}
    if bot and str(replied.get("username") or "").lower() == bot:
        return True
    text = str(message.get("text") or message.get("caption") or "")
    for entity in message.get("entities") or message.get("caption_entities") or []:
        word = _entity_text(text, entity)
        if entity.get("type") == "mention" and word.lstrip("@").lower() == bot:
            return True
        if entity.get("type") == "bot_command" and entity.get("offset") == 0:
            target = word.partition("@")[2].lower()
            if not target or target == bot:
                return True
    return False


def _entity_text(text: str, entity: dict[str, Any]) -> str:
    """The text an entity covers: Telegram counts offsets in UTF-16 code units, not characters."""
    units = text.encode("utf-16-le")
    start, length = int(entity.get("offset", 0)), int(entity.get("length", 0))
    return units[2 * start : 2 * (start + length)].decode("utf-16-le", "replace")


def _post(message: dict[str, Any]) -> Post:
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    chat_id, message_id = chat.get("id"), message.get("message_id")
    private = chat.get("type") == "private"
    reply_to = (message.get("reply_to_message") or {}).get("message_id")
    name = " ".join(p for p in (sender.get("first_name"), sender.get("last_name")) if p)
    return Post(
        channel="telegram",
        id=f"{chat_id}:{message_id}",
        kind="dm" if private else "message",
        author_id=str(sender.get("id", "")),
        author_handle=f"@{sender['username']}"
        if sender.get("username")
        else str(sender.get("id", "")),
        author_name=name,
        text=str(message.get("text") or message.get("caption") or ""),
        url=None
        if private or not chat.get("username")
        else f"https://t.me/{chat['username']}/{message_id}",
        created_at=datetime.fromtimestamp(int(message.get("date") or 0), UTC).isoformat(),
        conversation_id=f"{chat_id}" if private else f"{chat_id}:{reply_to or message_id}",
        in_reply_to=f"{chat_id}:{reply_to}" if reply_to else None,
    )
