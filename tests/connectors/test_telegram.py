"""The Telegram connector through ``requests`` against the fake Bot API on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import (
    Checkpoint,
    ConnectorAuthError,
    ConnectorRateLimited,
    ConnectorUnavailable,
)
from connectors.telegram import TelegramConnector
from tests.fakes._server import Reply
from tests.fakes.telegram_api import FakeTelegram, error, rate_limited, user

OLENA = user(501, "Олена", "Петренко", "olena_p")
TARAS = user(502, "Тарас")


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server  # type: ignore[misc]


def connector(fake: FakeTelegram, token: str | None = None, limit: int = 100) -> TelegramConnector:
    return TelegramConnector(
        "tg",
        token=lambda: token or fake.token,
        api_base_url=fake.url,
        long_poll_seconds=0,
        limit=limit,
        timeout=5,
    )


def run(
    conn: TelegramConnector, checkpoint: Checkpoint | None
) -> tuple[list[dict], Checkpoint | None]:
    items = list(conn.fetch(checkpoint))
    conn.close()
    return [json.loads(i.raw) for i, _ in items], (items[-1][1] if items else checkpoint)


def test_private_and_addressed_group_messages_then_only_new_ones(fake: FakeTelegram) -> None:
    fake.private(OLENA, "Посилка не прийшла 😡 вже тиждень")
    fake.group(TARAS, "hello everyone")  # chatter: skipped
    fake.group(TARAS, "😀 @kvitka_help_bot where is my parcel?")  # emoji: UTF-16 offsets
    answer = fake.bot_message({"id": -1001234567890, "type": "supergroup"}, "Which order?")
    fake.group(OLENA, "order 42", reply_to=answer)
    fake.group(TARAS, "/status@kvitka_help_bot 42")
    fake.group(TARAS, "/start@other_bot")  # another bot's command
    fake.group(TARAS, "@someone_else hi")
    posts, checkpoint = run(connector(fake), None)
    assert [p["text"] for p in posts] == [
        "Посилка не прийшла 😡 вже тиждень",
        "😀 @kvitka_help_bot where is my parcel?",
        "order 42",
        "/status@kvitka_help_bot 42",
    ]
    dm = posts[0]
    assert dm["kind"] == "dm" and dm["author_handle"] == "@olena_p"
    assert dm["author_name"] == "Олена Петренко" and dm["url"] is None
    assert posts[1]["author_handle"] == "502"  # no username: the user id
    assert posts[2]["in_reply_to"] == f"-1001234567890:{answer['message_id']}"
    assert posts[2]["url"].startswith("https://t.me/kvitka_users/")
    # The last item's checkpoint also covers the chatter after it.
    assert checkpoint == {"offset": fake.updates[-1]["update_id"] + 1}
    assert fake.requests[0].path.endswith("/getMe")
    assert json.loads(fake.requests[1].arg("allowed_updates") or "") == ["message"]

    fake.private(TARAS, "ще одне")
    posts, checkpoint = run(connector(fake), checkpoint)
    assert [p["text"] for p in posts] == ["ще одне"]
    assert run(connector(fake), checkpoint)[0] == []


def test_updates_are_confirmed_only_by_the_next_poll(fake: FakeTelegram) -> None:
    for i in range(5):
        fake.private(OLENA, f"m{i}")
    first, _ = run(connector(fake, limit=3), None)
    # A crash before the commit: the stored checkpoint is still None, nothing is lost.
    again, checkpoint = run(connector(fake, limit=3), None)
    assert [p["id"] for p in again] == [p["id"] for p in first] and len(first) == 3
    rest, _ = run(connector(fake, limit=3), checkpoint)
    assert [p["text"] for p in rest] == ["m3", "m4"]


def test_only_chatter_is_skipped_without_getting_stuck(fake: FakeTelegram) -> None:
    for i in range(5):
        fake.group(TARAS, f"chatter {i}")
    fake.private(OLENA, "help")
    posts, _ = run(connector(fake, limit=2), None)
    assert [p["text"] for p in posts] == ["help"]


def test_429_pauses_for_retry_after_and_resumes_without_loss(fake: FakeTelegram) -> None:
    fake.private(OLENA, "first")
    _, checkpoint = run(connector(fake), None)
    fake.private(OLENA, "second")
    fake.fail_next(rate_limited(17))
    before = datetime.now(UTC)
    with pytest.raises(ConnectorRateLimited) as info:
        run(connector(fake), checkpoint)
    assert (
        before + timedelta(seconds=16)
        <= info.value.retry_at
        <= datetime.now(UTC) + timedelta(seconds=18)
    )
    posts, _ = run(connector(fake), checkpoint)
    assert [p["text"] for p in posts] == ["second"]


@pytest.mark.parametrize("code", [401, 404])
def test_refused_token_is_an_auth_error_without_the_token(
    fake: FakeTelegram, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.fail_next(error(code, "Unauthorized" if code == 401 else "Not Found"))
    with pytest.raises(ConnectorAuthError, match=str(code)) as info:
        run(connector(fake), None)
    assert fake.token not in str(info.value) + caplog.text


def test_wrong_token_against_the_fake_is_refused(fake: FakeTelegram) -> None:
    with pytest.raises(ConnectorAuthError, match="401"):
        run(connector(fake, token="123:wrong"), None)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b'{"ok": true, "result": [{"update_id": 1, "mess'),
        Reply(200, {"ok": True, "result": [{"update_id": 1}] * 40}, truncate=True),
        Reply(200, {"result": []}),
        Reply(502, b"<html>Bad Gateway</html>"),
        Reply(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}),
    ],
    ids=["malformed", "truncated", "no-ok", "html-502", "500"],
)
def test_broken_answers_are_transient_and_never_show_the_token(
    fake: FakeTelegram, reply: Reply
) -> None:
    fake.fail_next(reply, times=2)  # getMe, then getUpdates
    with pytest.raises(ConnectorUnavailable) as info:
        run(connector(fake), None)
    assert not isinstance(info.value, ConnectorRateLimited)
    assert fake.token not in str(info.value)


def test_server_down_is_transient_and_the_url_is_redacted() -> None:
    server = FakeTelegram().start()
    server.stop()
    conn = TelegramConnector(
        "tg",
        token=lambda: server.token,
        api_base_url=server.url,
        bot_username="b",
        long_poll_seconds=0,
        timeout=2,
    )
    with pytest.raises(ConnectorUnavailable) as info:
        list(conn.fetch(None))
    assert server.token not in str(info.value) and "<token>" in str(info.value)
