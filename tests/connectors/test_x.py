"""The X connector through the real tweepy client against the fake X API on loopback."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import (
    Checkpoint,
    ConnectorAuthError,
    ConnectorRateLimited,
    ConnectorUnavailable,
    RawItem,
)
from connectors.x import OAuth1, XConnector
from tests.fakes._server import Reply
from tests.fakes.x_api import FakeX


@pytest.fixture
def fake() -> Iterator[FakeX]:
    with FakeX() as server:
        yield server  # type: ignore[misc]


def connector(
    fake: FakeX, *, token: str | None = None, dms: bool = True, page: int = 5
) -> XConnector:
    return XConnector(
        "x-support",
        user_id=fake.support_id,
        token=lambda: token or fake.token,
        api_base_url=fake.url,
        direct_messages=dms,
        page_size=page,
        timeout=5,
    )


def run(conn: XConnector, checkpoint: Checkpoint | None) -> tuple[list[dict], Checkpoint | None]:
    """Fetch everything; the posts and the last checkpoint (as the pipeline would store it)."""
    items: list[tuple[RawItem, Checkpoint]] = list(conn.fetch(checkpoint))
    conn.close()
    posts = [json.loads(item.raw) for item, _ in items]
    return posts, (items[-1][1] if items else checkpoint)


def test_history_over_several_pages_then_only_new_posts(fake: FakeX) -> None:
    olena = fake.user("olena_p", "Олена Петренко")
    ids = [fake.mention(olena, f"mention {i}") for i in range(12)]
    dms = [fake.dm(olena, f"dm {i}") for i in range(3)]
    posts, checkpoint = run(connector(fake), None)
    assert [p["id"] for p in posts] == ids + [f"dm-{d}" for d in dms]  # oldest first
    assert len([r for r in fake.requests if r.path.endswith("/mentions")]) == 3  # pages of 5
    first = posts[0]
    assert first["author_handle"] == "@olena_p" and first["author_name"] == "Олена Петренко"
    assert first["url"] == f"https://x.com/olena_p/status/{ids[0]}"
    assert first["created_at"].endswith("+00:00") and first["kind"] == "mention"
    assert checkpoint == {"since_id": ids[-1], "dm_last_id": dms[-1]}

    new = fake.mention(olena, "one more")
    new_dm = fake.dm(olena, "and a dm")
    posts, checkpoint = run(connector(fake), checkpoint)
    assert [p["id"] for p in posts] == [new, f"dm-{new_dm}"]
    assert fake.requests[-2].arg("since_id") == ids[-1]
    assert run(connector(fake), checkpoint)[0] == []


def test_every_checkpoint_covers_only_posts_before_it(fake: FakeX) -> None:
    author = fake.user("taras")
    for i in range(7):
        fake.mention(author, f"m{i}")
    items = list(connector(fake, dms=False).fetch(None))
    for item, checkpoint in items:
        assert item.source_id == f"x:{checkpoint['since_id']}"


def test_replies_and_quotes_join_the_conversation(fake: FakeX) -> None:
    author = fake.user("ivan")
    root = fake.mention(author, "my parcel is late")
    reply = fake.mention(author, "still nothing", reply_to=root)
    quote = fake.mention(author, "look at this", quote_of=root)
    posts, _ = run(connector(fake, dms=False), None)
    by_id = {p["id"]: p for p in posts}
    assert by_id[reply]["kind"] == "reply" and by_id[reply]["in_reply_to"] == root
    assert by_id[reply]["conversation_id"] == root
    assert by_id[quote]["conversation_id"] == root  # the quote's own conversation id is itself


def test_429_pauses_until_reset_and_the_next_poll_loses_nothing(fake: FakeX) -> None:
    author = fake.user("olha")
    first = [fake.mention(author, f"m{i}") for i in range(3)]
    _, checkpoint = run(connector(fake, dms=False), None)
    later = [fake.mention(author, f"later {i}") for i in range(8)]
    reset = int(time.time()) + 600
    fake.exhaust("mentions", reset)
    with pytest.raises(ConnectorRateLimited) as info:
        run(connector(fake, dms=False), checkpoint)
    assert info.value.retry_at == datetime.fromtimestamp(reset, UTC)
    assert isinstance(info.value, ConnectorUnavailable)  # transient for everything else
    fake.new_window("mentions")
    posts, _ = run(connector(fake, dms=False), checkpoint)
    assert [p["id"] for p in posts] == later and first[-1] == checkpoint["since_id"]


def test_exhausted_window_mid_backlog_yields_nothing_and_pauses(fake: FakeX) -> None:
    author = fake.user("petro")
    for i in range(12):
        fake.mention(author, f"m{i}")
    fake.windows["mentions"].remaining = 1  # the first page says remaining 0, with a next_token
    with pytest.raises(ConnectorRateLimited):
        list(connector(fake, dms=False).fetch(None))  # nothing yielded: the backlog has a gap
    fake.new_window("mentions")
    assert len(run(connector(fake, dms=False), None)[0]) == 12


def test_429_without_reset_header_backs_off(fake: FakeX) -> None:
    fake.exhaust("mentions", send_reset=False)
    before = datetime.now(UTC)
    with pytest.raises(ConnectorRateLimited) as info:
        run(connector(fake, dms=False), None)
    assert info.value.retry_at >= before + timedelta(minutes=1)


def test_rejected_token_is_an_auth_error_and_is_never_logged(
    fake: FakeX, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorAuthError, match="401") as info:
        run(connector(fake, token="wrong-secret-token"), None)
    assert "token_env" in str(info.value)
    assert "wrong-secret-token" not in caplog.text + str(info.value)


def test_forbidden_dm_endpoint_is_an_auth_error(fake: FakeX) -> None:
    fake.mention(fake.user("a"), "hi")
    conn = connector(fake)
    items = conn.fetch(None)
    next(items)  # the mention; then the DM request is refused
    fake.fail_next(
        Reply(
            403, {"title": "Forbidden", "detail": "Forbidden", "type": "about:blank", "status": 403}
        )
    )
    with pytest.raises(ConnectorAuthError, match="403"):
        next(items)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b'{"data": [{"id": "1", "te'),  # malformed JSON
        Reply(200, {"data": [{"id": "1", "text": "x"}] * 50}, truncate=True),  # cut short
        Reply(200, {"data": "not a list"}),  # JSON, but not the v2 shape
        Reply(503, {"title": "Service Unavailable", "status": 503}),
    ],
    ids=["malformed", "truncated", "wrong-shape", "503"],
)
def test_broken_answers_are_transient(fake: FakeX, reply: Reply) -> None:
    fake.fail_next(reply)
    with pytest.raises(ConnectorUnavailable) as info:
        run(connector(fake), None)
    assert not isinstance(info.value, ConnectorRateLimited)


def test_server_down_is_transient() -> None:
    server = FakeX().start()
    url = server.url
    server.stop()
    conn = XConnector("x", user_id="1", token=lambda: "t", api_base_url=url, timeout=2)
    with pytest.raises(ConnectorUnavailable, match="ConnectionError"):
        list(conn.fetch(None))


def test_oauth1_user_context(fake: FakeX) -> None:
    fake.oauth1_keys = ("consumer-key", "access-token")
    fake.mention(fake.user("olena_p"), "hello from an OAuth 1.0a client")
    keys = OAuth1("consumer-key", "consumer-secret", "access-token", "token-secret")
    conn = XConnector(
        "x-support", user_id=fake.support_id, token=lambda: keys, api_base_url=fake.url, timeout=5
    )
    posts, _ = run(conn, None)
    assert [p["text"] for p in posts] == ["@kvitka_help hello from an OAuth 1.0a client"]
    assert fake.requests[-1].headers["Authorization"].startswith("OAuth ")
