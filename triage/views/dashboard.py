"""The read-only status page: volume charts, the review queue, forwards, sources, model quality.

Server-rendered HTML with inline SVG charts: no JavaScript, no assets, nothing to install.
Customer text (subjects, senders, errors) and model labels pass through :func:`_e`
(``html.escape``) everywhere, so a ``<script>`` in a subject is shown, never run.
"""

from __future__ import annotations

import html
import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, literal_column, select

from triage.config import Config
from triage.store.database import Database
from triage.store.queries import review_queue, unsent_alerts
from triage.store.schema import Classification, Forward, Message, utcnow
from triage.views import status

log = logging.getLogger(__name__)

DAYS = 30
REVIEW_ROWS = 25
UNCLASSIFIED = "(unclassified)"
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
FORWARD_STATES = ("pending", "retrying", "sent", "failed")


def _e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


# --- data ----------------------------------------------------------------------------------


def daily_volume(db: Database, axis: str, days: int = DAYS) -> dict[date, Counter[str]]:
    """Messages received per day (UTC) over the last ``days`` days, by their latest label."""
    first = utcnow().date() - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    with db.session() as session:
        received = dict(
            session.execute(
                select(Message.id, Message.received_at).where(Message.received_at >= since)
            ).all()
        )
        labels: dict[int, str] = {}
        for message_id, label in session.execute(
            select(Classification.message_id, Classification.label)
            .join(Message, Message.id == Classification.message_id)
            .where(Message.received_at >= since, Classification.axis == axis)
            .order_by(Classification.id)
        ):
            labels[message_id] = label  # the newest classification wins
    volume: dict[date, Counter[str]] = {
        since.date() + timedelta(days=i): Counter() for i in range(days)
    }
    for message_id, when in received.items():
        volume.setdefault(when.date(), Counter())[labels.get(message_id, UNCLASSIFIED)] += 1
    return volume


def forwards_by_department(db: Database) -> dict[str, dict[str, int]]:
    """Department to {pending, retrying, sent, failed}; pending here excludes retrying."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FORWARD_STATES, 0))
    # One expression object, grouped by as selected: `attempts > 0` written twice rendered two
    # bind parameters, which PostgreSQL refuses to match (GroupingError).
    tried = (Forward.attempts > literal_column("0")).label("tried")
    with db.session() as session:
        for department, state, attempts, count in session.execute(
            select(Forward.department, Forward.status, tried, func.count()).group_by(
                Forward.department, Forward.status, tried
            )
        ):
            key = "retrying" if state == "pending" and attempts else state
            table[department][key] = table[department].get(key, 0) + count
    return dict(sorted(table.items()))


@dataclass(frozen=True, slots=True)
class ForwardRow:
    id: int
    created_at: datetime
    department: str
    urgent: bool
    subject: str
    status: str
    attempts: int
    last_error: str | None


def recent_forwards(db: Database, limit: int = 20) -> list[ForwardRow]:
    with db.session() as session:
        rows = session.execute(
            select(Forward, Message.subject)
            .join(Message, Message.id == Forward.message_id)
            .order_by(Forward.id.desc())
            .limit(limit)
        ).all()
        return [
            ForwardRow(
                f.id,
                f.created_at,
                f.department,
                f.urgent,
                subject,
                "retrying" if f.status == "pending" and f.attempts else f.status,
                f.attempts,
                f.last_error,
            )
            for f, subject in rows
        ]


# --- charts --------------------------------------------------------------------------------


def bar_chart(volume: Mapping[date, Counter[str]], title: str) -> str:
    """A stacked bar chart per day as inline SVG, with a legend; a <title> per segment."""
    width, height, left, bottom, top = 1100, 220, 44, 28, 10
    days = sorted(volume)
    labels = _labels_by_volume(volume.values())
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    ticks = _ticks(max((sum(c.values()) for c in volume.values()), default=0))
    peak = ticks[-1]
    plot_h, slot = height - bottom - top, (width - left) / max(1, len(days))
    svg = (
        f'<svg class="chart" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>'
    )
    parts = [svg]
    for tick in ticks:
        y = top + plot_h - plot_h * tick / peak
        parts.append(
            f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    for i, day in enumerate(days):
        x, base = left + i * slot + slot * 0.15, float(top + plot_h)
        for label in labels:
            count = volume[day].get(label, 0)
            if not count:
                continue
            h = plot_h * count / peak
            base -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                f'fill="{colours[label]}"><title>{day:%Y-%m-%d} {_e(label)}: {count}</title></rect>'
            )
        if i % max(1, len(days) // 10) == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{height - 8}" text-anchor="middle">'
                f"{day:%m-%d}</text>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{colours[label]}"></i>{_e(label)} '
        f"({sum(c.get(label, 0) for c in volume.values())})</span>"
        for label in labels
    )
    empty = "" if labels else '<p class="muted">No messages in this period.</p>'
    return f"<figure>{''.join(parts)}<figcaption>{legend}</figcaption>{empty}</figure>"


def _labels_by_volume(counters: Iterable[Counter[str]]) -> list[str]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    labels = [label for label, _ in total.most_common() if label != UNCLASSIFIED]
    return labels + ([UNCLASSIFIED] if UNCLASSIFIED in total else [])


def _ticks(peak: int) -> list[int]:
    """0 and up to four round steps (1, 2, 5, 10, 20, 50, ...), the last one >= peak."""
    step = 1
    for factor in itertools.cycle((2, 2.5, 2)):
        if step * 4 >= peak:
            break
        step = int(step * factor)
    top = max(step, -(-peak // step) * step)
    return list(range(0, top + 1, step))


# --- page ----------------------------------------------------------------------------------


def render(config: Config, db: Database, *, started: datetime | None = None) -> str:
    """The whole page."""
    report = status.collect(config, db, load_model=False, started=started)
    sections = [
        _summary(report),
        _section(
            f"Volume per day by product area (last {DAYS} days)",
            bar_chart(daily_volume(db, "area"), "Messages per day by product area"),
        ),
        _section(
            f"Volume per day by urgency (last {DAYS} days)",
            bar_chart(daily_volume(db, "urgency"), "Messages per day by urgency"),
        ),
        _section("Sources", _sources_table(report.sources)),
        *_unsent_alerts_section(db),
        _section(f"Review queue ({report.review} in all; newest first)", _review_table(db)),
        _section("Forwards per department", _departments_table(db)),
        _section("Latest forwards", _forwards_table(recent_forwards(db))),
        _section("Active model", _model_section(db)),
    ]
    return PAGE.format(
        title="triage status",
        checked=f"{report.checked_at:%Y-%m-%d %H:%M:%S} UTC",
        body="\n".join(sections),
    )


def _unsent_alerts_section(db: Database) -> list[str]:
    """The alerts the admin may never have received, whole (none: no section)."""
    with db.session() as session:
        unsent = unsent_alerts(session)
    if not unsent:
        return []
    rows = [
        [_e(_when(a.created_at)), _e(a.subject), _e(a.error), f"<pre>{_e(a.body)}</pre>"]
        for a in unsent
    ]
    table = _table(("raised (UTC)", "alert", "why it was not mailed", "text"), rows, "")
    return [_section(f"Alerts that could not be mailed ({len(unsent)})", table)]


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _summary(report: status.Status) -> str:
    box = report.outbox
    tiles = [
        ("sources", f"{sum(s.healthy for s in report.sources)}/{len(report.sources)} healthy"),
        ("outbox", f"{box.pending} pending, {box.retrying} retrying, {box.failed} failed"),
        ("sent", str(box.sent)),
        ("review", str(report.review)),
        ("quarantined", str(report.quarantined)),
        ("model", report.model.version or "none active"),
    ]
    state = (
        '<p class="ok">All is well.</p>'
        if report.healthy
        else '<ul class="problems">'
        + "".join(f"<li>{_e(p)}</li>" for p in report.problems)
        + "</ul>"
    )
    cards = "".join(f'<div class="tile"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in tiles)
    return f'<section class="summary"><div class="tiles">{cards}</div>{state}</section>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table; cells are HTML already escaped by the caller."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "never"


def _sources_table(sources: Sequence[status.SourceHealth]) -> str:
    def row(s: status.SourceHealth) -> list[str]:
        state = "failing" if s.failing else "stale" if s.stale else "ok"
        return [
            _e(s.name),
            _e(s.type),
            _e(_when(s.last_success_at)),
            _e(_lag(s.lag_seconds)),
            _e(s.error_streak),
            _e(s.last_error or ""),
            _e(s.next_poll),
            f'<span class="badge {state}">{state}</span>',
        ]

    headers = (
        "source",
        "type",
        "last success (UTC)",
        "lag",
        "errors",
        "last error",
        "next poll",
        "",
    )
    return _table(headers, map(row, sources), "No sources are configured.")


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _review_table(db: Database) -> str:
    with db.session() as session:
        queue = review_queue(session, limit=REVIEW_ROWS)
    rows = [
        [
            _e(r.id),
            _e(_when(r.received_at)),
            _e(r.sender),
            _e(r.subject),
            _e(r.why),
            _e(", ".join(f"{axis} {g.label} {g.confidence:.2f}" for axis, g in r.guesses.items())),
        ]
        for r in queue
    ]
    headers = ("id", "received (UTC)", "from", "subject", "why", "model's guesses")
    return _table(headers, rows, "Nothing is waiting for review.")


def _departments_table(db: Database) -> str:
    rows = [
        [_e(department), *(_count(state, counts.get(state, 0)) for state in FORWARD_STATES)]
        for department, counts in forwards_by_department(db).items()
    ]
    return _table(("department", *FORWARD_STATES), rows, "Nothing has been forwarded yet.")


def _count(state: str, count: int) -> str:
    alert = count and state in ("failed", "retrying")
    return f'<span class="{"bad" if alert else ""}">{count}</span>'


def _forwards_table(forwards: Sequence[ForwardRow]) -> str:
    rows = [
        [
            _e(f.id),
            _e(_when(f.created_at)),
            _e(f.department) + (' <span class="badge failing">urgent</span>' if f.urgent else ""),
            _e(f.subject),
            f'<span class="badge {_e(f.status)}">{_e(f.status)}</span>',
            _e(f.attempts),
            _e(f.last_error or ""),
        ]
        for f in forwards
    ]
    headers = ("id", "queued (UTC)", "department", "subject", "status", "attempts", "last error")
    return _table(headers, rows, "The outbox is empty.")


def _model_section(db: Database) -> str:
    row = status.active_model_row(db)
    if row is None:
        return '<p class="bad">No model is active: messages are stored and sent to review.</p>'
    metrics: Mapping[str, Any] = row.details.get("metrics", {})
    scores = metrics.get("cv") or metrics.get("holdout") or {}
    which = "cross-validated" if metrics.get("cv") else "held-out"
    head = (
        f"<p>Version <b>{_e(row.version)}</b>, activated {_e(_when(row.activated_at))} UTC, "
        f"trained on {_e(row.details.get('n_samples', '?'))} samples "
        f"({_e(row.details.get('source', ''))}); {which} scores.</p>"
    )
    if not scores:
        return head + '<p class="muted">The model recorded no quality scores.</p>'
    return (
        head
        + '<div class="axes">'
        + "".join(_axis_table(a, m) for a, m in scores.items())
        + "</div>"
    )


def _axis_table(axis: str, scores: Mapping[str, Any]) -> str:
    per_class: Mapping[str, Mapping[str, Any]] = scores.get("per_class") or {}
    rows = [
        [
            _e(label),
            _score(values.get("precision")),
            _score(values.get("recall")),
            _score(values.get("f1")),
            _e(values.get("support", "")),
        ]
        for label, values in per_class.items()
    ]
    caption = (
        f"<h3>{_e(axis)}: accuracy {_score(scores.get('accuracy'))}, "
        f"macro-F1 {_score(scores.get('macro_f1'))}, n {_e(scores.get('n', ''))}</h3>"
    )
    table = _table(("class", "precision", "recall", "F1", "support"), rows, "No per-class scores.")
    return f'<div class="axis">{caption}{table}</div>'


def _score(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    tone = "bad" if value < 0.6 else "warn" if value < 0.8 else ""
    return f'<span class="{tone}">{value:.2f}</span>'


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px;
       color: #1d2330; background: #f6f7f9; }}
header {{ display: flex; justify-content: space-between; align-items: baseline; }}
h1 {{ font-size: 22px; margin: 4px 0; }} h2 {{ font-size: 16px; margin: 0 0 8px; }}
h3 {{ font-size: 13px; margin: 8px 0 4px; }}
section {{ background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 12px 14px;
          margin: 12px 0; overflow-x: auto; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
th, td {{ text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef2;
         vertical-align: top; overflow-wrap: anywhere; }}
th {{ color: #5b6475; font-weight: 600; white-space: nowrap; }}
.tiles {{ display: flex; gap: 10px; flex-wrap: wrap; }}
.tile {{ flex: 1 1 140px; border: 1px solid #eceef2; border-radius: 6px; padding: 8px 10px; }}
.tile b {{ display: block; font-size: 17px; }} .tile span {{ color: #5b6475; font-size: 12px; }}
.ok {{ color: #2f7d32; font-weight: 600; }} .problems {{ color: #b3261e; font-weight: 600; }}
.bad {{ color: #b3261e; font-weight: 600; }} .warn {{ color: #9a6700; }}
.muted {{ color: #7a8394; }}
.badge {{ border-radius: 10px; padding: 1px 8px; font-size: 12px; background: #eceef2; }}
.badge.ok, .badge.sent {{ background: #dff3e0; color: #1e5b21; }}
.badge.stale, .badge.retrying, .badge.pending {{ background: #fff1cc; color: #6b4a00; }}
.badge.failing, .badge.failed {{ background: #fbe0de; color: #8c1d18; }}
.chart {{ width: 100%; height: auto; }}
.chart text {{ font-size: 11px; fill: #5b6475; }} .chart .grid {{ stroke: #eceef2; }}
figure {{ margin: 0; }} figcaption {{ margin-top: 4px; }}
.key {{ margin-right: 14px; white-space: nowrap; font-size: 12px; }}
.key i {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px;
          border-radius: 2px; }}
.axes {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr)); gap: 12px; }}
</style></head>
<body><header><h1>triage status</h1><span class="muted">{checked}; read only, refreshed every
minute</span></header>
{body}
</body></html>
"""
