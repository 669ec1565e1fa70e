"""The admin's commands as a script calls them: the demo flow, JSON contracts, exit codes."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DEMO_TRAIN = [
    "--data", str(ROOT / "demo/training.csv"),
    "--text-column", "subject", "--text-column", "body",
    "--label", "kind", "--label", "area", "--label", "urgency",
]  # fmt: skip

pytestmark = pytest.mark.slow


def triage(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped config.toml, moved to a temporary folder, trained as `make demo` does."""
    folder = tmp_path_factory.mktemp("demo")
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    config = folder / "config.toml"
    config.write_text(
        text.replace('"demo/mailbox"', f'"{ROOT / "demo/mailbox"}"'), encoding="utf-8"
    )
    assert triage(config, "models", "active").returncode == 4
    trained = triage(config, "train", *DEMO_TRAIN, "--activate")
    assert trained.returncode == 0, trained.stderr
    assert "(active)" in trained.stdout
    return config


def test_demo_run_triages_the_sample_mailbox_once(demo: Path) -> None:
    first = triage(demo, "run", "--once")
    assert first.returncode == 0, first.stderr
    assert "demo-mailbox: 67 new, 0 already stored, 0 quarantined" in first.stdout
    for column in ("sender", "kind", "area", "urgency", "forwarded to / why not"):
        assert column in first.stdout
    forwards = sorted((demo.parent / "var/forwards").glob("*.eml"))
    assert len(forwards) >= 20
    for path in forwards:
        mail = message_from_bytes(path.read_bytes(), policy=default)
        assert mail["X-Triage-Forward"] and mail["Message-ID"]
        assert [part.get_content_type() for part in mail.iter_attachments()] == ["message/rfc822"]

    again = triage(demo, "run", "--once")
    assert again.returncode == 0, again.stderr
    assert "0 new, 67 already stored" in again.stdout
    assert len(list((demo.parent / "var/forwards").glob("*.eml"))) == len(forwards)


def test_stats_json_keys(demo: Path) -> None:
    triage(demo, "run", "--once")
    result = triage(demo, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["messages"] == 67
    assert stats["quarantined"] == 0
    assert sum(stats["by_kind"].values()) == 67
    assert set(stats["by_kind"]) <= {"complaint", "feedback", "question", "spam"}
    assert set(stats["forwards"]) == {"pending", "sent", "failed"}
    assert stats["forwards"]["sent"] >= 20


def test_history_of_a_customer(demo: Path) -> None:
    triage(demo, "run", "--once")
    result = triage(demo, "history", "--customer", "Marina.Tkachuk.Dnipro@gmail.com")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Не повернули гроші за ноутбук") == 3
    assert triage(demo, "history", "--customer", "nobody@example.com").returncode == 1


def test_demo_model_is_useful_on_the_held_out_mailbox(demo: Path) -> None:
    """The bundled model must classify the sample mailbox (never trained on) sensibly."""
    triage(demo, "run", "--once")
    expected = {
        row["file"].split("/")[1].split(":")[0]: row
        for row in csv.DictReader((ROOT / "demo/mailbox-labels.csv").open(encoding="utf-8"))
    }
    with sqlite3.connect(demo.parent / "var/triage.db") as db:
        rows = db.execute(
            "SELECT m.source_id, c.axis, c.label FROM messages m "
            "JOIN classifications c ON c.message_id = m.id"
        ).fetchall()
    correct: dict[str, int] = {}
    for source_id, axis, label in rows:
        correct[axis] = correct.get(axis, 0) + (
            expected[source_id.rsplit(":", 1)[1]][axis] == label
        )
    assert correct["kind"] / 67 >= 0.75
    assert correct["area"] / 67 >= 0.75


def test_evaluate_json_contract(demo: Path, tmp_path: Path) -> None:
    version = triage(demo, "models", "active").stdout.strip()
    model = demo.parent / "models" / version
    result = triage(demo, "evaluate", "--model", str(model), *DEMO_TRAIN, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for axis in ("kind", "area", "urgency"):
        scores = report["axes"][axis]
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1
        assert scores["n"] == 500


def test_evaluate_takes_a_version_name_too(demo: Path) -> None:
    version = triage(demo, "models", "active").stdout.strip()
    by_name = triage(demo, "evaluate", "--model", version, *DEMO_TRAIN, "--json")
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["model"] == version
    unknown = triage(demo, "evaluate", "--model", "nope", *DEMO_TRAIN)
    assert unknown.returncode == 2
    assert "nope is neither a model folder nor a version in" in " ".join(unknown.stderr.split())


def test_tampered_model_is_refused(demo: Path, tmp_path: Path) -> None:
    version = triage(demo, "models", "active").stdout.strip()
    original = demo.parent / "models" / version
    copy = tmp_path / version
    copy.mkdir()
    for part in original.iterdir():
        (copy / part.name).write_bytes(part.read_bytes())
    artifact = copy / "model.joblib"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = triage(demo, "evaluate", "--model", str(copy), *DEMO_TRAIN)
    assert result.returncode == 4
    assert "sha256" in result.stderr


def test_bad_training_data_fails_cleanly(demo: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(
        "subject,body,kind\nhello,world,complaint\nhi,there,complaint\n", encoding="utf-8"
    )
    result = triage(
        demo, "train", "--data", str(data), "--text-column", "subject", "--label", "nope"
    )
    assert result.returncode == 2
    assert "nope" in result.stderr and "kind" in result.stderr
    result = triage(
        demo, "train", "--data", str(data), "--text-column", "subject", "--label", "kind"
    )
    assert result.returncode == 2
    assert "Axis 'kind' has only one class ('complaint')" in result.stderr


def test_the_config_option_after_the_command_says_where_it_belongs(demo: Path) -> None:
    misplaced = triage(demo, "run", "--once", "--config", str(demo))
    assert misplaced.returncode == 2
    assert "--config belongs before the command: triage --config ... COMMAND" in misplaced.stderr


def test_customer_text_is_printed_as_is_never_as_markup(demo: Path, tmp_path: Path) -> None:
    """A subject like "[/order]" is rich markup: parsed, it crashed every listing."""
    mailbox = tmp_path / "mailbox"
    for part in ("new", "cur", "tmp"):
        (mailbox / part).mkdir(parents=True)
    (mailbox / "new/1.eml").write_bytes(
        b"From: [bold]Angry[/bold] <angry@example.com>\r\nTo: support@kvitka.example\r\n"
        b"Subject: [/order] refund [red]now\r\nMessage-ID: <markup@example.com>\r\n"
        b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n"
        b"The parcel never came and nobody answers [/]. I want my money back.\r\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        demo.read_text(encoding="utf-8")
        .replace(f'"{ROOT / "demo/mailbox"}"', f'"{mailbox}"')
        .replace('models_dir = "models"', f'models_dir = "{demo.parent / "models"}"'),
        encoding="utf-8",
    )
    version = triage(demo, "models", "active").stdout.strip()
    assert triage(config, "models", "activate", version).returncode == 0
    ran = triage(config, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert "[/order] refund [red]now" in ran.stdout
    history = triage(config, "history", "--customer", "angry@example.com")
    assert history.returncode == 0, history.stderr
    assert "[/order] refund [red]now" in history.stdout
    outbox = triage(config, "outbox", "list", "--status", "all")
    assert outbox.returncode == 0, outbox.stderr
    assert "[/order] refund [red]now" in outbox.stdout


def test_a_class_too_small_to_cross_validate_is_reported_not_a_crash(
    demo: Path, tmp_path: Path
) -> None:
    rows = list(csv.DictReader((ROOT / "demo/training.csv").open(encoding="utf-8")))
    for row in rows[:2]:
        row["kind"] = "praise"
    data = tmp_path / "two-praise.csv"
    with data.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "models"
    trained = triage(
        demo, "train", "--data", str(data), "--text-column", "subject", "--label", "kind",
        "--out", str(out),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "kind: not estimated, a class is too small to cross-validate" in trained.stdout
    listed = triage(demo, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "kind -" in listed.stdout


def test_evaluate_warns_on_training_data_and_unknown_labels(demo: Path, tmp_path: Path) -> None:
    on_training = triage(demo, "evaluate", *DEMO_TRAIN)
    assert on_training.returncode == 0, on_training.stderr
    assert "training.csv is the data this model was trained on" in on_training.stderr
    one_axis = triage(demo, "evaluate", "--data", str(ROOT / "demo/training.csv"),
                      "--text-column", "subject", "--label", "kind")  # fmt: skip
    assert "training.csv is the data this model was trained on" in one_axis.stderr
    assert (
        "the model was trained on text column(s) subject, body; scored on subject it reads "
        "another text than in service"
    ) in " ".join(one_axis.stderr.split())
    data = tmp_path / "typos.csv"
    data.write_text(
        "subject,body,kind\nParcel late,Where is it?,Complaint\nThanks,Great shop,feedback\n",
        encoding="utf-8",
    )
    typos = triage(demo, "evaluate", "--data", str(data), "--text-column", "subject",
                   "--text-column", "body", "--label", "kind")  # fmt: skip
    assert typos.returncode == 0, typos.stderr
    assert "kind: labels the model does not know count as errors: 'Complaint' (1 row)" in (
        typos.stderr
    )
    assert "trained on" not in typos.stderr


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_work(
    demo: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    trained = triage(demo, "train", *DEMO_TRAIN, "--out", str(blocker / "sub"))
    assert trained.returncode == 2
    assert f"--out: cannot make the folder {blocker / 'sub'}: Not a directory" in trained.stderr
    evaluated = triage(demo, "evaluate", *DEMO_TRAIN, "--report", str(blocker / "sub"))
    assert evaluated.returncode == 2
    assert "--report" in evaluated.stderr and "Not a directory" in evaluated.stderr


def test_from_history_takes_the_active_models_columns(demo: Path, tmp_path: Path) -> None:
    retrained = triage(demo, "train", "--from-history", "--data", str(ROOT / "demo/training.csv"))
    assert retrained.returncode == 0, retrained.stderr
    assert "trained with" in retrained.stdout and "human correction(s)" in retrained.stdout
    fresh = tmp_path / "config.toml"
    fresh.write_text(
        demo.read_text(encoding="utf-8").replace(
            'url = "sqlite:///var/triage.db"', f'url = "sqlite:///{tmp_path / "triage.db"}"'
        ),
        encoding="utf-8",
    )
    no_model = triage(fresh, "train", "--from-history")
    assert no_model.returncode == 2
    assert "no model is active (or it does not load); name the files with --data" in (
        " ".join(no_model.stderr.split())
    )
