"""The support lead's commands: ``train``, ``evaluate``, ``models ...``, ``label``, ``review`` and
``export``. The policy they follow lives in ``triage.lifecycle``; these read options and print.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from classifiers.datasets import read_labelled
from classifiers.evaluation import evaluate as evaluate_model
from classifiers.model import Classifier
from triage.cli.app import Context, _setup_logging, cli, err, out, pass_context
from triage.lifecycle import curation, retrain
from triage.lifecycle import labels as lifecycle
from triage.lifecycle.registry import ModelRegistry
from triage.store import queries
from triage.views import reports
from triage.views.reports import short, styled


@cli.command("train")
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Labelled CSV or JSONL file; repeatable (default with --from-history: the files "
    "the active model was trained on).",
)
@click.option(
    "--text-column",
    "text_columns",
    multiple=True,
    help="Text column; repeat to join several (e.g. subject and body).",
)
@click.option(
    "--label",
    "label_columns",
    multiple=True,
    help="Label column; each one becomes an axis of the model. Repeatable.",
)
@click.option(
    "--from-history",
    is_flag=True,
    help="Also train on every message labelled with `triage label`.",
)
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="Share of the files' rows held out to score the model (its evaluation set for the "
    "quality gate); the saved model is then refitted on all rows.",
)
@click.option(
    "--validation",
    "validation_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled rows (same columns as the data) to choose the out-of-scope abstain "
    "threshold on, instead of cross-validation of the training rows; never the test set.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also save the artifact in this folder; it is always kept in classifier.models_dir "
    "too, where workers load models from.",
)
@click.option("--activate", is_flag=True, help="Make the new model the active one, if it passes.")
@click.option("--force", is_flag=True, help="With --activate: activate even if the gate refuses.")
@pass_context
def train(
    ctx: Context,
    data_paths: tuple[Path, ...],
    text_columns: tuple[str, ...],
    label_columns: tuple[str, ...],
    from_history: bool,
    holdout: float,
    validation_path: Path | None,
    out_dir: Path | None,
    activate: bool,
    force: bool,
) -> None:
    """Train a classifier, with cross-validated and held-out quality per axis.

    The scores are of a model trained without the held-out rows; the saved model is then
    refitted on all rows with the same settings, so holding rows out costs it no accuracy.
    With --activate and a model already active, the candidate is compared with it on the
    active model's evaluation set; a macro-F1 more than 1 point lower on any axis keeps the
    candidate saved but inactive (exit 1), unless --force.
    """
    if out_dir is not None:
        _writable_folder(out_dir, "--out")
    config = ctx.config()
    request = retrain.Request(
        data_paths, text_columns, label_columns, from_history, holdout, validation_path,
        out_dir, activate, force,
    )  # fmt: skip
    with _progress() as progress:
        done = retrain.retrain(config, request, lambda: ctx.database(config), progress)
    _show_training(done, from_history)
    if done.refused:
        sys.exit(1)


def _show_training(done: retrain.Retrained, from_history: bool) -> None:
    classifier, path = done.candidate.classifier, done.path
    metrics = classifier.metadata.get("metrics", {})
    out.print(reports.metrics_table(metrics.get("cv", {}), title="Cross-validated quality"))
    if "holdout" in metrics:
        held = len(done.candidate.held_out or [])
        out.print(
            reports.metrics_table(metrics["holdout"], title=f"Held-out quality ({held} rows)")
        )
    if "refit" in metrics:
        refitted = metrics["refit"]
        out.print(
            f"scores above are of the model trained on {refitted['evaluated_n_samples']} rows; "
            f"the saved model was then refitted on all {refitted['n_samples']} rows"
        )
    if from_history:
        out.print(f"trained with {done.candidate.n_corrections} human correction(s)")
    for warning in done.warnings:
        err.print(styled("warning:", "yellow", warning), highlight=False)
    if verdict := done.verdict:
        out.print(f"quality gate against {verdict.active_version}, on {verdict.compared_on}:")
        for axis, scores in verdict.candidate.items():
            theirs = verdict.active.get(axis, {}).get("macro_f1")
            if scores.get("macro_f1") is not None and theirs is not None:
                out.print(f"  {axis}: macro-F1 {scores['macro_f1']:.3f} vs {theirs:.3f} active")
    if done.refused:
        assert verdict is not None
        for regression in verdict.regressions:
            err.print(styled("refused:", "bold red", regression), highlight=False)
        err.print(
            f"model {classifier.version} saved to {path} but NOT activated; "
            f"{verdict.active_version} stays active (to use it anyway: "
            f"`triage models activate {classifier.version}`)",
            highlight=False,
        )
    elif done.activated:
        out.print(f"model {classifier.version} saved to {path} (active)")
        out.print(f"activated: {done.reason}", highlight=False)
    else:
        out.print(
            f"model {classifier.version} saved to {path} "
            f"(not active; run `triage models activate {classifier.version}`)"
        )


def _writable_folder(folder: Path, option: str) -> None:
    """Refuse a folder that cannot be made before the work, not after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot make the folder {folder}: {exc.strerror}", param_hint=option
        ) from None


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield update


@cli.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    metavar="VERSION|DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="A version in classifier.models_dir, or a model folder (default: the active model).",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Labelled CSV or JSON Lines file the model has not been trained on.",
)
@click.option(
    "--text-column",
    "text_columns",
    multiple=True,
    required=True,
    help="Text column; repeat to join several, as the model was trained.",
)
@click.option(
    "--label",
    "label_columns",
    multiple=True,
    required=True,
    help="Label column, named as the model's axis; repeat for each axis to score.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also write an HTML report with charts (index.html and PNGs) into this folder.",
)
@pass_context
def evaluate(
    ctx: Context,
    model_dir: Path | None,
    data_path: Path,
    text_columns: tuple[str, ...],
    label_columns: tuple[str, ...],
    as_json: bool,
    report_dir: Path | None,
) -> None:
    """Measure a model on a labelled file: accuracy and macro-F1 per axis."""
    if report_dir is not None:
        _writable_folder(report_dir, "--report")
    if model_dir is not None and model_dir.is_dir():
        _setup_logging(ctx.log_level or "WARNING")
        classifier = Classifier.load(model_dir)
    elif model_dir is not None:
        config = ctx.config()
        folder = config.classifier.models_dir / str(model_dir)
        if not folder.is_dir():
            raise click.BadParameter(
                f"{model_dir} is neither a model folder nor a version in "
                f"{config.classifier.models_dir}; see `triage models list`",
                param_hint="--model",
            )
        classifier = Classifier.load(folder)
    else:
        config = ctx.config()
        classifier = ModelRegistry(ctx.database(config), config.classifier.models_dir).load_active()
    data = read_labelled(data_path, text_columns, label_columns)
    results = evaluate_model(classifier, data)
    for warning in retrain.evaluation_warnings(classifier, data, data_path, text_columns):
        err.print(styled("warning:", "yellow", warning), highlight=False)
    if report_dir is not None:
        # Imported here: matplotlib is slow to import and only this option needs it.
        from classifiers.report import write_report

        index = write_report(classifier, data, report_dir, title=data_path.name)
        err.print(f"report written to {index}")
    if as_json:
        click.echo(json.dumps({"model": classifier.version, "axes": results}, ensure_ascii=False))
        return
    out.print(
        reports.metrics_table(results, title=f"Model {classifier.version} on {data_path.name}")
    )


@cli.group("models")
def models_group() -> None:
    """List and activate trained models."""


@models_group.command("list")
@pass_context
def models_list(ctx: Context) -> None:
    """Every known model version, the active one marked."""
    config = ctx.config()
    registry = ModelRegistry(ctx.database(config), config.classifier.models_dir)
    out.print(reports.models_table(registry.versions()))


@models_group.command("active")
@pass_context
def models_active(ctx: Context) -> None:
    """Print the active version; exit 4 when none is active or it cannot be loaded."""
    config = ctx.config()
    registry = ModelRegistry(ctx.database(config), config.classifier.models_dir)
    click.echo(registry.load_active().version)


@models_group.command("activate")
@click.argument("version")
@pass_context
def models_activate(ctx: Context, version: str) -> None:
    """Make VERSION the model every worker uses (no restart needed)."""
    config = ctx.config()
    ModelRegistry(ctx.database(config), config.classifier.models_dir).activate(
        version, by=lifecycle.current_user(), reason="triage models activate"
    )
    out.print(f"model {version} is active")


@models_group.command("rollback")
@pass_context
def models_rollback(ctx: Context) -> None:
    """Re-activate the model that was active before the current one; exit 4 if there is none."""
    config = ctx.config()
    registry = ModelRegistry(ctx.database(config), config.classifier.models_dir)
    left, now = registry.rollback()
    out.print(f"rolled back from model {left}; model {now} is active")


@cli.command("label")
@click.argument("message_id", type=int, required=False)
@click.option("--kind", help="The right kind (complaint, feedback, question, spam, ...).")
@click.option("--area", help="The right product area.")
@click.option("--urgency", help="The right urgency.")
@click.option("--by", "who", help="Who labels (default: $USER).")
@click.option(
    "--import",
    "import_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Record the labels of a curated CSV/JSONL file (see `triage export --labelled`).",
)
@pass_context
def label(
    ctx: Context,
    message_id: int | None,
    kind: str | None,
    area: str | None,
    urgency: str | None,
    who: str | None,
    import_path: Path | None,
) -> None:
    """Record a human label of MESSAGE_ID (or of every row of --import FILE); `triage train
    --from-history` learns from it."""
    if import_path is not None:
        if message_id is not None or kind or area or urgency:
            raise click.UsageError("--import takes no MESSAGE_ID, --kind, --area or --urgency")
        _import_labels(ctx, import_path, who or lifecycle.current_user())
        return
    if message_id is None:
        raise click.UsageError("give MESSAGE_ID (or --import FILE)")
    labels = {
        axis: value.strip()
        for axis, value in (("kind", kind), ("area", area), ("urgency", urgency))
        if value and value.strip()
    }
    if not labels:
        raise click.UsageError("give at least one of --kind, --area, --urgency")
    config = ctx.config()
    db = ctx.database(config)
    for item in lifecycle.record_labels(db, message_id, labels, who or lifecycle.current_user()):
        guess = (
            f"the model said {item.model_label} {item.model_confidence:.2f}"
            if item.model_label is not None and item.model_confidence is not None
            else "no model guess stored"
        )
        out.print(f"message {message_id}: {item.axis} = {item.label} ({guess})", highlight=False)
        if item.new:
            err.print(styled("note:", "yellow", _new_label(item.axis, item.label, item.similar)))


def _new_label(axis: str, label: str, similar: Sequence[str]) -> str:
    hint = f"; did you mean {' or '.join(map(repr, similar))}?" if similar else ""
    return f"{axis} {label!r} is a new label: the active model does not know it{hint}"


def _import_labels(ctx: Context, path: Path, who: str) -> None:
    config = ctx.config()
    result = curation.import_labels(ctx.database(config), path, who)
    out.print(
        f"{path}: {result.rows} row(s); recorded {result.labels} label(s) on "
        f"{result.messages} message(s) by {who}; {result.unchanged} value(s) unchanged",
        highlight=False,
    )
    for (axis, label), count in result.new_labels.items():
        note = _new_label(axis, label, result.similar[axis, label])
        err.print(styled("note:", "yellow", f"{note} ({count} message(s))"))


@cli.command("export")
@click.option(
    "--labelled",
    "path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV or JSONL file (by extension): every classified, labelled or reviewed message, "
    "its current labels.",
)
@pass_context
def export(ctx: Context, path: Path) -> None:
    """Write messages with their labels (human if any, else the model's) for curation."""
    curation.file_format(path)
    config = ctx.config()
    count = curation.export_labelled(ctx.database(config), path)
    out.print(f"{count} message(s) written to {path}", highlight=False)


@cli.command("review")
@click.option("--unlabelled", is_flag=True, help="Only messages nobody has labelled yet.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array on stdout.")
@pass_context
def review(ctx: Context, unlabelled: bool, limit: int, as_json: bool) -> None:
    """Messages that went to review, with the model's guesses and their human labels."""
    config = ctx.config()
    with ctx.database(config).session() as session:
        items = queries.review_queue(session, unlabelled_only=unlabelled, limit=limit)
    if as_json:
        rows = [
            {
                "id": i.id,
                "received_at": i.received_at.isoformat(),
                "sender": i.sender,
                "subject": i.subject,
                "routing": i.routing,
                "why": i.why,
                "guesses": {
                    a: {"label": g.label, "confidence": g.confidence} for a, g in i.guesses.items()
                },
                "labels": i.labels,
            }
            for i in items
        ]
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title="Sent to review (label with `triage label ID --kind ... --area ...`)")
    for column in ("id", "received", "sender", "subject", "model guess", "why", "labelled"):
        table.add_column(column, overflow="fold")
    for i in items:
        table.add_row(
            str(i.id),
            f"{i.received_at:%Y-%m-%d %H:%M}",
            i.sender,
            short(i.subject, 40),
            ", ".join(f"{a} {g.label} {g.confidence:.2f}" for a, g in i.guesses.items()) or "-",
            short(i.why, 50),
            ", ".join(f"{a} {v}" for a, v in i.labels.items()) or "-",
        )
    out.print(table)
    out.print(f"{len(items)} message(s)")
