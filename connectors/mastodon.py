"""Mastodon mentions (direct-visibility ones are its DMs) through Mastodon.py's notifications.

Gap-free polling: ``since_id`` returns only the newest page, so we ask with ``min_id`` (the page
right after the last notification stored) and walk ``fetch_previous`` towards the newest, each
page yielded oldest-first with the checkpoint ``{"min_id": <notification id>}``. Rate limits
raise :class:`ConnectorRateLimited` (``ratelimit_method="throw"``) instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import requests
from mastodon import (
    Mastodon,
    MastodonAPIError,
    MastodonError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonUnauthorizedError,
)

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

DEFAULT_BACKOFF = timedelta(minutes=5)


class MastodonConnector:
    """Mention notifications of the token's account, oldest first."""

    def __init__(
        self,
        name: str,
        *,
        token: Callable[[], str],
        api_base_url: str,
        mastodon_version: str = "4.2.0",
        page_size: int = 40,
        max_pages: int = 100,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._token = token
        self.api_base_url = api_base_url.rstrip("/")
        self.domain = urlsplit(self.api_base_url).hostname or ""
        self.mastodon_version = mastodon_version
        self.page_size = page_size
        self.max_pages = max_pages
        self.timeout = timeout
        self._api: Mastodon | None = None

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]:
        """Mentions after ``min_id`` (all of them on the first run), page by page."""
        api = self._client()
        min_id = str((checkpoint or {}).get("min_id") or "0")
        page = self._call(api.notifications, types=["mention"], min_id=min_id, limit=self.page_size)
        for _ in range(self.max_pages):
            if not page:
                return
            for notification in sorted(page, key=lambda n: int(n["id"])):
                post = self._post(notification)
                if post is not None:
                    source_id = f"mastodon:{post['id']}"
                    yield post_item(self.name, source_id, post), {"min_id": str(notification["id"])}
            if getattr(page, "_pagination_prev", None) is None:
                return
            page = self._call(api.fetch_previous, page)

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Nothing to mark: notifications stay; the checkpoint records what was read."""

    def interrupt(self) -> None:
        """Nothing to interrupt: every request ends within ``timeout``."""

    def close(self) -> None:
        if self._api is not None:
            self._api.session.close()
            self._api = None

    def _client(self) -> Mastodon:
        if self._api is None:
            session = requests.Session()
            session.trust_env = False
            self._api = Mastodon(
                access_token=self._token(),
                api_base_url=self.api_base_url,
                mastodon_version=self.mastodon_version,  # no version probe
                version_check_mode="none",
                ratelimit_method="throw",
                request_timeout=self.timeout,
                session=session,
            )
        return self._api

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call; Mastodon.py's errors become connector errors that say what to do."""
        try:
            return method(*args, **kwargs)
        except MastodonRatelimitError:
            raise self._rate_limited() from None
        except (MastodonUnauthorizedError, MastodonNotFoundError) as exc:
            raise ConnectorAuthError(
                f"{self.domain} refused the access token of source {self.name} "
                f"({_status(exc)}); check its token_env or token_file and the read:notifications scope"
            ) from None
        except MastodonAPIError as exc:  # 5xx, other 4xx, a body that is not JSON
            raise ConnectorUnavailable(
                f"{self.domain} answered {_status(exc)} to notifications"
            ) from None
        except MastodonError as exc:  # network errors, timeouts, truncated answers
            raise ConnectorUnavailable(
                f"cannot reach {self.domain}: {type(exc).__name__}"
            ) from None

    def _rate_limited(self) -> ConnectorRateLimited:
        now = datetime.now(UTC)
        reset = self._api.ratelimit_reset if self._api is not None else None
        retry_at = now + DEFAULT_BACKOFF
        if reset and float(reset) > now.timestamp():
            retry_at = datetime.fromtimestamp(float(reset), UTC)
        return ConnectorRateLimited(
            f"{self.domain} rate limit reached; paused until {retry_at:%Y-%m-%d %H:%M:%S} UTC",
            retry_at,
        )

    def _post(self, notification: Any) -> Post | None:
        status = notification.get("status")
        if notification.get("type") != "mention" or not status:
            return None
        account = status.get("account") or notification.get("account") or {}
        acct = str(account.get("acct") or account.get("username") or account.get("id"))
        handle = f"@{acct}" if "@" in acct else f"@{acct}@{self.domain}"
        reply_to = status.get("in_reply_to_id")
        created = status.get("created_at")
        return Post(
            channel="mastodon",
            id=str(status["id"]),
            kind="dm"
            if status.get("visibility") == "direct"
            else ("reply" if reply_to else "mention"),
            author_id=str(account.get("id", "")),
            author_handle=handle,
            author_name=str(account.get("display_name") or ""),
            text=html_to_text(str(status.get("content") or "")),
            url=status.get("url") or status.get("uri"),
            created_at=created.astimezone(UTC).isoformat()
            if isinstance(created, datetime)
            else str(created or ""),
            conversation_id=str(reply_to) if reply_to else str(status["id"]),
            in_reply_to=str(reply_to) if reply_to else None,
        )


class _Text(HTMLParser):
    """Mastodon's status HTML (p, br, a, span) as plain text with its paragraphs kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(content: str) -> str:
    parser = _Text()
    parser.feed(content)
    parser.close()
    return unescape("".join(parser.parts)).strip()


def _status(exc: Exception) -> str:
    """The HTTP status Mastodon.py put in an error's args, else the error's name."""
    for arg in exc.args:
        if isinstance(arg, int):
            return str(arg)
    return type(exc).__name__
