"""A fake of the X API v2 mentions timeline and DM events, as tweepy 4.x calls them.

Follows the documented wire format:
- GET /2/users/:id/mentions: https://docs.x.com/x-api/posts/timelines/introduction and
  https://docs.x.com/x-api/posts/timelines/quickstart/user-mention-quickstart
  (newest first; ``since_id``; ``max_results`` 5-100, default 10; ``pagination_token`` from
  ``meta.next_token``; ``meta`` has result_count, newest_id, oldest_id, next_token; with nothing
  to return the body is only ``{"meta": {"result_count": 0}}``; tweets carry id, text and
  edit_history_tweet_ids unless ``tweet.fields`` asks for more; ``expansions=author_id`` and
  ``referenced_tweets.id`` fill ``includes.users`` / ``includes.tweets``; ids are strings).
- GET /2/dm_events: https://docs.x.com/x-api/direct-messages/lookup/introduction and
  https://docs.x.com/x-api/direct-messages/lookup/quickstart (newest first, no since_id;
  ``max_results`` 1-100, default 100; default fields id, event_type, text; ``dm_event.fields``
  adds sender_id, created_at, dm_conversation_id; ``expansions=sender_id``).
- Rate limits: https://docs.x.com/x-api/fundamentals/rate-limits (``x-rate-limit-limit``,
  ``-remaining``, ``-reset`` in epoch seconds on every response; 429 when exhausted).
- Errors: https://docs.x.com/x-api/fundamentals/response-codes-and-errors (problem JSON
  ``{"title", "detail", "type", "status"}``).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes._server import FakeServer, Reply, Request

FIRST_ID = 1460323737035677698
WINDOW = 15 * 60


@dataclass
class Window:
    """One endpoint's rate-limit window."""

    limit: int = 450
    remaining: int = 450
    reset: int = field(default_factory=lambda: int(time.time()) + WINDOW)


class FakeX(FakeServer):
    """Mentions of ``support_id`` and its DM events; tests add posts and exhaust windows."""

    def __init__(self, token: str = "x-test-token", support_id: str = "2244994945") -> None:
        super().__init__()
        self.token = token
        self.support_id = support_id
        self.users: dict[str, dict[str, str]] = {
            support_id: {"id": support_id, "name": "Kvitka Support", "username": "kvitka_help"}
        }
        self.tweets: list[dict[str, Any]] = []
        self.dm_events: list[dict[str, Any]] = []
        self.windows: dict[str, Window] = {"mentions": Window(), "dm_events": Window()}
        self._ids = itertools.count(FIRST_ID, 4096)
        self._cursors: dict[str, tuple[str, int]] = {}
        self._clock = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    # ------------------------------------------------------------------ test API

    def user(self, username: str, name: str = "") -> str:
        user_id = str(10_000 + len(self.users))
        self.users[user_id] = {"id": user_id, "username": username, "name": name or username}
        return user_id

    def mention(
        self, author: str, text: str, *, reply_to: str | None = None, quote_of: str | None = None
    ) -> str:
        """A tweet by ``author`` (a user id) mentioning the support account; returns its id."""
        with self.lock:
            tweet_id = str(next(self._ids))
            refs = []
            conversation = tweet_id
            if reply_to:
                refs.append({"type": "replied_to", "id": reply_to})
                conversation = self._tweet(reply_to)["conversation_id"]
            if quote_of:
                refs.append({"type": "quoted", "id": quote_of})
            tweet = {
                "id": tweet_id,
                "text": f"@kvitka_help {text}",
                "edit_history_tweet_ids": [tweet_id],
                "author_id": author,
                "created_at": self._tick(),
                "conversation_id": conversation,
            }
            if refs:
                tweet["referenced_tweets"] = refs
            if reply_to:
                tweet["in_reply_to_user_id"] = self._tweet(reply_to)["author_id"]
            self.tweets.append(tweet)
            return tweet_id

    def dm(self, sender: str, text: str) -> str:
        with self.lock:
            event_id = str(next(self._ids))
            pair = sorted([sender, self.support_id])
            self.dm_events.append(
                {
                    "id": event_id,
                    "event_type": "MessageCreate",
                    "text": text,
                    "sender_id": sender,
                    "created_at": self._tick(),
                    "dm_conversation_id": f"{pair[0]}-{pair[1]}",
                }
            )
            return event_id

    def exhaust(self, endpoint: str, reset: int | None = None, *, send_reset: bool = True) -> None:
        """Use up ``endpoint``'s window: the next request gets 429."""
        with self.lock:
            window = self.windows[endpoint]
            window.remaining = 0
            window.reset = reset if reset is not None else int(time.time()) + WINDOW
            self._send_reset = send_reset

    def new_window(self, endpoint: str) -> None:
        """As if the reset time had passed."""
        with self.lock:
            self.windows[endpoint] = Window()

    # ------------------------------------------------------------------ HTTP

    oauth1_keys: tuple[str, str] | None = None
    """(consumer key, access token) accepted in an OAuth 1.0a header; the signature itself is
    not checked (it covers the real host's URL, which the client signs before being routed)."""

    def _authorized(self, header: str) -> bool:
        if header == f"Bearer {self.token}":
            return True
        if self.oauth1_keys and header.startswith("OAuth "):
            consumer, token = self.oauth1_keys
            fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
            return (
                fields.get("oauth_consumer_key") == consumer
                and fields.get("oauth_token") == token
                and fields.get("oauth_signature_method") == "HMAC-SHA1"
                and bool(fields.get("oauth_signature"))
            )
        return False

    def headers(self, request: Request) -> dict[str, str]:
        window = self.windows[_endpoint(request.path)]
        headers = {
            "x-rate-limit-limit": str(window.limit),
            "x-rate-limit-remaining": str(max(window.remaining, 0)),
        }
        if getattr(self, "_send_reset", True):
            headers["x-rate-limit-reset"] = str(window.reset)
        return headers

    def handle(self, request: Request) -> Reply:
        if not self._authorized(request.headers.get("Authorization", "")):
            return _problem(401, "Unauthorized", "Unauthorized")
        endpoint = _endpoint(request.path)
        window = self.windows[endpoint]
        if window.remaining <= 0:
            return Reply(
                429,
                _problem_body(429, "Too Many Requests", "Too Many Requests"),
                self.headers(request),
            )
        window.remaining -= 1
        headers = self.headers(request)
        if request.path == f"/2/users/{self.support_id}/mentions":
            return Reply(200, self._mentions(request), headers)
        if request.path == "/2/dm_events":
            return Reply(200, self._dm_events(request), headers)
        return _problem(404, "Not Found Error", f"no route {request.path}")

    def _mentions(self, request: Request) -> dict[str, Any]:
        since = int(request.arg("since_id") or 0)
        found = [t for t in reversed(self.tweets) if int(t["id"]) > since]
        size = _bounded(request.arg("max_results"), 10, 5, 100)
        page, next_token = self._page("mentions", found, request.arg("pagination_token"), size)
        fields = set(_list(request.arg("tweet.fields")))
        data = [
            {k: v for k, v in t.items() if k in {"id", "text", "edit_history_tweet_ids"} | fields}
            for t in page
        ]
        body = self._envelope(data, next_token)
        expansions = set(_list(request.arg("expansions")))
        includes: dict[str, Any] = {}
        if "author_id" in expansions and page:
            includes["users"] = self._users({t["author_id"] for t in page}, request)
        if "referenced_tweets.id" in expansions:
            ids = {r["id"] for t in page for r in t.get("referenced_tweets", [])}
            refs = [
                {
                    k: v
                    for k, v in self._tweet(i).items()
                    if k in {"id", "text", "edit_history_tweet_ids"} | fields
                }
                for i in sorted(ids)
            ]
            if refs:
                includes["tweets"] = refs
        if includes:
            body["includes"] = includes
        return body

    def _dm_events(self, request: Request) -> dict[str, Any]:
        found = list(reversed(self.dm_events))
        size = _bounded(request.arg("max_results"), 100, 1, 100)
        page, next_token = self._page("dm", found, request.arg("pagination_token"), size)
        fields = set(_list(request.arg("dm_event.fields"))) | {"id", "event_type", "text"}
        body = self._envelope(
            [{k: v for k, v in e.items() if k in fields} for e in page], next_token
        )
        if "sender_id" in _list(request.arg("expansions")) and page:
            body["includes"] = {"users": self._users({e["sender_id"] for e in page}, request)}
        return body

    def _page(
        self, kind: str, found: list[dict[str, Any]], token: str | None, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        start = 0
        if token:
            start_id = self._cursors[token][1]
            start = next(
                (i for i, item in enumerate(found) if int(item["id"]) <= start_id), len(found)
            )
        page = found[start : start + size]
        rest = found[start + size :]
        next_token = None
        if rest:
            next_token = secrets.token_hex(16)
            self._cursors[next_token] = (kind, int(rest[0]["id"]))
        return page, next_token

    def _envelope(self, data: list[dict[str, Any]], next_token: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"result_count": len(data)}
        if data:
            meta["newest_id"], meta["oldest_id"] = data[0]["id"], data[-1]["id"]
        if next_token:
            meta["next_token"] = next_token
        return {"data": data, "meta": meta} if data else {"meta": meta}

    def _users(self, ids: set[str], request: Request) -> list[dict[str, str]]:
        fields = set(_list(request.arg("user.fields"))) | {"id", "name", "username"}
        return [{k: v for k, v in self.users[i].items() if k in fields} for i in sorted(ids)]

    def _tweet(self, tweet_id: str) -> dict[str, Any]:
        return next(t for t in self.tweets if t["id"] == tweet_id)

    def _tick(self) -> str:
        self._clock += timedelta(minutes=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _endpoint(path: str) -> str:
    return "dm_events" if path.startswith("/2/dm_events") else "mentions"


def _list(value: str | None) -> list[str]:
    return [part for part in (value or "").split(",") if part]


def _bounded(value: str | None, default: int, low: int, high: int) -> int:
    return max(low, min(high, int(value))) if value else default


def _problem_body(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"title": title, "detail": detail, "type": "about:blank", "status": status}


def _problem(status: int, title: str, detail: str) -> Reply:
    return Reply(status, _problem_body(status, title, detail))
