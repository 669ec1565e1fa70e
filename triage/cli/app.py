"""The ``triage`` group itself: its options, the context every command gets, the consoles, and
``main``, which turns the worker's own errors into one sentence and an exit code.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from classifiers.base import ClassifierError
from triage import __version__
from triage.config import Config, load_config
from triage.errors import StoreError, TriageError
from triage.store.database import Database
from triage.views.reports import styled

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
        sys.exit(exc.exit_code)
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
