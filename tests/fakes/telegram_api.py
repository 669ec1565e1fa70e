"""A fake of the Telegram Bot API's ``getMe`` and ``getUpdates``.

Follows the documented wire format of https://core.telegram.org/bots/api:
- Making requests (https://core.telegram.org/bots/api#making-requests): ``/bot<token>/METHOD``,
  GET query or POST body; every answer is ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error_code": N, "description": "...", "parameters": {"retry_after": S}}``
  (https://core.telegram.org/bots/api#responseparameters). A wrong token answers 401
  ``Unauthorized`` (404 ``Not Found`` for a malformed one); flooding answers 429
  ``Too Many Requests: retry after S``.
- getUpdates (https://core.telegram.org/bots/api#getupdates): ``offset``, ``limit`` (1-100,
  default 100), ``timeout``, ``allowed_updates`` (JSON list). Updates with ``update_id`` below
  ``offset`` are confirmed and forgotten; the result is in ``update_id`` order.
- Update / Message / MessageEntity (https://core.telegram.org/bots/api#update,
  #message, #messageentity): ``message_id``, ``from``, ``chat`` (``type`` private, group,
  supergroup), ``date`` (unix time), ``text``, ``entities`` (``mention``, ``bot_command``;
  offsets in UTF-16 units), ``reply_to_message``.
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.fakes._server import FakeServer, Reply, Request

BOT = {"id": 7000001, "is_bot": True, "first_name": "Kvitka", "username": "kvitka_help_bot"}


class FakeTelegram(FakeServer):
    """One bot's update queue; tests add private and group messages."""

    def __init__(self, token: str = "7000001:AAH-test-token") -> None:
        super().__init__()
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(500_000_001)
        self._message_ids = itertools.count(1)
        self._date = 1_772_442_000
        self.long_poll_timeouts: list[int] = []

    # ------------------------------------------------------------------ test API

    def private(self, user: dict[str, Any], text: str) -> dict[str, Any]:
        """A message in the user's private chat with the bot."""
        chat = {"id": user["id"], "type": "private", "first_name": user.get("first_name", "")}
        if user.get("username"):
            chat["username"] = user["username"]
        return self._add({"chat": chat, "from": user, "text": text})

    def group(
        self,
        user: dict[str, Any],
        text: str,
        *,
        chat: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A group message; ``@mentions`` and a leading ``/command`` get their entities."""
        chat = chat or {
            "id": -1001234567890,
            "type": "supergroup",
            "title": "Kvitka users",
            "username": "kvitka_users",
        }
        message: dict[str, Any] = {"chat": chat, "from": user, "text": text}
        entities = _entities(text)
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return self._add(message)

    def bot_message(self, chat: dict[str, Any], text: str) -> dict[str, Any]:
        """A message the bot itself sent (to reply to); not an update."""
        return {
            "message_id": next(self._message_ids),
            "from": BOT,
            "chat": chat,
            "date": self._date,
            "text": text,
        }

    # ------------------------------------------------------------------ HTTP

    def handle(self, request: Request) -> Reply:
        prefix = f"/bot{self.token}/"
        if not request.path.startswith(prefix):
            if request.path.startswith("/bot"):
                return _error(401, "Unauthorized")
            return _error(404, "Not Found")
        method = request.path[len(prefix) :]
        if method == "getMe":
            return Reply(200, {"ok": True, "result": BOT})
        if method == "getUpdates":
            return self._get_updates(request)
        return _error(404, "Not Found: method not found")

    def _get_updates(self, request: Request) -> Reply:
        offset = int(request.arg("offset") or 0)
        limit = max(1, min(100, int(request.arg("limit") or 100)))
        self.long_poll_timeouts.append(int(request.arg("timeout") or 0))
        if offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed
        return Reply(200, {"ok": True, "result": self.updates[:limit]})

    def _add(self, message: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._date += 60
            message = {"message_id": next(self._message_ids), "date": self._date, **message}
            self.updates.append({"update_id": next(self._update_ids), "message": message})
            return message


def user(user_id: int, first: str, last: str = "", username: str | None = None) -> dict[str, Any]:
    person: dict[str, Any] = {
        "id": user_id,
        "is_bot": False,
        "first_name": first,
        "language_code": "uk",
    }
    if last:
        person["last_name"] = last
    if username:
        person["username"] = username
    return person


def _entities(text: str) -> list[dict[str, Any]]:
    """Entities with UTF-16 offsets, as Telegram computes them."""
    entities = []
    position = 0
    for word in text.split(" "):
        units = len(text[:position].encode("utf-16-le")) // 2
        length = len(word.encode("utf-16-le")) // 2
        if word.startswith("@") and len(word) > 1:
            entities.append({"type": "mention", "offset": units, "length": length})
        elif word.startswith("/") and position == 0:
            entities.append({"type": "bot_command", "offset": 0, "length": length})
        position += len(word) + 1
    return entities


def _error(code: int, description: str, **parameters: Any) -> Reply:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply(code, body)


def rate_limited(seconds: int) -> Reply:
    return _error(429, f"Too Many Requests: retry after {seconds}", retry_after=seconds)


def error(code: int, description: str) -> Reply:
    return _error(code, description)
