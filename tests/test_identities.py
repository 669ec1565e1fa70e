"""One customer on several channels: linked identities share their history and earlier requests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from click.testing import CliRunner

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.fakes.x_api import FakeX
from tests.helpers import make_config, make_email
from triage.cli import cli
from triage.errors import TriageError
from triage.store.identities import link
from triage.views.reports import customer_history
from triage.worker.scheduler import Worker


@pytest.fixture
def fake_x(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeX]:
    with FakeX() as x:
        monkeypatch.setenv("TEST_X_TOKEN", x.token)  # type: ignore[attr-defined]
        yield x  # type: ignore[misc]


def test_linked_identities_share_history_and_earlier_requests(
    tmp_path: Path, fake_x: FakeX, tiny_model: tuple[Classifier, Path]
) -> None:
    old = deliver(
        tmp_path / "Maildir",
        "1.a",
        make_email(*tiny_text("question", "billing"), sender="Olena <olena@example.com>"),
    )
    os.utime(old, (1_600_000_000, 1_600_000_000))  # the email came long before the post
    sources = [
        {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")},
        {"name": "x", "type": "x", "api_base_url": fake_x.url, "user_id": fake_x.support_id,
         "token_env": "TEST_X_TOKEN"},
    ]  # fmt: skip
    worker = Worker(make_config(tmp_path, sources=sources))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    worker.poll("box")
    with pytest.raises(TriageError, match="no customer '@olena_p' is known"):
        link(worker.db, "olena@example.com", "@olena_p")

    olena = fake_x.user("olena_p", "Олена")
    fake_x.mention(olena, " ".join(tiny_text("complaint", "billing")))
    worker.poll("x")  # the handle is known now, but not yet linked: its forward is queued
    linked = link(worker.db, "olena@example.com", "olena_p")
    assert sorted(c.channel for c in linked) == ["email", "x"]
    assert len(customer_history(worker.db, "@olena_p", 10)) == 2

    assert worker.flush_outbox().sent == 1
    [forward] = list((tmp_path / "forwards").glob("*.eml"))
    summary = (
        message_from_bytes(forward.read_bytes(), policy=default).get_body(("plain",)).get_content()
    )
    assert "Earlier requests from this customer: 1" in summary  # the email, on another channel
    worker.db.dispose()


def test_cli_link_and_show(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email("hi", "text", sender="a@example.com"))
    deliver(tmp_path / "Maildir", "2.b", make_email("hi", "text", sender="b@example.com"))
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir")}
    config = make_config(tmp_path, sources=[source])
    worker = Worker(config)
    worker.db.upgrade()
    worker.run_once()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "{config.database.url}"\n[classifier]\nmodels_dir = "{tmp_path / "models"}"\n'
    )
    runner = CliRunner()
    linked = runner.invoke(
        cli, ["--config", str(path), "customers", "link", "a@example.com", "b@example.com"]
    )
    assert linked.exit_code == 0, linked.output
    shown = runner.invoke(cli, ["--config", str(path), "customers", "show", "b@example.com"])
    assert "a@example.com" in shown.output and "b@example.com" in shown.output
    missing = runner.invoke(cli, ["--config", str(path), "customers", "show", "c@example.com"])
    assert missing.exit_code == 1
    worker.db.dispose()
