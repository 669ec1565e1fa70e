"""The Mastodon connector through the real Mastodon.py against the fake notifications API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import (
    Checkpoint,
    ConnectorAuthError,
    ConnectorRateLimited,
    ConnectorUnavailable,
)
from connectors.mastodon import MastodonConnector, html_to_text
from tests.fakes._server import Reply
from tests.fakes.mastodon_api import FakeMastodon


@pytest.fixture
def fake() -> Iterator[FakeMastodon]:
    with FakeMastodon() as server:
        yield server  # type: ignore[misc]


def connector(fake: FakeMastodon, token: str | None = None, page: int = 4) -> MastodonConnector:
    return MastodonConnector(
        "masto", token=lambda: token or fake.token, api_base_url=fake.url, page_size=page, timeout=5
    )


def run(
    conn: MastodonConnector, checkpoint: Checkpoint | None
) -> tuple[list[dict], Checkpoint | None]:
    items = list(conn.fetch(checkpoint))
    conn.close()
    return [json.loads(i.raw) for i, _ in items], (items[-1][1] if items else checkpoint)


def test_history_over_several_pages_then_only_new_mentions(fake: FakeMastodon) -> None:
    olena = fake.account("olena", "Олена П.", "example.social")
    local = fake.account("taras", "Тарас")
    statuses = [fake.mention(olena, f"<p>mention {i}</p>") for i in range(9)]
    fake.favourite(olena)
    dm = fake.mention(
        local,
        '<p><span class="h-card"><a href="x">@<span>help</span></a></span> мій рахунок &amp; картка</p><p>ще</p>',
        visibility="direct",
    )
    posts, checkpoint = run(connector(fake), None)
    assert [p["id"] for p in posts] == [s["id"] for s in [*statuses, dm]]  # oldest first
    assert len(fake.requests) >= 3  # pages of 4, walked with min_id towards the newest
    assert all(r.arg("min_id") and not r.arg("since_id") for r in fake.requests)
    assert posts[0]["author_handle"] == "@olena@example.social"
    assert posts[0]["author_name"] == "Олена П." and posts[0]["url"].endswith(statuses[0]["id"])
    assert posts[-1]["kind"] == "dm" and posts[-1]["author_handle"] == "@taras@127.0.0.1"
    assert posts[-1]["text"] == "@help мій рахунок & картка\n\nще"

    new = fake.mention(olena, "<p>one more</p>", reply_to=statuses[0]["id"])
    posts, checkpoint = run(connector(fake), checkpoint)
    assert [p["id"] for p in posts] == [new["id"]]
    assert posts[0]["kind"] == "reply" and posts[0]["conversation_id"] == statuses[0]["id"]
    assert run(connector(fake), checkpoint)[0] == []


def test_429_pauses_until_reset_and_resumes_without_loss(fake: FakeMastodon) -> None:
    author = fake.account("ira", "Ira")
    fake.mention(author, "<p>first</p>")
    _, checkpoint = run(connector(fake), None)
    later = [fake.mention(author, f"<p>later {i}</p>")["id"] for i in range(6)]
    fake.remaining = 1  # the first page is served, the second gets 429
    fake.reset = datetime.now(UTC) + timedelta(minutes=3)
    conn = connector(fake)
    seen = []
    with pytest.raises(ConnectorRateLimited) as info:
        for _item, state in conn.fetch(checkpoint):
            seen.append(state)
    assert info.value.retry_at > datetime.now(UTC) + timedelta(minutes=2)
    assert len(seen) == 4  # the first page was yielded, each with its own checkpoint
    fake.remaining = 300
    posts, _ = run(connector(fake), seen[-1])
    assert [p["id"] for p in posts] == later[4:]


def test_refused_token_is_an_auth_error(fake: FakeMastodon) -> None:
    with pytest.raises(ConnectorAuthError, match="token_env"):
        run(connector(fake, token="wrong"), None)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b'[{"id": "1", "type": "ment'),
        Reply(200, [{"id": "1", "type": "mention"}] * 40, truncate=True),
        Reply(503, {"error": "unavailable"}),
    ],
    ids=["malformed", "truncated", "503"],
)
def test_broken_answers_are_transient(fake: FakeMastodon, reply: Reply) -> None:
    fake.fail_next(reply)
    with pytest.raises(ConnectorUnavailable) as info:
        run(connector(fake), None)
    assert not isinstance(info.value, ConnectorRateLimited)


def test_html_to_text_keeps_paragraphs_and_line_breaks() -> None:
    assert html_to_text("<p>a<br>b</p><p>&lt;c&gt;</p>") == "a\nb\n\n<c>"
