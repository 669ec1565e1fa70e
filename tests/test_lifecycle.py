"""The model lifecycle from the CLI: the quality gate, rollback, human labels and retraining on them."""

from __future__ import annotations

import csv
import random
import shutil
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.gate import gate
from classifiers.model import Classifier
from tests.conftest import tiny_rows, tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from triage.cli import main
from triage.lifecycle import labels as lifecycle
from triage.lifecycle import retrain
from triage.lifecycle.registry import ModelRegistry
from triage.store import queries
from triage.store.database import Database
from triage.store.schema import Label, ModelActivation
from triage.worker.scheduler import Worker

AXES = ("kind", "area", "urgency")
COLUMNS = ["--text-column", "text", "--label", "kind", "--label", "area", "--label", "urgency"]


def write_rows(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", *AXES])
        writer.writerows(rows)
    return path


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "triage.db"}"\n\n'
        f'[classifier]\nmodels_dir = "{tmp_path / "models"}"\n',
        encoding="utf-8",
    )
    return config


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: Path,
    *args: str,
) -> tuple[int, str, str]:
    """Run the triage command in this process; returns (exit code, stdout, stderr)."""
    argv = ["triage", "--config", str(config), "--log-level", "WARNING", *args]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def active_version(config: Path) -> str | None:
    url = f"sqlite:///{config.parent / 'triage.db'}"
    row = ModelRegistry(Database(url), config.parent / "models").active()
    return row.version if row else None


def test_quality_gate_blocks_a_worse_model_until_forced_and_rollback_restores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    good_rows = tiny_rows()
    good = write_rows(tmp_path / "good.csv", good_rows)
    shuffled = [row[1] for row in good_rows]
    random.Random(0).shuffle(shuffled)
    bad = write_rows(
        tmp_path / "bad.csv",
        [(t, k, a, u) for (t, _, a, u), k in zip(good_rows, shuffled, strict=True)],
    )

    code, out, err = run(
        capsys, monkeypatch, config, "train", "--data", str(good), *COLUMNS, "--activate"
    )
    assert code == 0, err
    assert "(active)" in out and "activated: no model was active" in out
    first = active_version(config)
    assert first is not None

    code, out, err = run(
        capsys, monkeypatch, config, "train", "--data", str(bad), *COLUMNS, "--activate"
    )
    assert code == 1
    assert "refused: axis kind: macro-F1" in err and "points lower" in err
    assert "area" not in err.split("NOT activated")[0]  # only the damaged axis is named
    assert "NOT activated" in err
    assert active_version(config) == first
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert len(models) == 2  # the refused model is kept, for inspection
    [refused] = [m for m in models if m != first]
    assert f"`triage models activate {refused}`" in " ".join(err.split())

    code, out, err = run(
        capsys, monkeypatch, config, "train", "--data", str(bad), *COLUMNS, "--activate", "--force"
    )
    assert code == 0, err
    assert "forced past the quality gate: axis kind" in out
    forced = active_version(config)
    assert forced not in (None, first)

    code, out, err = run(capsys, monkeypatch, config, "models", "rollback")
    assert code == 0, err
    assert f"rolled back from model {forced}; model {first} is active" in out
    assert active_version(config) == first

    code, out, err = run(capsys, monkeypatch, config, "models", "rollback")
    assert code == 4
    assert "no earlier activation" in err
    assert active_version(config) == first

    code, out, _ = run(capsys, monkeypatch, config, "models", "list")
    assert code == 0 and first in out


def test_a_good_retrain_passes_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    data = write_rows(tmp_path / "data.csv", tiny_rows())
    more = write_rows(tmp_path / "more.csv", tiny_rows(seed=5))
    assert (
        run(capsys, monkeypatch, config, "train", "--data", str(data), *COLUMNS, "--activate")[0]
        == 0
    )

    code, out, err = run(
        capsys, monkeypatch, config,
        "train", "--data", str(data), "--data", str(more), *COLUMNS, "--activate",
    )  # fmt: skip

    assert code == 0, err
    assert "on the active model's evaluation set" in out
    assert "passed the quality gate" in out
    assert f"then refitted on all {2 * len(tiny_rows())} rows" in out


def test_the_saved_model_is_refitted_on_all_rows_after_its_held_out_evaluation(
    tmp_path: Path,
) -> None:
    # A word of its own in every row shows which rows a fitted vocabulary has seen.
    rows = [(f"{text} row{n}", *labels) for n, (text, *labels) in enumerate(tiny_rows())]
    spec = retrain.DataSpec((write_rows(tmp_path / "data.csv", rows),), ("text",), AXES)

    candidate = retrain.train_candidate(spec, holdout=0.2)

    model, evaluated, held_out = candidate.classifier, candidate.evaluated, candidate.held_out
    assert held_out is not None and 0 < len(held_out) < len(rows)
    assert evaluated.metadata["n_samples"] == len(rows) - len(held_out)
    assert model.metadata["n_samples"] == len(rows)
    own_words = [text.rsplit(" ", 1)[1] for text in held_out.texts]
    assert not any(w in evaluated.features.transformer_list[0][1].vocabulary_ for w in own_words)
    assert all(w in model.features.transformer_list[0][1].vocabulary_ for w in own_words)
    # The recorded scores and thresholds are the evaluated model's, and say so.
    for key in ("cv", "holdout"):
        assert model.metadata["metrics"][key] == evaluated.metadata["metrics"][key]
    assert model.metadata["abstain_threshold"] == evaluated.metadata["abstain_threshold"]
    refit = model.metadata["metrics"]["refit"]
    assert refit["evaluated_version"] == evaluated.version != model.version
    assert (refit["evaluated_n_samples"], refit["n_samples"]) == (
        len(rows) - len(held_out),
        len(rows),
    )

    # The refitted model has learned its own evaluation set, so the gate takes its scores
    # there from before the refit, and scores the next candidate as evaluated, too.
    loaded = Classifier.load(model.save(tmp_path / "models"))
    again = retrain.train_candidate(spec, holdout=0.2, active=loaded)
    verdict = gate(again.evaluated, loaded)
    assert verdict.compared_on.startswith("the active model's evaluation set (")
    assert verdict.active == model.metadata["metrics"]["holdout"]
    assert verdict.candidate == again.evaluated.metadata["metrics"]["holdout"]
    assert again.classifier.metadata["n_samples"] == len(rows)


def test_a_gate_on_cross_validation_over_other_rows_says_it_is_weak(tmp_path: Path) -> None:
    """An active model trained with --holdout 0 kept no evaluation set: the gate falls back to
    cross-validation estimates, over 100% and 80% of the file, and must say what they are."""
    spec = retrain.DataSpec((write_rows(tmp_path / "data.csv", tiny_rows()),), ("text",), AXES)
    active = retrain.train_candidate(spec, holdout=0).classifier
    candidate = retrain.train_candidate(spec, holdout=0.2, active=active)
    verdict = gate(candidate.evaluated, active)
    assert verdict.candidate == candidate.evaluated.metadata["metrics"]["cv"]
    assert verdict.compared_on.startswith("each model's cross-validation estimate (over different")


def test_rollback_steps_back_through_activations(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    db.upgrade()
    registry = ModelRegistry(db, tmp_path / "models")
    classifier, path = tiny_model
    registry.register(classifier, path, activate=False)
    other = Classifier(
        classifier.features, classifier.estimators, {**classifier.metadata, "version": "v-two"}
    )
    registry.register(other, other.save(tmp_path / "elsewhere"), activate=False)

    registry.activate(classifier.version, by="a")
    registry.activate("v-two", by="b")
    registry.activate("v-two", by="b")  # activating the active one again changes nothing

    assert registry.rollback() == ("v-two", classifier.version)
    with db.session() as session:
        history = list(session.scalars(select(ModelActivation).order_by(ModelActivation.id)))
    assert [(h.version, h.activated_by, h.rolled_back_at is None) for h in history] == [
        (classifier.version, "a", True),
        ("v-two", "b", False),
        ("v-two", "b", False),
    ]


def test_a_model_folder_unknown_to_this_database_is_registered_when_activated(
    tmp_path: Path,
    tiny_model: tuple[Classifier, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model trained against another database (or copied from another host) into
    models_dir is activated by its name on this one."""
    config = write_config(tmp_path)
    classifier, path = tiny_model
    shutil.copytree(path, tmp_path / "models" / classifier.version)

    code, out, _ = run(capsys, monkeypatch, config, "models", "activate", classifier.version)

    assert (code, active_version(config)) == (0, classifier.version)
    assert f"model {classifier.version} is active" in out
    code, out, _ = run(capsys, monkeypatch, config, "models", "list")
    assert code == 0 and classifier.version in out


def test_activate_refuses_a_folder_that_holds_another_version_or_a_path(
    tmp_path: Path,
    tiny_model: tuple[Classifier, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path)
    classifier, path = tiny_model
    shutil.copytree(path, tmp_path / "models" / "renamed")
    shutil.copytree(path, tmp_path / "outside")

    code, _, err = run(capsys, monkeypatch, config, "models", "activate", "renamed")
    assert code == 4 and f"holds model {classifier.version}" in err
    code, _, err = run(capsys, monkeypatch, config, "models", "activate", "../outside")
    assert code == 4 and "no model version '../outside'" in err
    assert active_version(config) is None


@pytest.fixture
def reviewed(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> Worker:
    """A worker that sent three messages to review: the model is never sure enough."""
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email(*tiny_text("complaint", "billing")))
    deliver(box, "2.b", make_email(*tiny_text("question", "delivery")))
    deliver(
        box, "3.c", make_email("Gift wrapping", "Could you wrap the order as a present for my mum")
    )
    source = {"name": "box", "type": "maildir", "path": str(box)}
    routing = {"review_department": "review", "min_confidence": 1.0}
    worker = Worker(make_config(tmp_path, sources=[source], routing=routing))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    assert worker.run_once().polls[0].count("stored") == 3
    return worker


def review_queue(worker: Worker) -> list[queries.ReviewRow]:
    with worker.db.session() as session:
        return queries.review_queue(session)


def test_review_lists_messages_sent_to_review_and_labels_keep_the_models_guess(
    reviewed: Worker,
) -> None:
    with reviewed.db.session() as session:
        queue = queries.review_queue(session)
    assert len(queue) == 3
    assert all(item.routing.startswith("sent to review") for item in queue)
    complaint = next(i for i in queue if i.subject == tiny_text("complaint", "billing")[0])
    guess = complaint.guesses["kind"]
    assert guess.label == "complaint" and 0 < guess.confidence < 1

    recorded = lifecycle.record_labels(reviewed.db, complaint.id, {"kind": "feedback"}, "lead")
    lifecycle.record_labels(
        reviewed.db, complaint.id, {"kind": "question", "area": "billing"}, "boss"
    )

    assert recorded[0].model_label == "complaint"
    with reviewed.db.session() as session:
        assert queries.human_labels(session)[complaint.id] == {
            "kind": "question",
            "area": "billing",
        }
        kind = session.scalars(
            select(Label).where(Label.axis == "kind").order_by(Label.id.desc())
        ).first()
        assert kind is not None and (kind.labelled_by, kind.model_label) == ("boss", "complaint")
        assert session.query(Label).count() == 3  # the superseded label is kept
        unlabelled = queries.review_queue(session, unlabelled_only=True)
    assert {i.id for i in unlabelled} == {i.id for i in queue if i.id != complaint.id}
    with pytest.raises(lifecycle.UnknownMessage, match="no message 999"):
        lifecycle.record_labels(reviewed.db, 999, {"kind": "spam"}, "lead")


def test_a_correction_changes_the_next_models_prediction(reviewed: Worker, tmp_path: Path) -> None:
    message = next(i for i in review_queue(reviewed) if i.subject == "Gift wrapping")
    base = retrain.DataSpec((write_rows(tmp_path / "base.csv", tiny_rows()),), ("text",), AXES)
    before = retrain.train_candidate(base, db=reviewed.db, holdout=0).classifier
    with reviewed.db.session() as session:
        stored = session.get(lifecycle.Message, message.id)
        text = f"{stored.subject}\n{stored.text}"
    old = before.predict([text])[0]
    want_kind = "feedback" if old["kind"].label != "feedback" else "complaint"
    want_area = "billing" if old["area"].label != "billing" else "delivery"

    lifecycle.record_labels(reviewed.db, message.id, {"kind": want_kind, "area": want_area}, "lead")
    after = retrain.train_candidate(base, db=reviewed.db, from_history=True, holdout=0)

    assert after.n_corrections == 1
    new = after.classifier.predict([text])[0]
    assert (new["kind"].label, new["area"].label) == (want_kind, want_area)
    assert after.classifier.metadata["training_data"]["corrections"] == 1
    assert "1 correction(s)" in after.classifier.metadata["source"]


def test_label_and_review_from_the_cli(
    reviewed: Worker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "triage.db"}"\n\n'
        f'[classifier]\nmodels_dir = "{tmp_path / "models"}"\n',
        encoding="utf-8",
    )
    code, out, err = run(capsys, monkeypatch, config, "review")
    assert code == 0, err
    assert "Gift wrapping" in out and "3 message(s)" in out
    target = review_queue(reviewed)[0]

    code, out, err = run(
        capsys,
        monkeypatch,
        config,
        "label",
        str(target.id),
        "--kind",
        "spam",
        "--urgency",
        "urgent",
        "--by",
        "olena",
    )
    assert code == 0, err
    assert f"message {target.id}: kind = spam (the model said" in out
    assert "'spam' is a new label" in err
    code, out, _ = run(capsys, monkeypatch, config, "review", "--unlabelled")
    assert "2 message(s)" in out

    code, _, err = run(capsys, monkeypatch, config, "label", str(target.id))
    assert code == 2 and "at least one of --kind" in err


def test_train_chooses_the_abstain_threshold_on_a_validation_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    chatter = ["what a sunny day", "my cat likes fish", "football tonight?", "nice song", "hi"]

    def with_oos(seed: int) -> list[tuple[str, str, str, str]]:
        rows = tiny_rows(seed)
        return rows + [(f"{text} {n}", "question", "oos", "normal") for n, text in
                       enumerate(chatter * 4)]  # fmt: skip

    data = write_rows(tmp_path / "data.csv", with_oos(0))
    validation = write_rows(tmp_path / "validation.csv", with_oos(7))

    code, _, err = run(
        capsys, monkeypatch, config,
        "train", "--data", str(data), *COLUMNS, "--validation", str(validation), "--activate",
    )  # fmt: skip

    assert code == 0, err
    version = active_version(config)
    assert version is not None
    model = Classifier.load(tmp_path / "models" / version)
    chosen = model.metadata["abstain"]["area"]
    assert chosen["chosen_by"] == f"validation data ({len(with_oos(7))} rows)"

    missing = tmp_path / "bad.csv"
    missing.write_text("text,kind\nhello,question\n", encoding="utf-8")
    code, _, err = run(
        capsys, monkeypatch, config,
        "train", "--data", str(data), *COLUMNS, "--validation", str(missing),
    )  # fmt: skip
    assert code != 0
    assert "area" in err and "bad.csv" in err


def test_train_points_out_mistakes_in_its_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    data = write_rows(tmp_path / "data.csv", tiny_rows())

    code, _, err = run(capsys, monkeypatch, config, "train", "--data", str(data), "--label", "kind")
    assert code == 2 and "--data needs --text-column too" in err
    code, _, err = run(
        capsys, monkeypatch, config, "train", "--data", str(data), *COLUMNS, "--force"
    )
    assert code == 2 and "--force only applies with --activate" in err
    assert not (tmp_path / "models").exists()  # refused before training

    code, _, err = run(
        capsys, monkeypatch, config,
        "train", "--data", str(data), *COLUMNS, "--validation", str(data),
    )  # fmt: skip
    assert code == 0, err
    assert "the validation rows were not used" in err  # no out-of-scope label to choose for
