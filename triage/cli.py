"""The ``triage`` command: the admin's interface to the worker, the store and the models.

Exit codes scripts can rely on: 0 success; 1 the work ran but something failed (a source could
not be polled, a forward failed); 2 bad usage or an invalid config; 3 the database cannot be
opened; 4 no usable model.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from classifiers.base import ClassifierError
from classifiers.datasets import read_labelled
from classifiers.model import Classifier
from classifiers.training import evaluate as evaluate_model
from classifiers.training import train as train_model
from triage import __version__, reports
from triage.config import Config, check_secrets, load_config
from triage.errors import TriageError
from triage.forwarding import requeue
from triage.pipeline import PollResult
from triage.privacy import forget
from triage.registry import ModelRegistry
from triage.scheduler import PassResult, Worker
from triage.store.database import Database
from triage.store.schema import SourceState, utcnow

log = logging.getLogger(__name__)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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
    for chatty in ("imapclient", "apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))


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


def main() -> None:
    """Console entry point: turns the worker's own errors into one sentence and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TriageError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except ClassifierError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(4 if "model" in type(exc).__name__.lower() else 2)


# --- config and database -------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_context
def config_check(ctx: Context) -> None:
    """Validate the config file and the secrets it names; exit 2 naming the bad key."""
    config = ctx.config()
    check_secrets(config)
    out.print(
        f"{ctx.config_path} is valid: {len(config.sources)} source(s), "
        f"{len(config.departments)} department(s), forwarding by {config.forwarding.transport}"
    )


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
@pass_context
def run(ctx: Context, once: bool, quiet: bool) -> None:
    """Run the worker: poll every source on its schedule and deliver forwards.

    Stops cleanly on SIGTERM/SIGINT after the batch in hand. With --once, exits 1 when a source
    could not be polled or a forward failed.
    """
    config = ctx.config()
    check_secrets(config)
    worker = Worker(config, ctx.database(config))
    if not once:
        worker.serve()
        return
    result = worker.run_once()
    _show_pass(result, config, quiet)
    failed = any(poll.error for poll in result.polls) or result.outbox.failed
    sys.exit(1 if failed else 0)


@cli.command("poll")
@click.argument("source")
@pass_context
def poll(ctx: Context, source: str) -> None:
    """Poll one SOURCE now and deliver what it queued."""
    config = ctx.config()
    config.source(source)
    check_secrets(config)
    worker = Worker(config, ctx.database(config))
    result = PassResult(polls=[worker.poll(source)])
    result.outbox = worker.flush_outbox()
    _show_pass(result, config, quiet=False)
    sys.exit(1 if result.polls[0].error else 0)


@cli.command("sources")
@pass_context
def sources(ctx: Context) -> None:
    """List every source with its checkpoint, health and when it is polled next."""
    config = ctx.config()
    worker = Worker(config, ctx.database(config))
    with worker.db.session() as session:
        states = {s.source: s for s in session.scalars(select(SourceState))}
    table = Table(
        "source", "type", "checkpoint", "last success", "last error", "errors", "next poll"
    )
    for source in config.sources:
        state = states.get(source.name)
        interval = source.poll_interval or config.schedule.poll_interval
        table.add_row(
            source.name,
            source.type,
            json.dumps(state.checkpoint) if state and state.checkpoint else "-",
            f"{state.last_success_at:%Y-%m-%d %H:%M:%S}"
            if state and state.last_success_at
            else "never",
            _short(state.last_error or "-", 60) if state else "-",
            str(state.error_streak) if state else "0",
            _next_poll(worker, source.name, state, interval),
        )
    out.print(table)


def _next_poll(worker: Worker, name: str, state: SourceState | None, interval: float) -> str:
    now = utcnow()
    if state and state.paused_until and state.paused_until > now:
        return f"paused until {state.paused_until:%Y-%m-%d %H:%M:%S} (rate limit)"
    backoff = worker.pipeline.backoff_until(name, interval)
    if backoff and backoff > now:
        return f"backing off until {backoff:%Y-%m-%d %H:%M:%S}"
    return f"every {interval:g} s"


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


def _poll_line(result: PollResult) -> str:
    if result.error:
        return f"{result.source}: [red]poll failed[/]: {result.error}"
    if result.paused_until and not result.outcomes:
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
                table.add_row(o.source_id, "", "", "", "", f"[red]quarantined[/]: {o.error}")
                continue
            labels = [_label(o.predictions, axis) for axis in ("kind", "area", "urgency")]
            route = o.route
            target = route.department if route and route.department else None
            decision = f"[bold]{target}[/]" if target else ""
            if route is not None:
                decision += ("" if not target else "  ") + f"[dim]{route.reason}[/]"
            table.add_row(o.sender or "?", _short(o.subject, 40), *labels, decision)
    return table


def _label(predictions: dict[str, Any] | None, axis: str) -> str:
    if not predictions or axis not in predictions:
        return "-"
    prediction = predictions[axis]
    return f"{prediction.label} {prediction.confidence:.2f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- models --------------------------------------------------------------------------------


@cli.command("train")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Labelled CSV or JSONL file.",
)
@click.option(
    "--text-column",
    "text_columns",
    multiple=True,
    required=True,
    help="Text column; repeat to join several (e.g. subject and body).",
)
@click.option(
    "--label",
    "label_columns",
    multiple=True,
    required=True,
    help="Label column; each one becomes an axis of the model. Repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the artifact (default: classifier.models_dir).",
)
@click.option("--activate", is_flag=True, help="Make the new model the active one.")
@pass_context
def train(
    ctx: Context,
    data_path: Path,
    text_columns: tuple[str, ...],
    label_columns: tuple[str, ...],
    out_dir: Path | None,
    activate: bool,
) -> None:
    """Train a classifier from a labelled file, with cross-validated quality per axis."""
    config = ctx.config()
    data = read_labelled(data_path, text_columns, label_columns)
    with _progress() as progress:
        classifier = train_model(data, progress=progress, source=data_path.name)
    path = classifier.save(out_dir or config.classifier.models_dir)
    ModelRegistry(ctx.database(config), config.classifier.models_dir).register(
        classifier, path, activate=activate
    )
    out.print(reports.metrics_table(classifier.metadata.get("metrics", {}).get("cv", {})))
    state = (
        "active"
        if activate
        else "not active; run `triage models activate " + classifier.version + "`"
    )
    out.print(f"model {classifier.version} saved to {path} ({state})")


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
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Model version folder (default: the active model).",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
)
@click.option("--text-column", "text_columns", multiple=True, required=True)
@click.option("--label", "label_columns", multiple=True, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@pass_context
def evaluate(
    ctx: Context,
    model_dir: Path | None,
    data_path: Path,
    text_columns: tuple[str, ...],
    label_columns: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure a model on a labelled file: accuracy and macro-F1 per axis."""
    if model_dir is not None:
        _setup_logging(ctx.log_level or "WARNING")
        classifier = Classifier.load(model_dir)
    else:
        config = ctx.config()
        classifier = ModelRegistry(ctx.database(config), config.classifier.models_dir).load_active()
    data = read_labelled(data_path, text_columns, label_columns)
    results = evaluate_model(classifier, data)
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
    ModelRegistry(ctx.database(config), config.classifier.models_dir).activate(version)
    out.print(f"model {version} is active")


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
    outcomes = worker.pipeline.retry_quarantined(None if retry_all else list(message_ids))
    outbox = worker.flush_outbox()
    still = sum(1 for o in outcomes if o.status == "quarantined")
    out.print(
        f"{len(outcomes) - still} message(s) processed, {still} still quarantined; "
        f"{outbox.sent} forward(s) delivered"
    )
    sys.exit(1 if still else 0)


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
