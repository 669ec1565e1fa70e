"""X and Telegram sources through the whole worker: stored once per channel, forwarded with the
author and the link, replayed without duplicates, paused by a rate limit, isolated in an outage."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from datetime import timedelta
from email.header import decode_header, make_header
from email.message import Message as Email
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from sqlalchemy import func, select, update

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.fakes.mastodon_api import FakeMastodon
from tests.fakes.telegram_api import FakeTelegram, user
from tests.fakes.x_api import FakeX
from tests.helpers import make_config
from triage.cli import cli
from triage.config import check_secrets
from triage.errors import ConfigError
from triage.store.schema import Customer, Forward, Message, SourceState, utcnow
from triage.worker.scheduler import Worker


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeX, FakeTelegram]]:
    with FakeX() as x, FakeTelegram() as telegram:
        monkeypatch.setenv("TEST_X_TOKEN", x.token)  # type: ignore[attr-defined]
        monkeypatch.setenv("TEST_TG_TOKEN", telegram.token)  # type: ignore[attr-defined]
        yield x, telegram  # type: ignore[misc]


def social_worker(
    tmp_path: Path, x: FakeX, telegram: FakeTelegram, model: tuple[Classifier, Path]
) -> Worker:
    sources = [
        {
            "name": "x-support",
            "type": "x",
            "api_base_url": x.url,
            "user_id": x.support_id,
            "token_env": "TEST_X_TOKEN",
            "direct_messages": True,
        },
        {
            "name": "telegram-bot",
            "type": "telegram",
            "api_base_url": telegram.url,
            "token_env": "TEST_TG_TOKEN",
            "long_poll_seconds": 0,
            "timeout": 5,
        },
    ]
    worker = Worker(make_config(tmp_path, sources=sources))
    worker.db.upgrade()
    worker.registry.register(*model, activate=True)
    return worker


def text(kind: str, area: str) -> str:
    return " ".join(tiny_text(kind, area))


def forwards(tmp_path: Path) -> list[Email]:
    return [
        email.message_from_bytes(p.read_bytes())
        for p in sorted((tmp_path / "forwards").glob("*.eml"))
    ]


def _subject(mail: Email) -> str:
    return str(make_header(decode_header(mail["Subject"])))


def count(worker: Worker, **where: str) -> int:
    with worker.db.session() as session:
        query = select(func.count()).select_from(Message)
        for column, value in where.items():
            query = query.where(getattr(Message, column) == value)
        return session.scalar(query) or 0


def test_posts_are_stored_classified_and_forwarded_with_author_and_link(
    tmp_path: Path, fakes: tuple[FakeX, FakeTelegram], tiny_model: tuple[Classifier, Path]
) -> None:
    x, telegram = fakes
    olena = x.user("olena_p", "Олена Петренко")
    complaint = x.mention(olena, text("complaint", "billing"))
    x.mention(olena, text("question", "delivery"))
    x.dm(olena, text("feedback", "delivery"))
    telegram.private(user(501, "Тарас", "Коваль", "taras_k"), text("complaint", "delivery"))
    worker = social_worker(tmp_path, x, telegram, tiny_model)

    result = worker.run_once()
    assert [p.error for p in result.polls] == [None, None]
    assert [p.count("stored") for p in result.polls] == [3, 1]
    assert count(worker, channel="x") == 3 and count(worker, channel="telegram") == 1
    with worker.db.session() as session:
        customers = {(c.channel, c.address) for c in session.scalars(select(Customer))}
    assert customers == {("x", "@olena_p"), ("telegram", "@taras_k")}

    mails = {m["Subject"]: m for m in forwards(tmp_path)}
    assert result.outbox.sent == len(mails) == 3  # two complaints and the feedback DM
    x_mail = next(m for m in mails.values() if "X mention from @olena_p" in _subject(m))
    summary, attachment = x_mail.get_payload()
    body = summary.get_payload(decode=True).decode()
    assert "Олена Петренко (@olena_p)" in body
    assert f"https://x.com/olena_p/status/{complaint}" in body
    assert attachment.get_content_type() == "application/json"
    assert attachment.get_filename() == "post.json"
    assert json.loads(attachment.get_payload(decode=True))["id"] == complaint


def test_a_replay_after_a_crash_before_the_commit_adds_nothing_twice(
    tmp_path: Path, fakes: tuple[FakeX, FakeTelegram], tiny_model: tuple[Classifier, Path]
) -> None:
    x, telegram = fakes
    x.mention(x.user("ivan"), text("complaint", "billing"))
    telegram.private(user(502, "Ірина", username="iryna"), text("complaint", "delivery"))
    worker = social_worker(tmp_path, x, telegram, tiny_model)
    first = worker.run_once()
    assert [p.count("stored") for p in first.polls] == [1, 1]
    with worker.db.transaction() as session:  # as if the checkpoints had never been saved
        session.execute(update(SourceState).values(checkpoint=None))
    replay = worker.run_once()
    assert [p.count("duplicate") for p in replay.polls] == [1, 1]
    assert [p.count("stored") for p in replay.polls] == [0, 0]
    with worker.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Forward)) == 2
    assert count(worker) == 2


def test_an_outage_of_one_channel_does_not_stop_the_other(
    tmp_path: Path, fakes: tuple[FakeX, FakeTelegram], tiny_model: tuple[Classifier, Path]
) -> None:
    x, telegram = fakes
    worker = social_worker(tmp_path, x, telegram, tiny_model)
    telegram.private(user(503, "Петро"), text("complaint", "delivery"))
    telegram.stop()
    x.mention(x.user("olha"), text("complaint", "billing"))
    result = worker.run_once()
    assert result.polls[0].count("stored") == 1 and result.polls[0].error is None
    assert result.polls[1].error and telegram.token not in result.polls[1].error
    assert result.outbox.sent == 1


def test_a_rate_limit_pauses_only_that_source_and_resumes_without_loss(
    tmp_path: Path, fakes: tuple[FakeX, FakeTelegram], tiny_model: tuple[Classifier, Path]
) -> None:
    x, telegram = fakes
    author = x.user("oksana")
    x.mention(author, text("question", "billing"))
    worker = social_worker(tmp_path, x, telegram, tiny_model)
    worker.run_once()
    x.mention(author, text("complaint", "billing"))
    x.exhaust("mentions")
    telegram.private(user(504, "Марта"), text("complaint", "delivery"))

    paused = worker.run_once()
    assert paused.polls[0].paused_until is not None and paused.polls[0].error is None
    assert paused.polls[1].count("stored") == 1  # the other channel goes on
    with worker.db.session() as session:
        state = session.get(SourceState, "x-support")
        assert state is not None and state.paused_until == paused.polls[0].paused_until
        assert state.error_streak == 0

    asked = len(x.requests)
    assert worker.run_once().polls[0].paused_until is not None
    assert len(x.requests) == asked  # not polled while paused

    x.new_window("mentions")
    worker.states.clock = lambda: paused.polls[0].paused_until + timedelta(seconds=1)  # type: ignore[operator]
    resumed = worker.run_once()
    assert resumed.polls[0].count("stored") == 1 and resumed.polls[0].paused_until is None
    assert count(worker, channel="x") == 2
    with worker.db.session() as session:
        state = session.get(SourceState, "x-support")
        assert state is not None and state.paused_until is None
    assert utcnow() < paused.polls[0].paused_until  # type: ignore[operator]


def test_triage_sources_lists_checkpoint_health_and_pause(
    tmp_path: Path, fakes: tuple[FakeX, FakeTelegram], tiny_model: tuple[Classifier, Path]
) -> None:
    x, telegram = fakes
    x.mention(x.user("olha"), text("question", "billing"))
    worker = social_worker(tmp_path, x, telegram, tiny_model)
    worker.run_once()
    x.exhaust("mentions")
    telegram.stop()
    worker.run_once()
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(worker.config.model_dump(mode="json", exclude_none=True)))
    result = CliRunner().invoke(cli, ["--config", str(config), "sources"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    x_row = next(line for line in result.output.splitlines() if "x-support" in line)
    tg_row = next(line for line in result.output.splitlines() if "telegram-bot" in line)
    assert "since_id" in x_row and "paused until" in x_row and "rate limit" in x_row
    assert " x " in x_row.replace("│", " ") and "never" not in x_row
    assert "cannot reach" in tg_row and "backing off" in tg_row


def test_social_sources_need_a_named_token_and_resolve_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = {"name": "x1", "type": "x", "user_id": "42"}
    with pytest.raises(ConfigError, match=r"sources\[0\]: set token_env or token_file"):
        make_config(tmp_path, sources=[source])
    with pytest.raises(ConfigError, match=r"sources\[0\]\.type must be one of .*'telegram'"):
        make_config(tmp_path, sources=[{**source, "type": "myspace"}])
    config = make_config(tmp_path, sources=[{**source, "token_env": "TEST_UNSET_TOKEN"}])
    assert config.sources[0].api_base_url == "https://api.twitter.com"
    monkeypatch.delenv("TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.token_env: .*TEST_UNSET_TOKEN"):
        check_secrets(config)
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(0o644)
    config = make_config(tmp_path, sources=[{**source, "token_file": str(token)}])
    with pytest.raises(ConfigError, match=r"sources\[0\]\.token_file: .* readable by everyone"):
        check_secrets(config)
    token.chmod(0o600)
    check_secrets(config)


def test_mastodon_mentions_through_the_worker(
    tmp_path: Path, tiny_model: tuple[Classifier, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeMastodon() as masto:
        monkeypatch.setenv("TEST_MASTO_TOKEN", masto.token)  # type: ignore[attr-defined]
        source = {
            "name": "masto", "type": "mastodon", "api_base_url": masto.url,  # type: ignore[attr-defined]
            "token_env": "TEST_MASTO_TOKEN", "timeout": 5,
        }  # fmt: skip
        worker = Worker(make_config(tmp_path, sources=[source]))
        worker.db.upgrade()
        worker.registry.register(*tiny_model, activate=True)
        olena = masto.account("olena", "Олена П.", "example.social")  # type: ignore[attr-defined]
        masto.mention(olena, f"<p>{text('complaint', 'billing')}</p>")  # type: ignore[attr-defined]
        masto.mention(olena, f"<p>{text('question', 'delivery')}</p>", visibility="direct")  # type: ignore[attr-defined]
        first = worker.run_once()
        assert first.polls[0].count("stored") == 2 and first.outbox.sent == 1
        [mail] = forwards(tmp_path)
        summary = mail.get_payload()[0].get_payload(decode=True).decode()
        assert "@olena@example.social" in summary and "https://example.social/@olena/" in summary
        assert worker.run_once().polls[0].count("stored") == 0
        with worker.db.session() as session:
            channels = session.scalars(select(Message.channel)).all()
        assert channels == ["mastodon", "mastodon"]
        worker.db.dispose()
