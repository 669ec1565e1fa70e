"""A fake of Mastodon's notifications API, as Mastodon.py 2.x calls it.

Follows the documented wire format:
- GET /api/v1/notifications: https://docs.joinmastodon.org/methods/notifications/#get
  (``types[]``, ``max_id``, ``since_id``, ``min_id``, ``limit`` default 40, max 80; results
  newest first; ``min_id`` returns the page immediately newer than it, ``since_id`` the newest
  page; a ``Link`` header with ``rel="next"`` (``max_id``) and ``rel="prev"`` (``min_id``)).
- Paging: https://docs.joinmastodon.org/api/guidelines/#pagination
- Notification / Status / Account entities: https://docs.joinmastodon.org/entities/Notification/,
  https://docs.joinmastodon.org/entities/Status/ (``content`` is HTML, ``visibility`` is
  public, unlisted, private or direct), https://docs.joinmastodon.org/entities/Account/
- Rate limits: https://docs.joinmastodon.org/api/rate-limits/ (``X-RateLimit-Limit``,
  ``-Remaining``, ``-Reset`` as an ISO 8601 time; 429 ``{"error": "Too many requests"}``).
- Errors: https://docs.joinmastodon.org/entities/Error/ (401 ``{"error": "The access token is
  invalid"}``).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from tests.fakes._server import FakeServer, Reply, Request


class FakeMastodon(FakeServer):
    """One account's notifications; tests add mentions and exhaust the rate limit."""

    def __init__(self, token: str = "mastodon-test-token") -> None:
        super().__init__()
        self.token = token
        self.notifications: list[dict[str, Any]] = []
        self._ids = itertools.count(110_000_000_000_000_001, 7)
        self._clock = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        self.remaining = 300
        self.reset = datetime.now(UTC) + timedelta(minutes=5)

    def account(
        self, username: str, display_name: str, domain: str | None = None
    ) -> dict[str, Any]:
        acct = f"{username}@{domain}" if domain else username
        host = domain or "127.0.0.1"
        return {
            "id": str(next(self._ids)),
            "username": username,
            "acct": acct,
            "display_name": display_name,
            "url": f"https://{host}/@{username}",
        }

    def mention(
        self,
        account: dict[str, Any],
        html: str,
        *,
        visibility: str = "public",
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        """A status by ``account`` mentioning us, and its notification; returns the status."""
        with self.lock:
            self._clock += timedelta(minutes=1)
            when = self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            status_id = str(next(self._ids))
            status = {
                "id": status_id,
                "uri": f"https://example.social/users/{account['username']}/statuses/{status_id}",
                "url": f"https://example.social/@{account['username']}/{status_id}",
                "created_at": when,
                "account": account,
                "content": html,
                "visibility": visibility,
                "sensitive": False,
                "spoiler_text": "",
                "in_reply_to_id": reply_to,
                "in_reply_to_account_id": None,
                "mentions": [],
                "tags": [],
                "emojis": [],
                "media_attachments": [],
                "reblogs_count": 0,
                "favourites_count": 0,
                "replies_count": 0,
            }
            notification = {
                "id": str(next(self._ids)),
                "type": "mention",
                "created_at": when,
                "account": account,
                "status": status,
            }
            self.notifications.append(notification)
            return status

    def favourite(self, account: dict[str, Any]) -> None:
        """A notification of another type, which ``types[]=mention`` filters out."""
        with self.lock:
            self.notifications.append(
                {
                    "id": str(next(self._ids)),
                    "type": "favourite",
                    "created_at": "2026-03-02T09:00:00.000Z",
                    "account": account,
                }
            )

    def headers(self, request: Request) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": self.reset.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }

    def handle(self, request: Request) -> Reply:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Reply(401, {"error": "The access token is invalid"}, self.headers(request))
        if self.remaining <= 0:
            return Reply(429, {"error": "Too many requests"}, self.headers(request))
        self.remaining -= 1
        if request.path != "/api/v1/notifications":
            return Reply(404, {"error": "Record not found"}, self.headers(request))
        page = self._select(request)
        headers = self.headers(request)
        if page:
            headers["Link"] = self._links(request, page)
        return Reply(200, page, headers)

    def _select(self, request: Request) -> list[dict[str, Any]]:
        types = request.query.get("types[]") or []
        found = [n for n in self.notifications if not types or n["type"] in types]
        limit = max(1, min(80, int(request.arg("limit") or 40)))
        if request.arg("min_id") is not None:
            newer = [n for n in found if int(n["id"]) > int(request.arg("min_id") or 0)]
            return list(reversed(newer[:limit]))
        if request.arg("max_id") is not None:
            found = [n for n in found if int(n["id"]) < int(request.arg("max_id") or 0)]
        if request.arg("since_id") is not None:
            found = [n for n in found if int(n["id"]) > int(request.arg("since_id") or 0)]
        return list(reversed(found))[:limit]

    def _links(self, request: Request, page: list[dict[str, Any]]) -> str:
        keep = [
            (k, v)
            for k, values in request.query.items()
            if k == "types[]" or k == "limit"
            for v in values
        ]
        base = f"{self.url}/api/v1/notifications?"
        older = urlencode([*keep, ("max_id", page[-1]["id"])])
        newer = urlencode([*keep, ("min_id", page[0]["id"])])
        return f'<{base}{older}>; rel="next", <{base}{newer}>; rel="prev"'
