"""X (Twitter) mentions and direct messages through tweepy's API v2 ``Client``.

Mentions are read with ``since_id``; the whole backlog is paged newest-first (``next_token``)
and only then yielded oldest-first, so the checkpoint ``{"since_id": ...}`` never moves past a
tweet that has not been stored. Direct messages have no ``since_id``: they are paged newest-first
until the last event id we stored (``dm_last_id``). Rate limits are ours to respect: a 429 or an
exhausted window raises :class:`ConnectorRateLimited` with the reset time instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
import tweepy
from requests.adapters import HTTPAdapter

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

X_API = "https://api.twitter.com"
"""The host tweepy hard-codes; ``api_base_url`` re-routes it."""

DEFAULT_BACKOFF = timedelta(minutes=5)
"""Pause after a 429 without ``x-rate-limit-reset`` (X's windows are 15 minutes)."""

TWEET_FIELDS = [
    "created_at",
    "conversation_id",
    "in_reply_to_user_id",
    "referenced_tweets",
    "author_id",
]
DM_FIELDS = ["id", "text", "event_type", "created_at", "dm_conversation_id", "sender_id"]
USER_FIELDS = ["username", "name"]


class _RoutedAdapter(HTTPAdapter):
    """Sends tweepy's requests for ``https://api.twitter.com/`` to ``base`` with a timeout.

    tweepy builds every URL from a hard-coded host and sets no timeout; the adapter mounted for
    that host is the one place both can be fixed without patching tweepy.
    """

    def __init__(self, base: str, timeout: float) -> None:
        super().__init__(max_retries=0)
        self.base = base.rstrip("/")
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if request.url and request.url.startswith(X_API + "/") and self.base != X_API:
            request.url = self.base + request.url[len(X_API) :]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


@dataclass(frozen=True)
class OAuth1:
    """OAuth 1.0a user context: the app's consumer key pair and the support account's token pair."""

    consumer_key: str
    consumer_secret: str
    access_token: str
    access_token_secret: str


def make_client(
    credentials: str | OAuth1, api_base_url: str = X_API, timeout: float = 30.0
) -> tweepy.Client:
    """A tweepy client that returns raw responses (we need the rate-limit headers).

    ``credentials`` is a bearer token (app-only, or an OAuth 2.0 user token) or OAuth 1.0a keys.
    """
    if isinstance(credentials, OAuth1):
        client = tweepy.Client(
            consumer_key=credentials.consumer_key,
            consumer_secret=credentials.consumer_secret,
            access_token=credentials.access_token,
            access_token_secret=credentials.access_token_secret,
            return_type=requests.Response,
        )
    else:
        client = tweepy.Client(bearer_token=credentials, return_type=requests.Response)
    client.session.trust_env = False  # a proxy from the environment must not see the token
    client.session.mount(X_API + "/", _RoutedAdapter(api_base_url, timeout))
    return client


@dataclass
class _Page:
    """The parts of one v2 response we use: items plus the users and tweets they reference."""

    items: list[dict[str, Any]]
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    tweets: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_token: str | None = None


class XConnector:
    """Mentions of ``user_id`` and (optionally) the direct messages of the token's user."""

    def __init__(
        self,
        name: str,
        *,
        user_id: str,
        token: Callable[[], str | OAuth1],
        api_base_url: str = X_API,
        direct_messages: bool = False,
        page_size: int = 100,
        max_pages: int = 50,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.user_id = str(user_id)
        self._token = token
        self.api_base_url = api_base_url
        self.direct_messages = direct_messages
        self.page_size = page_size
        self.max_pages = max_pages
        self.timeout = timeout
        self._client: tweepy.Client | None = None
        self._user_auth = False
        # tweepy logs request headers (the bearer token) at DEBUG: never let that through.
        tweepy_log = logging.getLogger("tweepy")
        if tweepy_log.getEffectiveLevel() < logging.INFO:
            tweepy_log.setLevel(logging.INFO)

    def fetch(self, checkpoint: Checkpoint | None) -> Iterator[tuple[RawItem, Checkpoint]]:
        """Mentions after ``since_id`` oldest-first, then DMs after ``dm_last_id``."""
        state: Checkpoint = dict(checkpoint or {})
        for tweet, page in self._new_mentions(state.get("since_id")):
            state = {**state, "since_id": tweet["id"]}
            yield post_item(self.name, f"x:{tweet['id']}", self._mention(tweet, page)), dict(state)
        if not self.direct_messages:
            return
        for event, page in self._new_dms(state.get("dm_last_id")):
            state = {**state, "dm_last_id": event["id"]}
            post = self._dm(event, page)
            yield post_item(self.name, f"x-dm:{event['id']}", post), dict(state)

    def acknowledge(self, items: Sequence[RawItem]) -> None:
        """Nothing to mark on X: the checkpoint alone records what was read."""

    def interrupt(self) -> None:
        """Nothing to interrupt: every request ends within the client's timeout."""

    def close(self) -> None:
        if self._client is not None:
            self._client.session.close()
            self._client = None

    # ------------------------------------------------------------------ reading

    def _new_mentions(self, since_id: str | None) -> list[tuple[dict[str, Any], _Page]]:
        pages: list[_Page] = []
        token: str | None = None
        for _ in range(self.max_pages):
            params: dict[str, Any] = {
                "since_id": since_id,
                "max_results": self.page_size,
                "pagination_token": token,
                "expansions": ["author_id", "referenced_tweets.id"],
                "tweet_fields": TWEET_FIELDS,
                "user_fields": USER_FIELDS,
            }
            params = {k: v for k, v in params.items() if v is not None}
            page = self._call(
                "mentions", self._api().get_users_mentions, self.user_id, **self._auth(), **params
            )
            pages.append(page)
            if not (token := page.next_token):
                break
        else:
            log.warning(
                "%s: more than %d pages of mentions; the rest next poll", self.name, self.max_pages
            )
        found = [(t, p) for p in pages for t in p.items if t.get("author_id") != self.user_id]
        return sorted(found, key=lambda pair: int(pair[0]["id"]))

    def _new_dms(self, last_id: str | None) -> list[tuple[dict[str, Any], _Page]]:
        found: list[tuple[dict[str, Any], _Page]] = []
        token: str | None = None
        for _ in range(self.max_pages):
            params: dict[str, Any] = {
                "max_results": min(self.page_size, 100),
                "pagination_token": token,
                "event_types": ["MessageCreate"],
                "expansions": ["sender_id"],
                "dm_event_fields": DM_FIELDS,
                "user_fields": USER_FIELDS,
            }
            params = {k: v for k, v in params.items() if v is not None}
            page = self._call(
                "direct messages", self._api().get_direct_message_events, **self._auth(), **params
            )
            older = [e for e in page.items if last_id is None or int(e["id"]) > int(last_id)]
            found.extend((e, page) for e in older if e.get("sender_id") != self.user_id)
            if len(older) < len(page.items) or not (token := page.next_token):
                break
        return sorted(found, key=lambda pair: int(pair[0]["id"]))

    def _api(self) -> tweepy.Client:
        if self._client is None:
            credentials = self._token()
            self._user_auth = isinstance(credentials, OAuth1)
            self._client = make_client(credentials, self.api_base_url, self.timeout)
        return self._client

    def _auth(self) -> dict[str, bool]:
        """tweepy signs with OAuth 1.0a only when asked (``user_auth=True``)."""
        return {"user_auth": self._user_auth}

    def _call(
        self, what: str, method: Callable[..., requests.Response], *args: Any, **kw: Any
    ) -> _Page:
        """One request, with every failure turned into a connector error that says what to do."""
        try:
            response = method(*args, **kw)
            body = response.json()
        except tweepy.TooManyRequests as exc:
            raise self._rate_limited(what, exc.response) from None
        except (tweepy.Unauthorized, tweepy.Forbidden) as exc:
            raise ConnectorAuthError(
                f"X refused the token of source {self.name} for {what} "
                f"({exc.response.status_code} {exc.response.reason}); check its token_env or "
                "token_file and the app's access level"
            ) from None
        except tweepy.TwitterServerError as exc:
            raise ConnectorUnavailable(
                f"X answered {exc.response.status_code} {exc.response.reason} for {what}"
            ) from None
        except tweepy.HTTPException as exc:  # 400, 404: wrong user id or parameters
            raise ConnectorAuthError(
                f"X rejected the {what} request of source {self.name} "
                f"({exc.response.status_code}): {'; '.join(exc.api_messages) or exc.response.reason}"
            ) from None
        except requests.RequestException as exc:  # network, timeout, truncated or non-JSON body
            raise ConnectorUnavailable(f"cannot read {what} from X: {type(exc).__name__}") from None
        page = _parse_page(body, what)
        if response.headers.get("x-rate-limit-remaining") == "0" and page.next_token:
            # The rest of the backlog cannot be read now; stop before yielding anything.
            raise self._rate_limited(what, response)
        return page

    def _rate_limited(self, what: str, response: requests.Response) -> ConnectorRateLimited:
        retry_at = _reset_time(response.headers.get("x-rate-limit-reset"))
        return ConnectorRateLimited(
            f"X rate limit reached for {what}; paused until {retry_at:%Y-%m-%d %H:%M:%S} UTC",
            retry_at,
        )

    # ------------------------------------------------------------------ posts

    def _mention(self, tweet: dict[str, Any], page: _Page) -> Post:
        refs = {r.get("type"): str(r.get("id")) for r in tweet.get("referenced_tweets") or []}
        conversation = str(tweet.get("conversation_id") or tweet["id"])
        if "quoted" in refs and "replied_to" not in refs:
            # A quote starts its own conversation on X; for support it belongs to the quoted one.
            quoted = page.tweets.get(refs["quoted"], {})
            conversation = str(quoted.get("conversation_id") or refs["quoted"])
        author = page.users.get(str(tweet.get("author_id")), {})
        username = author.get("username") or str(tweet.get("author_id", ""))
        return Post(
            channel="x",
            id=str(tweet["id"]),
            kind="reply" if "replied_to" in refs else "mention",
            author_id=str(tweet.get("author_id", "")),
            author_handle=f"@{username}",
            author_name=str(author.get("name") or ""),
            text=str(tweet.get("text") or ""),
            url=f"https://x.com/{username}/status/{tweet['id']}",
            created_at=_iso(tweet.get("created_at")),
            conversation_id=conversation,
            in_reply_to=refs.get("replied_to"),
        )

    def _dm(self, event: dict[str, Any], page: _Page) -> Post:
        sender = page.users.get(str(event.get("sender_id")), {})
        username = sender.get("username") or str(event.get("sender_id", ""))
        conversation = event.get("dm_conversation_id")
        return Post(
            channel="x",
            id=f"dm-{event['id']}",
            kind="dm",
            author_id=str(event.get("sender_id", "")),
            author_handle=f"@{username}",
            author_name=str(sender.get("name") or ""),
            text=str(event.get("text") or ""),
            url=f"https://x.com/messages/{conversation}" if conversation else None,
            created_at=_iso(event.get("created_at")),
            conversation_id=f"dm-{conversation}" if conversation else None,
            in_reply_to=None,
        )


def _parse_page(body: Any, what: str) -> _Page:
    """Check the v2 shape: ``data`` (absent when empty), ``includes``, ``meta.next_token``."""
    if not isinstance(body, dict) or not isinstance(body.get("meta", {}), dict):
        raise ConnectorUnavailable(f"X sent an unexpected answer for {what}")
    items = body.get("data") or []
    includes = body.get("includes") or {}
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        raise ConnectorUnavailable(f"X sent an unexpected answer for {what}")
    return _Page(
        items=items,
        users={str(u.get("id")): u for u in includes.get("users") or []},
        tweets={str(t.get("id")): t for t in includes.get("tweets") or []},
        next_token=body.get("meta", {}).get("next_token"),
    )


def _reset_time(header: str | None) -> datetime:
    now = datetime.now(UTC)
    try:
        reset = datetime.fromtimestamp(int(header or ""), UTC)
    except (ValueError, OverflowError):
        return now + DEFAULT_BACKOFF
    return max(reset, now + timedelta(seconds=1))


def _iso(value: object) -> str:
    """X's ``2024-01-15T10:30:00.000Z`` as ISO 8601 in UTC; now when missing or odd."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC).isoformat()
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
