"""The ``triage`` command: the admin's interface to the worker, the store and the models.

Exit codes scripts can rely on: 0 success; 1 the work ran but something failed (a source could
not be polled, a forward failed); 2 bad usage or an invalid config; 3 the database cannot be
opened; 4 no usable model; 130 interrupted, or a confirmation declined.

`triage status` is made for monitoring: 0 all is well; 1 something needs attention (a source
without a successful poll within [alerts] stale_after_minutes, a source with at least
[alerts] after_failures failed polls in a row, forwards that failed for good, no usable active
model), each problem named in one line (``problems`` with --json); 2 an invalid config; 3 the
database cannot be opened.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from classifiers.base import ClassifierError
from classifiers.datasets import LabelledData, read_labelled
from classifiers.model import Classifier
from classifiers.training import evaluate as evaluate_model
from triage import __version__
from triage.config import Config, check_secrets, doubts, load_config
from triage.decide.router import label_gaps
from triage.deliver.outbox import FlushResult, requeue
from triage.errors import StoreError, TriageError
from triage.intake.results import KEPT_OUTCOMES, PollResult
from triage.lifecycle import curation
from triage.lifecycle import labels as lifecycle
from triage.lifecycle.registry import ModelRegistry
from triage.store import queries
from triage.store.database import Database
from triage.store.identities import customer_ids, link
from triage.store.privacy import forget
from triage.store.schema import utcnow
from triage.store.sources import SourceStates
from triage.views import reports, status
from triage.views.reports import short, styled
from triage.worker.scheduler import PassResult, Worker
from triage.worker.stopping import on_signals

log = logging.getLogger(__name__)
# Customer text (a subject "[/order]") and error text are data: no console parses markup;
# styles are given as rich Text, by styled().
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


@dataclass
class Context:
    """What every command gets: where the config is and how loudly to log."""

    config_path: Path
    log_level: str | None

    def config(self) -> Config:
        config = load_config(self.config_path)
        _setup_logging(self.log_level or config.logging.level)
        return config

    def database(self, config: Config) -> Database:
        db = Database(config.database.url)
        outcome = db.upgrade()
        log.debug("%s", outcome)
        return db


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for chatty in ("imapclient", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))
    # Its skipped and missed runs are reported by the worker's own listener, in one sentence.
    logging.getLogger("apscheduler").setLevel(max(logging.getLevelName(level), logging.ERROR))


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="config.toml",
    envvar="TRIAGE_CONFIG",
    show_default=True,
    help="The configuration file (env TRIAGE_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Override [logging] level from the config.",
)
@click.version_option(__version__, prog_name="triage")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, log_level: str | None) -> None:
    """Support-triage worker: polls mailboxes, classifies requests, forwards them to departments."""
    ctx.obj = Context(config_path, log_level.upper() if log_level else None)


_GROUP_OPTIONS = ("-c", "--config", "--log-level")
"""The options of `triage` itself, which a subcommand does not know."""


def main() -> None:
    """Console entry point: turns the worker's own errors into one sentence and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.NoSuchOption as exc:
        _explained(exc).show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TriageError as exc:
        err.print(styled("error:", "bold red", exc), highlight=False)
        sys.exit(exc.exit_code)
    except ClassifierError as exc:
        err.print(styled("error:", "bold red", exc), highlight=False)
        sys.exit(4 if "model" in type(exc).__name__.lower() else 2)
    except DBAPIError as exc:
        # The database went away or refused a write after it was opened: still one sentence.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        err.print(styled("error:", "bold red", f"the database failed: {reason}"), highlight=False)
        sys.exit(StoreError.exit_code)


def _explained(exc: click.exceptions.NoSuchOption) -> click.UsageError:
    """An option of `triage` itself given after the command: say where it belongs."""
    name = exc.option_name
    if name not in _GROUP_OPTIONS:
        return exc
    return click.UsageError(
        f"{name} belongs before the command: triage {name} ... COMMAND", exc.ctx
    )


# --- config and database -------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_context
def config_check(ctx: Context) -> None:
    """Validate the config file and the secrets it names; exit 2 naming the bad key. A valid
    config that cannot work as it is (no sources, a Maildir folder missing, ...) is warned of."""
    config = ctx.config()
    check_secrets(config)
    out.print(
        f"{ctx.config_path} is valid: {len(config.sources)} source(s), "
        f"{len(config.departments)} department(s), forwarding by {config.forwarding.transport}"
    )
    for doubt in doubts(config):
        err.print(styled("warning:", "yellow", doubt), highlight=False)


@cli.group("db")
def db_group() -> None:
    """Manage the history store's schema."""


@db_group.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Create the database, or migrate it to the current schema."""
    config = ctx.config()
    out.print(Database(config.database.url).upgrade())


# --- the worker ----------------------------------------------------------------------------


@cli.command("run")
@click.option("--once", is_flag=True, help="One pass over every source and the outbox, then exit.")
@click.option("--quiet", "-q", is_flag=True, help="With --once: print no table, only the summary.")
@click.option(
    "--worker-id",
    metavar="NAME",
    help="This worker's name: in its log lines, and as the owner of the sources it polls "
    "(unique among the workers sharing a database; default hostname:pid).",
)
@pass_context
def run(ctx: Context, once: bool, quiet: bool, worker_id: str | None) -> None:
    """Run the worker: poll every source on its schedule and deliver forwards.

    SIGTERM/SIGINT stop it promptly (a batch being committed and a forward being sent are
    finished; what is being read is read again at the next start) with exit 0; a second signal
    stops it at once. SIGHUP re-reads the config file (an invalid one is refused and the running
    config kept). Serves the status page, /metrics and /healthz on [web] listen. With --once,
    delivers every forward that can go now, then exits 1 when a source could not be polled or
    a forward it queued or tried is not delivered (waiting for a retry, or failed), and 130 when
    a signal stopped it.
    """
    config = ctx.config()
    if worker_id:
        _name_worker(worker_id)
    check_secrets(config)
    worker = Worker(config, ctx.database(config), config_path=ctx.config_path, worker_id=worker_id)
    if not once:
        worker.serve()
        return
    with _stoppable(worker):
        result = worker.run_once()
    _show_pass(result, config, quiet)
    sys.exit(_pass_exit_code(result))


@contextmanager
def _stoppable(worker: Worker) -> Iterator[None]:
    """SIGTERM/SIGINT stop the work in hand promptly (a second one at once); afterwards the
    worker's children are reaped and its leases released, whatever happened."""
    try:
        with on_signals(worker.stop, cold=lambda: worker.cold_stop(INTERRUPTED)):
            yield
    finally:
        worker.close()
        if worker.stop.is_set():
            log.warning("%s", worker.stop.summary())


INTERRUPTED = 130
"""The exit code of a command a signal stopped (as the README's exit codes say)."""


def _pass_exit_code(result: PassResult) -> int:
    """130 stopped; 1 a poll failed or a forward this pass queued or tried is not delivered."""
    if result.stopped:
        return INTERRUPTED
    return 1 if result.failed else 0


def _name_worker(worker_id: str) -> None:
    """Put the worker's id in every log line."""
    name = worker_id.replace("%", "%%")
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@pass_context
def status_command(ctx: Context, as_json: bool) -> None:
    """Health at a glance: sources, outbox, quarantine, review, the model; exit 1 on trouble.

    Exit codes: 0 all is well; 1 something needs attention (each problem is named); 2 an
    invalid config; 3 the database cannot be opened. With --json, those two print
    {"healthy": false, "problems": [the error]} too, for a monitor that parses stdout.
    """
    try:
        config = ctx.config()
        report = status.collect(config, ctx.database(config))
    except TriageError as exc:
        if as_json:
            click.echo(json.dumps({"healthy": False, "problems": [str(exc)]}, ensure_ascii=False))
        raise
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        _show_status(report)
    sys.exit(0 if report.healthy else 1)


def _show_status(report: status.Status) -> None:
    table = Table("source", "type", "last success (UTC)", "lag", "errors", "next poll", "state")
    for s in report.sources:
        state = (
            styled("failing", "red") if s.failing else styled("stale", "red") if s.stale
            else styled("ok", "green")
        )  # fmt: skip
        table.add_row(
            s.name,
            s.type,
            f"{s.last_success_at:%Y-%m-%d %H:%M:%S}" if s.last_success_at else "never",
            _duration(s.lag_seconds),
            str(s.error_streak) + (f" ({short(s.last_error, 50)})" if s.last_error else ""),
            s.next_poll,
            state,
        )
    out.print(table)
    box = report.outbox
    out.print(
        f"outbox: {box.pending} pending ({box.retrying} retrying), {box.failed} failed, "
        f"{box.sent} sent"
    )
    out.print(f"quarantined: {report.quarantined}; sent to review: {report.review}")
    model = report.model
    if model.usable:
        out.print(f"model: {model.version} (active, loads)")
    else:
        out.print(Text.assemble("model: ", (str(model.problem), "red")), highlight=False)
    for problem in report.problems:
        out.print(styled("attention:", "bold red", problem), highlight=False)
    if report.healthy:
        out.print(styled("all is well", "green"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@cli.command("poll")
@click.argument("source")
@pass_context
def poll(ctx: Context, source: str) -> None:
    """Poll one SOURCE now and deliver what it queued; exit codes as `run --once`."""
    config = ctx.config()
    config.source(source)
    check_secrets(config)
    worker = Worker(config, ctx.database(config))
    began = utcnow()
    with _stoppable(worker):
        result = worker.finish(PassResult(polls=[worker.poll(source)]), FlushResult(), began)
    _show_pass(result, config, quiet=False)
    sys.exit(_pass_exit_code(result))


@cli.command("sources")
@pass_context
def sources(ctx: Context) -> None:
    """List every source with its checkpoint, health and when it is polled next."""
    config = ctx.config()
    db = ctx.database(config)
    states = SourceStates(db).all()
    table = Table(
        "source", "type", "checkpoint", "last success", "last error", "errors", "next poll"
    )
    for health in status.source_health(config, db):
        state = states.get(health.name)
        table.add_row(
            health.name,
            health.type,
            json.dumps(state.checkpoint) if state and state.checkpoint else "-",
            f"{health.last_success_at:%Y-%m-%d %H:%M:%S}" if health.last_success_at else "never",
            short(health.last_error or "-", 60),
            str(health.error_streak),
            health.next_poll,
        )
    out.print(table)


def _show_pass(result: PassResult, config: Config, quiet: bool) -> None:
    if not quiet:
        table = _outcome_table(result.polls)
        if table.row_count:
            out.print(table)
    for poll_result in result.polls:
        out.print(_poll_line(poll_result))
    where = (
        f"written to {config.forwarding.directory}"
        if config.forwarding.transport == "directory"
        else "sent by SMTP"
    )
    box = result.outbox
    out.print(
        f"outbox: {box.sent} forward(s) {where}, {box.retrying} to retry, {box.failed} failed"
    )
    if result.left.count:
        out.print(styled("not delivered:", "yellow", result.left.describe()))


def _poll_line(result: PollResult) -> str | Text:
    if result.error:
        return Text.assemble(f"{result.source}: ", ("poll failed", "red"), f": {result.error}")
    if result.busy_with:
        return f"{result.source}: not polled, {result.busy_with} is polling it now"
    if result.stopped:
        return (
            f"{result.source}: stopped after {result.count('stored')} new, "
            f"{result.forwarded} to forward; the rest is read at the next run"
        )
    if result.paused_until and not result.total:
        return f"{result.source}: rate-limited, paused until {result.paused_until:%H:%M:%S} UTC"
    return (
        f"{result.source}: {result.count('stored')} new, {result.count('duplicate')} already stored, "
        f"{result.count('quarantined')} quarantined, {result.forwarded} to forward"
    )


def _outcome_table(polls: Sequence[PollResult]) -> Table:
    table = Table(title="Messages triaged in this pass", show_lines=False)
    for column in ("sender", "subject", "kind", "area", "urgency", "forwarded to / why not"):
        table.add_column(column, overflow="fold")
    for poll_result in polls:
        for o in poll_result.outcomes:
            if o.status == "duplicate":
                continue
            if o.status == "quarantined":
                table.add_row(o.source_id, "", "", "", "", styled("quarantined:", "red", o.error))
                continue
            labels = [_label(o.predictions, axis) for axis in ("kind", "area", "urgency")]
            route = o.route
            target = route.department if route and route.department else None
            decision = Text.assemble((target, "bold"), "  ") if target else Text()
            if route is not None:
                decision.append(route.explain(), "dim")
            table.add_row(o.sender or "?", short(o.subject, 40), *labels, decision)
    if any(len(p.outcomes) < p.total for p in polls):
        table.caption = f"only the first {KEPT_OUTCOMES} messages of a source are listed"
    return table


def _label(predictions: dict[str, Any] | None, axis: str) -> str:
    if not predictions or axis not in predictions:
        return "-"
    prediction = predictions[axis]
    return f"{prediction.label} {prediction.confidence:.2f}"


# --- models --------------------------------------------------------------------------------


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
    if force and not activate:
        raise click.UsageError("--force only applies with --activate")
    if out_dir is not None:
        _writable_folder(out_dir, "--out")
    config = ctx.config()
    needs_db = activate or from_history
    db = ctx.database(config) if needs_db else None
    registry = ModelRegistry(db, config.classifier.models_dir) if db is not None else None
    active = None
    if registry is not None and registry.active() is not None:
        try:
            active = registry.load_active()
        except TriageError as exc:
            err.print(
                styled("warning:", "yellow", f"{exc}; the quality gate is skipped"), highlight=False
            )
    if from_history and active is not None and not (text_columns and label_columns):
        # The active model's columns: --from-history retrains it, on other files if given.
        recorded = lifecycle.DataSpec.of(active)
        text_columns = text_columns or recorded.text_columns
        label_columns = label_columns or recorded.label_columns
        data_paths = data_paths or recorded.files
    if data_paths:
        if not text_columns or not label_columns:
            missing = [
                name
                for name, given in (("--text-column", text_columns), ("--label", label_columns))
                if not given
            ]
            raise click.UsageError(f"--data needs {' and '.join(missing)} too")
        spec = lifecycle.DataSpec(
            tuple(p.resolve() for p in data_paths), text_columns, label_columns
        )
    elif from_history:
        raise click.UsageError(
            "--from-history without --data retrains the active model on its own files, and "
            "no model is active (or it does not load); name the files with --data"
        )
    else:
        raise click.UsageError("name the training data with --data (or use --from-history)")
    options = config.classifier.train_options()
    if validation_path is not None:
        options["validation"] = read_labelled(
            validation_path.resolve(), spec.text_columns, spec.label_columns
        )
    with _progress() as progress:
        candidate = lifecycle.train_candidate(
            spec, db=db, from_history=from_history, holdout=holdout, active=active,
            progress=progress, options=options,
        )  # fmt: skip
    classifier = candidate.classifier
    path = classifier.save(out_dir or config.classifier.models_dir)
    if registry is None:
        registry = ModelRegistry(ctx.database(config), config.classifier.models_dir)
    registry.register(classifier, path, activate=False)
    metrics = classifier.metadata.get("metrics", {})
    out.print(reports.metrics_table(metrics.get("cv", {}), title="Cross-validated quality"))
    if "holdout" in metrics:
        out.print(
            reports.metrics_table(
                metrics["holdout"], title=f"Held-out quality ({len(candidate.held_out or [])} rows)"
            )
        )
    if "refit" in metrics:
        refitted = metrics["refit"]
        out.print(
            f"scores above are of the model trained on {refitted['evaluated_n_samples']} rows; "
            f"the saved model was then refitted on all {refitted['n_samples']} rows"
        )
    if from_history:
        out.print(f"trained with {candidate.n_corrections} human correction(s)")
    for gap in label_gaps(config, classifier.metadata.get("axes", {})):
        err.print(styled("warning:", "yellow", f"{gap}; fix the labels or the config"))
    if not activate:
        out.print(
            f"model {classifier.version} saved to {path} "
            f"(not active; run `triage models activate {classifier.version}`)"
        )
        return
    reason = "no model was active"
    if active is not None:
        verdict = lifecycle.gate(candidate, active)
        out.print(f"quality gate against {verdict.active_version}, on {verdict.compared_on}:")
        for axis, scores in verdict.candidate.items():
            theirs = verdict.active.get(axis, {}).get("macro_f1")
            if scores.get("macro_f1") is not None and theirs is not None:
                out.print(f"  {axis}: macro-F1 {scores['macro_f1']:.3f} vs {theirs:.3f} active")
        if not verdict.passed and not force:
            for regression in verdict.regressions:
                err.print(styled("refused:", "bold red", regression), highlight=False)
            err.print(
                f"model {classifier.version} saved to {path} but NOT activated; "
                f"{verdict.active_version} stays active (to use it anyway: "
                f"`triage models activate {classifier.version}`)",
                highlight=False,
            )
            sys.exit(1)
        reason = (
            "forced past the quality gate: " + "; ".join(map(str, verdict.regressions))
            if verdict.regressions
            else f"passed the quality gate against {verdict.active_version}"
        )
    registry.activate(classifier.version, by=lifecycle.current_user(), reason=reason)
    out.print(f"model {classifier.version} saved to {path} (active)")
    out.print(f"activated: {reason}", highlight=False)


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
    for warning in _evaluation_warnings(classifier, data, data_path, text_columns):
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


def _evaluation_warnings(
    classifier: Classifier, data: LabelledData, path: Path, text_columns: Sequence[str]
) -> list[str]:
    """What makes the scores mean less than they seem: the training data itself, another
    text than the model reads, or labels it was never taught (each such row is an error)."""
    warnings = []
    trained = classifier.metadata.get("training_data") or {}
    files = {Path(name).resolve() for name in trained.get("files", ())}
    if data.fingerprint == classifier.metadata.get("data_fingerprint") or path.resolve() in files:
        warnings.append(
            f"{path.name} is the data this model was trained on, so these scores flatter it; "
            "evaluate on labelled mail it has not seen"
        )
    read = tuple(trained.get("text_columns", ()))
    if read and tuple(text_columns) != read:
        warnings.append(
            f"the model was trained on text column(s) {', '.join(read)}; scored on "
            f"{', '.join(text_columns)} it reads another text than in service"
        )
    for axis in set(data.axes) & set(classifier.axes):
        unknown = Counter(
            label for label in data.labelled(axis)[1] if label not in classifier.labels(axis)
        )
        if unknown:
            listed = ", ".join(
                f"{label!r} ({n} row{'s' * (n != 1)})" for label, n in unknown.most_common()
            )
            warnings.append(f"{axis}: labels the model does not know count as errors: {listed}")
    return warnings


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


# --- corrections ---------------------------------------------------------------------------


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


# --- history and operations ----------------------------------------------------------------


@cli.command("history")
@click.option("--customer", "address", required=True, help="The customer's email address.")
@click.option("--limit", default=50, show_default=True, help="At most this many requests.")
@pass_context
def history(ctx: Context, address: str, limit: int) -> None:
    """A customer's requests, newest first, with their classification and routing."""
    config = ctx.config()
    db = ctx.database(config)
    rows = reports.customer_history(db, address, limit)
    if not rows:
        out.print(f"no requests from {address}")
        sys.exit(1)
    out.print(reports.history_table(address, rows))


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@pass_context
def stats(ctx: Context, as_json: bool) -> None:
    """Counts: messages stored, by kind/area/urgency, forwards by status, quarantined items."""
    config = ctx.config()
    numbers = reports.stats(ctx.database(config))
    if as_json:
        click.echo(json.dumps(numbers, ensure_ascii=False))
        return
    out.print(reports.stats_tables(numbers))


@cli.group("outbox")
def outbox_group() -> None:
    """Forwards waiting, retrying or failed."""


@outbox_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "sent", "failed", "all"]),
    default="all",
    show_default=True,
)
@click.option("--limit", default=100, show_default=True)
@pass_context
def outbox_list(ctx: Context, status: str, limit: int) -> None:
    """The outbox, newest first."""
    config = ctx.config()
    out.print(reports.outbox_table(ctx.database(config), status, limit))


@outbox_group.command("retry")
@click.argument("forward_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Retry every failed forward.")
@pass_context
def outbox_retry(ctx: Context, forward_ids: tuple[int, ...], all_failed: bool) -> None:
    """Put failed forwards back in the queue (after fixing what made them fail)."""
    if not forward_ids and not all_failed:
        raise click.UsageError("name forward ids or pass --all-failed")
    config = ctx.config()
    count = requeue(ctx.database(config), forward_ids, all_failed)
    out.print(f"{count} forward(s) queued again")


@cli.group("quarantine")
def quarantine_group() -> None:
    """Messages that could not be parsed or classified (raw bytes kept)."""


@quarantine_group.command("list")
@pass_context
def quarantine_list(ctx: Context) -> None:
    """Quarantined messages with their errors."""
    config = ctx.config()
    out.print(reports.quarantine_table(ctx.database(config)))


@quarantine_group.command("show")
@click.argument("message_id", type=int)
@click.option("--raw", is_flag=True, help="Write the raw bytes to stdout, as received.")
@pass_context
def quarantine_show(ctx: Context, message_id: int, raw: bool) -> None:
    """One quarantined message: its error, source and headers (or --raw bytes)."""
    config = ctx.config()
    message = reports.quarantined(ctx.database(config), message_id)
    if message is None:
        err.print(f"no quarantined message {message_id}; see `triage quarantine list`")
        sys.exit(1)
    if raw:
        sys.stdout.buffer.write(message.raw)
        return
    out.print(f"message {message.id} from {message.source_id} ({message.size} bytes)")
    out.print(f"error: {message.error}", highlight=False)
    head = message.raw.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    out.print(head or "(no headers)", highlight=False, markup=False)


@quarantine_group.command("retry")
@click.argument("message_ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry every quarantined message.")
@pass_context
def quarantine_retry(ctx: Context, message_ids: tuple[int, ...], retry_all: bool) -> None:
    """Process quarantined messages again, after the cause was fixed; exit 1 if some still fail."""
    if not message_ids and not retry_all:
        raise click.UsageError("name message ids or pass --all")
    config = ctx.config()
    worker = Worker(config, ctx.database(config))
    began = utcnow()
    with _stoppable(worker):
        outcomes = worker.retry_quarantined(None if retry_all else list(message_ids))
        result = worker.finish(PassResult(), FlushResult(), began)
    still = sum(1 for o in outcomes if o.status == "quarantined")
    out.print(
        f"{len(outcomes) - still} message(s) processed, {still} still quarantined; "
        f"{result.outbox.sent} forward(s) delivered"
    )
    if result.left.count:
        out.print(styled("not delivered:", "yellow", result.left.describe()))
    sys.exit(_pass_exit_code(result) or (1 if still else 0))


@cli.command("purge")
@pass_context
def purge(ctx: Context) -> None:
    """Apply [retention] raw_days now: erase old raw messages, keep their classifications."""
    config = ctx.config()
    if not config.retention.raw_days:
        out.print("retention.raw_days is 0: messages are kept forever, nothing to purge")
        return
    count = Worker(config, ctx.database(config)).purge()
    out.print(f"erased the raw message and text of {count} message(s)")


@cli.group("customers")
def customers_group() -> None:
    """A customer's identities and personal data."""


@customers_group.command("forget")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def customers_forget(ctx: Context, address: str, yes: bool) -> None:
    """Erase every message, conversation and identity of ADDRESS (a right-to-erasure request)."""
    config = ctx.config()
    db = ctx.database(config)
    if not yes:
        click.confirm(f"Erase everything stored about {address}?", abort=True)
    gone = forget(db, address)
    if not gone.identities:
        err.print(f"nothing is stored about {address}")
        sys.exit(1)
    out.print(
        f"erased {address}: {gone.identities} identity(ies), {gone.messages} message(s), "
        f"{gone.conversations} conversation(s), {gone.forwards} forward record(s)"
    )


@customers_group.command("link")
@click.argument("address")
@click.argument("handle")
@pass_context
def customers_link(ctx: Context, address: str, handle: str) -> None:
    """Join two identities of one customer (e.g. an email ADDRESS and an X HANDLE), so history
    and forwards show their requests on every channel."""
    config = ctx.config()
    linked = link(ctx.database(config), address, handle)
    out.print(reports.identities_table(linked))


@customers_group.command("show")
@click.argument("address")
@pass_context
def customers_show(ctx: Context, address: str) -> None:
    """The identities linked to ADDRESS (an email address or a handle)."""
    config = ctx.config()
    db = ctx.database(config)
    with db.session() as session:
        ids = customer_ids(session, address)
    if not ids:
        err.print(f"no customer {address!r} is known")
        sys.exit(1)
    out.print(reports.identities_table(reports.customers(db, ids)))
