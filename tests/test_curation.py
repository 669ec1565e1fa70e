"""Bulk curation: `triage export --labelled FILE`, edit, `triage label --import FILE`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.model import Classifier
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from tests.test_lifecycle import run
from triage.store.schema import Label, Message
from triage.worker.scheduler import Worker


@pytest.fixture
def config(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> Path:
    """A config file over a store holding three classified messages."""
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email(*tiny_text("complaint", "billing")))
    deliver(box, "2.b", make_email(*tiny_text("question", "delivery")))
    deliver(box, "3.c", make_email(*tiny_text("feedback", "billing", "urgent")))
    worker = Worker(
        make_config(tmp_path, sources=[{"name": "box", "type": "maildir", "path": str(box)}])
    )
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    assert worker.run_once().polls[0].count("stored") == 3
    worker.db.dispose()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "triage.db"}"\n\n'
        f'[classifier]\nmodels_dir = "{tmp_path / "models"}"\n',
        encoding="utf-8",
    )
    return path


def labels(config: Path) -> list[tuple[int, str, str, str, str | None]]:
    worker = Worker(make_config(config.parent))
    with worker.db.session() as session:
        rows = session.scalars(select(Label).order_by(Label.id)).all()
        found = [(r.message_id, r.axis, r.label, r.labelled_by, r.model_label) for r in rows]
    worker.db.dispose()
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_csv_round_trip_changes_only_what_was_edited(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = config.parent / "labels.csv"
    code, out, _ = run(capsys, monkeypatch, config, "export", "--labelled", str(exported))
    assert code == 0 and "3 message(s)" in out
    rows = read_csv(exported)
    assert [r["kind"] for r in rows] == ["complaint", "question", "feedback"]
    assert {r["source"] for r in rows} == {"model"}
    assert list(rows[0]) == [
        "message_id", "subject", "text", "kind", "area", "urgency", "source", "source_name",
        "channel",
    ]  # fmt: skip
    assert rows[0]["subject"] == tiny_text("complaint", "billing")[0] and rows[0]["text"]

    rows[0]["kind"] = "feedback"  # a correction
    rows[1]["source"] = "human"  # a guess confirmed as right
    write_csv(exported, rows)
    code, out, err = run(
        capsys, monkeypatch, config, "label", "--import", str(exported), "--by", "curator"
    )
    assert code == 0, err
    assert "recorded 4 label(s) on 2 message(s) by curator" in out
    first, second = int(rows[0]["message_id"]), int(rows[1]["message_id"])
    assert sorted(labels(config)) == [
        (first, "kind", "feedback", "curator", "complaint"),
        (second, "area", "delivery", "curator", "delivery"),
        (second, "kind", "question", "curator", "question"),
        (second, "urgency", "normal", "curator", "normal"),
    ]

    run(capsys, monkeypatch, config, "export", "--labelled", str(exported))
    again = read_csv(exported)
    assert again[0]["kind"] == "feedback" and again[0]["source"] == "mixed"
    assert again[1]["source"] == "human" and again[2]["source"] == "model"
    code, out, _ = run(capsys, monkeypatch, config, "label", "--import", str(exported))
    assert code == 0 and "recorded 0 label(s)" in out  # nothing new: nothing recorded twice


def test_jsonl_round_trip_and_the_old_form_still_works(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = config.parent / "labels.jsonl"
    assert run(capsys, monkeypatch, config, "export", "--labelled", str(exported))[0] == 0
    rows = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert rows[2]["urgency"] == "urgent" and isinstance(rows[2]["message_id"], int)
    edited = [{"message_id": rows[2]["message_id"], "urgency": "normal", "area": "delivery"}]
    exported.write_text("".join(json.dumps(r) + "\n" for r in edited), encoding="utf-8")
    code, _, err = run(capsys, monkeypatch, config, "label", "--import", str(exported))
    assert code == 0, err
    message = rows[2]["message_id"]
    assert {(a, v) for m, a, v, _, _ in labels(config) if m == message} == {
        ("urgency", "normal"),
        ("area", "delivery"),
    }
    code, out, _ = run(capsys, monkeypatch, config, "label", str(message), "--kind", "spam")
    assert code == 0 and f"message {message}: kind = spam" in out


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("bad.csv", "message_id,kind\n1,feedback\nabc,question\n", "line 3: message_id 'abc'"),
        (
            "bad.csv",
            "message_id,kind\n1,feedback\n999,question\n",
            "line 3: there is no message 999",
        ),
        ("bad.csv", "id,kind\n1,feedback\n", "line 1: the header needs message_id"),
        (
            "bad.csv",
            "message_id;kind\n1;feedback\n",
            "it looks separated by ';': save it as comma-separated CSV",
        ),
        (
            "bad.csv",
            "message_id,kind\n1,feedback\n2,question\n1,Complaint\n1,FEEDBACK\n",
            "lines 2 and 4 give message 1 two kind labels ('feedback', 'complaint')",
        ),
        ("bad.csv", "message_id,kind\n1,feedback,extra\n", "line 2: more fields than the header"),
        ("bad.jsonl", '{"message_id": 1, "kind": "feedback"}\n{oops\n', "line 2: not valid JSON"),
        ("bad.jsonl", '{"message_id": 1, "kind": 5}\n', "line 1: kind 5 is not a label"),
        ("bad.txt", "message_id,kind\n", "use a .csv or .jsonl file (not '.txt')"),
        ("empty.csv", "", "empty.csv is empty"),
    ],
)
def test_a_bad_row_names_its_line_and_imports_nothing(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    content: str,
    error: str,
) -> None:
    path = config.parent / name
    path.write_text(content, encoding="utf-8")
    code, _, err = run(capsys, monkeypatch, config, "label", "--import", str(path))
    assert code == 2
    assert error in " ".join(err.split())
    assert labels(config) == []  # all or nothing


def test_an_export_to_a_missing_folder_is_one_sentence(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = config.parent / "nowhere" / "labels.csv"
    code, _, err = run(capsys, monkeypatch, config, "export", "--labelled", str(target))
    assert code == 2
    assert f"cannot write {target}: No such file or directory" in " ".join(err.split())


def test_import_and_message_id_do_not_mix(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, monkeypatch, config, "label", "1", "--import", "x.csv")
    assert code == 2 and "--import takes no MESSAGE_ID" in err
    code, _, err = run(capsys, monkeypatch, config, "label")
    assert code == 2 and "give MESSAGE_ID" in err


def test_labels_keep_one_spelling_and_new_ones_are_named(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spreadsheet's BOM, " Message_ID" and " COMPLAINT " are what a support lead sends;
    a label the model cannot learn as one class with 'complaint' never routes."""
    path = config.parent / "excel.csv"
    path.write_bytes(
        "\ufeff Message ID ,Kind,area\n1, COMPLAINT ,Billing\n2,complaint,biling\n".encode()
    )
    code, out, err = run(capsys, monkeypatch, config, "label", "--import", str(path))
    assert code == 0, err
    assert "recorded 4 label(s) on 2 message(s)" in out
    assert sorted((m, a, v) for m, a, v, _, _ in labels(config)) == [
        (1, "area", "billing"), (1, "kind", "complaint"),
        (2, "area", "biling"), (2, "kind", "complaint"),
    ]  # fmt: skip
    assert (
        "area 'biling' is a new label: the active model does not know it; "
        "did you mean 'billing'? (1 message(s))"
    ) in " ".join(err.split())
    code, out, err = run(capsys, monkeypatch, config, "label", "3", "--kind", "Feedback ")
    assert code == 0 and "message 3: kind = feedback" in out and "new label" not in err
    code, out, err = run(capsys, monkeypatch, config, "label", "3", "--area", "Biling")
    assert code == 0 and "message 3: area = biling" in out  # one spelling, even of a typo
    assert "area 'biling' is a new label" in err  # recorded once, still not the model's


def test_the_export_cannot_run_formulas_in_a_spreadsheet(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(make_config(config.parent))
    with worker.db.transaction() as session:
        first = session.get(Message, 1)
        assert first is not None
        first.subject = '=HYPERLINK("http://evil.example","refund")'
    worker.db.dispose()
    exported = config.parent / "labels.csv"
    assert run(capsys, monkeypatch, config, "export", "--labelled", str(exported))[0] == 0
    assert read_csv(exported)[0]["subject"] == '\'=HYPERLINK("http://evil.example","refund")'


def test_messages_sent_to_review_without_a_model_are_exported_to_be_labelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email(*tiny_text("complaint", "billing")))
    worker = Worker(
        make_config(tmp_path, sources=[{"name": "box", "type": "maildir", "path": str(box)}])
    )
    worker.db.upgrade()
    assert worker.run_once().polls[0].count("stored") == 1  # no model: sent to review
    worker.db.dispose()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "triage.db"}"\n', encoding="utf-8")
    exported = tmp_path / "labels.csv"
    assert run(capsys, monkeypatch, config, "export", "--labelled", str(exported))[0] == 0
    [row] = read_csv(exported)
    assert (row["kind"], row["area"], row["source"]) == ("", "", "")
    row["kind"], row["area"] = "complaint", "billing"
    write_csv(exported, [row])
    code, out, err = run(capsys, monkeypatch, config, "label", "--import", str(exported))
    assert code == 0, err
    assert "recorded 2 label(s) on 1 message(s)" in out
