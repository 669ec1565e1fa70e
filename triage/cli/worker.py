"""The worker's commands: ``run [--once]``, ``poll``, ``sources``, ``status``, ``config check`` and
``db upgrade``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from triage.cli.app import Context, cli, err, out, pass_context
from triage.config import Config, check_secrets, doubts
from triage.deliver.outbox import FlushResult
from triage.errors import TriageError
from triage.intake.results import KEPT_OUTCOMES, PollResult
from triage.store.database import Database
from triage.store.schema import utcnow
from triage.store.sources import SourceStates
from triage.views import status
from triage.views.reports import short, styled
from triage.worker.scheduler import PassResult, Worker
from triage.worker.stopping import on_signals

log = logging.getLogger(__name__)


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
