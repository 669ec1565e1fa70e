"""The operator's commands: ``history``, ``stats``, ``outbox ...``, ``quarantine ...``, ``purge`` and
``customers ...``.
"""

from __future__ import annotations

import json
import sys

import click

from triage.cli.app import Context, cli, err, out, pass_context
from triage.cli.worker import _pass_exit_code, _stoppable
from triage.deliver.outbox import FlushResult, requeue
from triage.store.identities import customer_ids, link
from triage.store.privacy import forget
from triage.store.schema import utcnow
from triage.views import reports
from triage.views.reports import styled
from triage.worker.scheduler import PassResult, Worker


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
