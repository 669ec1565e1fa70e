"""Read-only views of the store and the models, as data (for ``--json``) and as tables."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, literal_column, select

from triage.store import identities
from triage.store.database import Database
from triage.store.queries import model_labels, routing_of
from triage.store.schema import (
    Classification,
    Customer,
    Forward,
    Message,
    ModelVersion,
    channel_key,
)

AXES = ("kind", "area", "urgency")


def styled(label: str, style: str, rest: object = None) -> Text:
    """A styled word, then plain text: markup is never parsed, so customer text prints as is."""
    text = Text(label, style=style)
    if rest is not None:
        text.append(f" {rest}")
    return text


def metrics_table(
    metrics: Mapping[str, Mapping[str, Any]], title: str = "Quality per axis"
) -> Table:
    """Accuracy and macro-F1 per axis (cross-validated when it comes from training)."""
    table = Table(title=title)
    for column in ("axis", "accuracy", "macro-F1", "n"):
        table.add_column(column, justify="left" if column == "axis" else "right")
    notes = []
    for axis, values in metrics.items():
        table.add_row(
            axis, _score(values.get("accuracy")), _score(values.get("macro_f1")),
            str(values.get("n", "")),
        )  # fmt: skip
        if values.get("skipped"):
            notes.append(f"{axis}: not estimated, {values['skipped']}")
        if "oos_recall" in values:
            notes.append(
                f"{axis}: in-scope accuracy {_score(values['in_scope_accuracy'])}, "
                f"out-of-scope recall {_score(values['oos_recall'])} at abstain threshold "
                f"{_score(values.get('abstain_threshold'), 2)}"
            )
        if repeated := values.get("repeated_texts"):
            notes.append(
                f"{axis}: {repeated} row(s) repeat an earlier text; each text is scored in "
                "one fold only"
            )
    table.caption = "; ".join(notes) or None
    return table


def short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _score(value: float | None, digits: int = 3) -> str:
    """A score, or "-" where it was not estimated (a class too small to cross-validate)."""
    return "-" if value is None else f"{value:.{digits}f}"


def models_table(versions: Sequence[ModelVersion]) -> Table:
    table = Table(title="Models")
    # The version begins with its UTC creation time (no column of its own: 80 columns must
    # do) and differs at its end, so it is never cut.
    for column in ("", "version (created UTC)", "samples", "data", "macro-F1 (CV)"):
        table.add_column(column, no_wrap=column.startswith("version"))
    for row in versions:
        cv = row.details.get("metrics", {}).get("cv", {})
        scores = "\n".join(f"{axis} {_score(m.get('macro_f1'), 2)}" for axis, m in cv.items())
        table.add_row(
            styled("*", "bold green") if row.active else "",
            row.version,
            str(row.details.get("n_samples", "")),
            str(row.details.get("source", "")),
            scores,
        )
    return table


@dataclass(frozen=True, slots=True)
class HistoryRow:
    received_at: str
    subject: str
    labels: dict[str, str]
    status: str
    routing: str


def customer_history(db: Database, address: str, limit: int) -> list[HistoryRow]:
    """A customer's requests on every linked identity, newest first."""
    with db.session() as session:
        messages = session.scalars(
            select(Message)
            .where(Message.customer_id.in_(identities.customer_ids(session, address)))
            .order_by(Message.received_at.desc(), Message.id.desc())
            .limit(limit)
        ).all()
        labels = model_labels(session, [m.id for m in messages])
        return [
            HistoryRow(
                f"{m.received_at:%Y-%m-%d %H:%M}",
                m.subject,
                {axis: guess.label for axis, guess in labels.get(m.id, {}).items()},
                m.status,
                routing_of(m),
            )
            for m in messages
        ]


def history_table(address: str, rows: Sequence[HistoryRow]) -> Table:
    table = Table(title=f"Requests from {address}")
    for column in ("received (UTC)", "subject", *AXES, "routing"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.received_at,
            row.subject,
            *(row.labels.get(axis, "-") for axis in AXES),
            row.routing or row.status,
        )
    return table


def stats(db: Database) -> dict[str, Any]:
    """Counts for ``triage stats``; the keys are a contract for scripts."""
    with db.session() as session:
        by_status = dict(
            session.execute(select(Message.status, func.count()).group_by(Message.status)).all()
        )
        labels: dict[str, dict[str, int]] = defaultdict(dict)
        for axis, label, count in session.execute(
            select(Classification.axis, Classification.label, func.count())
            .group_by(Classification.axis, Classification.label)
            .order_by(Classification.axis, Classification.label)
        ):
            labels[axis][label] = count
        forwards = dict(
            session.execute(select(Forward.status, func.count()).group_by(Forward.status)).all()
        )
        # No bind parameter: PostgreSQL matches a grouped expression with parameters only when
        # they are one and the same.
        quarantined = Message.status == literal_column("'quarantined'")
        by_source: dict[str, dict[str, int]] = {}
        by_channel: dict[str, dict[str, int]] = {}
        for source, channel, kind, held, count in session.execute(
            select(Message.source, Message.channel, Message.post_kind, quarantined, func.count())
            .group_by(Message.source, Message.channel, Message.post_kind, quarantined)
            .order_by(Message.source)
        ):
            state = "quarantined" if held else "stored"
            for table, key in ((by_source, source), (by_channel, channel_key(channel, kind))):
                counts = table.setdefault(key, {"stored": 0, "quarantined": 0})
                counts[state] += count
    return {
        "messages": sum(by_status.values()),
        "by_status": by_status,
        **{f"by_{axis}": labels.get(axis, {}) for axis in AXES},
        "by_axis": dict(labels),
        "forwards": {status: forwards.get(status, 0) for status in ("pending", "sent", "failed")},
        "quarantined": by_status.get("quarantined", 0),
        "by_source": by_source,
        "by_channel": dict(sorted(by_channel.items())),
    }


def stats_tables(numbers: Mapping[str, Any]) -> Group:
    summary = Table(title="History store")
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("messages stored", str(numbers["messages"]))
    summary.add_row("quarantined", str(numbers["quarantined"]))
    for status, count in numbers["forwards"].items():
        summary.add_row(f"forwards {status}", str(count))
    tables: list[Table] = [summary]
    for axis, counts in numbers["by_axis"].items():
        table = Table(title=f"By {axis}")
        table.add_column(axis)
        table.add_column("messages", justify="right")
        for label, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            table.add_row(label, str(count))
        tables.append(table)
    return Group(*tables)


def outbox_table(db: Database, status: str, limit: int) -> Table:
    with db.session() as session:
        query = select(Forward).order_by(Forward.id.desc()).limit(limit)
        if status != "all":
            query = query.where(Forward.status == status)
        forwards = session.scalars(query).all()
        table = Table(title="Outbox")
        for column in ("id", "status", "department", "to", "attempts", "subject", "last error"):
            table.add_column(column, overflow="fold")
        for f in forwards:
            table.add_row(
                str(f.id),
                f.status,
                Text.assemble(f.department, (" urgent", "red") if f.urgent else ""),
                ", ".join([*f.to_addrs, *f.cc_addrs]),
                str(f.attempts),
                short(f.message.subject, 120),
                f.last_error or "",
            )
    return table


def quarantine_table(db: Database) -> Table:
    with db.session() as session:
        rows = session.scalars(
            select(Message).where(Message.status == "quarantined").order_by(Message.id)
        ).all()
        table = Table(title="Quarantine")
        for column in ("id", "source id", "size", "error"):
            table.add_column(column, overflow="fold")
        for m in rows:
            table.add_row(str(m.id), m.source_id, str(m.size), m.error or "")
    return table


def quarantined(db: Database, message_id: int) -> Message | None:
    """One quarantined message, or None."""
    with db.session() as session:
        message = session.get(Message, message_id)
        return message if message is not None and message.status == "quarantined" else None


def customers(db: Database, ids: Sequence[int]) -> list[Customer]:
    with db.session() as session:
        return list(
            session.scalars(select(Customer).where(Customer.id.in_(ids)).order_by(Customer.id))
        )


def identities_table(rows: Sequence[Customer]) -> Table:
    table = Table(title="Identities of one customer")
    for column in ("id", "channel", "address or handle", "name", "first seen"):
        table.add_column(column)
    for c in rows:
        table.add_row(str(c.id), c.channel, c.address, c.display_name, f"{c.created_at:%Y-%m-%d}")
    return table
