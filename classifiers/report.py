"""An evaluation report a support lead can read: ``index.html`` plus one PNG per chart.

Per axis: the per-class precision/recall/F1 table, the confusion matrix, the calibration curve
(does a confidence of 0.8 mean right 80% of the time?) and the most confused label pairs with
example texts. Charts are drawn on matplotlib's Agg canvas without pyplot, so no display
is needed and no global state is touched. Every
text from the data is HTML-escaped: the labelled file is customer mail.
"""

from __future__ import annotations

import html
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_fscore_support

from classifiers import calibration
from classifiers.datasets import LabelledData
from classifiers.evaluation import AxisOutcome, predict_labelled
from classifiers.model import Classifier

log = logging.getLogger(__name__)

TOP_PAIRS = 10
EXAMPLES_PER_PAIR = 3
EXAMPLE_CHARS = 300


@dataclass(frozen=True, slots=True)
class ConfusedPair:
    """Rows of true label ``truth`` that the model labelled ``predicted``."""

    truth: str
    predicted: str
    count: int
    examples: tuple[str, ...]


def write_report(
    classifier: Classifier, data: LabelledData, out_dir: Path, title: str = ""
) -> Path:
    """Evaluate ``classifier`` on ``data`` and write the report into ``out_dir``.

    Args:
        classifier: The model to report on.
        data: Labelled rows it did not train on.
        out_dir: Created if missing; ``index.html`` and the PNGs are (over)written.
        title: What the data is, for the page heading (e.g. the file name).

    Returns:
        The path of ``index.html``.

    Raises:
        DatasetError: The data has an axis the model does not know.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for axis, outcome in predict_labelled(classifier, data).items():
        labels = sorted(set(outcome.truth) | set(outcome.decided))
        _plot_confusion(outcome, labels, out_dir / _png("confusion", axis), axis)
        _plot_calibration(outcome, out_dir / _png("calibration", axis), axis)
        pairs = confused_pairs(outcome, data.texts)
        sections.append(_axis_html(axis, outcome, labels, pairs))
    heading = f"Model {classifier.version}" + (f" on {title}" if title else "")
    page = _PAGE.format(title=_esc(heading), body="\n".join(sections))
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    log.info("report on %s written to %s", classifier.version, index)
    return index


def confused_pairs(
    outcome: AxisOutcome, texts: Sequence[str], top: int = TOP_PAIRS
) -> list[ConfusedPair]:
    """The most frequent (truth, predicted) mistakes, with a few example texts each."""
    counts = Counter((t, p) for t, p in zip(outcome.truth, outcome.decided, strict=True) if t != p)
    pairs = []
    for (truth, predicted), count in counts.most_common(top):
        examples = [
            texts[row]
            for row, t, p in zip(outcome.rows, outcome.truth, outcome.decided, strict=True)
            if (t, p) == (truth, predicted)
        ][:EXAMPLES_PER_PAIR]
        pairs.append(ConfusedPair(truth, predicted, count, tuple(examples)))
    return pairs


def _plot_confusion(outcome: AxisOutcome, labels: list[str], path: Path, axis: str) -> None:
    matrix = _confusion(outcome, labels)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = _figure(size, size)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{axis}: confusion matrix")
    if len(labels) <= 30:  # numbers in cells stay readable
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            color = "white" if value > limit else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _confusion(outcome: AxisOutcome, labels: list[str]) -> np.ndarray:
    """Rows are true labels, columns predicted ones (sklearn's layout, without its warning
    when the rows hold one label only)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, decided in zip(outcome.truth, outcome.decided, strict=True):
        matrix[index[truth], index[decided]] += 1
    return matrix


def _plot_calibration(outcome: AxisOutcome, path: Path, axis: str) -> None:
    hits = [p == t for p, t in zip(outcome.predicted, outcome.truth, strict=True)]
    bins = calibration.reliability(outcome.confidence, hits)
    fig, ax = _figure(5, 5)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if bins:
        ax.plot([b[2] for b in bins], [b[3] for b in bins], marker="o", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share correct")
    ax.set_title(f"{axis}: calibration")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _axis_html(
    axis: str, outcome: AxisOutcome, labels: list[str], pairs: list[ConfusedPair]
) -> str:
    hits = [p == t for p, t in zip(outcome.predicted, outcome.truth, strict=True)]
    ece = calibration.expected_calibration_error(outcome.confidence, hits)
    decided = [d == t for d, t in zip(outcome.decided, outcome.truth, strict=True)]
    accuracy = sum(decided) / len(decided) if decided else None
    summary = (
        f"{len(outcome.truth)} rows, accuracy {_pct(accuracy)}, calibration error (ECE) {_pct(ece)}"
    )
    return "\n".join(
        [
            f"<h2>{_esc(axis)}</h2>",
            f"<p>{_esc(summary)}</p>",
            _class_table(outcome, labels),
            f"<p>{_img('confusion', axis)}{_img('calibration', axis)}</p>",
            _pairs_html(pairs),
        ]
    )


def _class_table(outcome: AxisOutcome, labels: list[str]) -> str:
    precision, recall, f1, support = precision_recall_fscore_support(
        outcome.truth, outcome.decided, labels=labels, zero_division=0
    )
    rows = [
        f"<tr><td>{_esc(label)}</td><td>{p:.2f}</td><td>{r:.2f}</td><td>{f:.2f}</td>"
        f"<td>{int(n)}</td></tr>"
        for label, p, r, f, n in zip(labels, precision, recall, f1, support, strict=True)
    ]
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>rows</th></tr>"
    return f"<table>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _pairs_html(pairs: list[ConfusedPair]) -> str:
    if not pairs:
        return "<p>No mistakes on these rows.</p>"
    items = []
    for pair in pairs:
        examples = "".join(f"<li>{_esc(_clip(text))}</li>" for text in pair.examples)
        items.append(
            f"<li><b>{_esc(pair.truth)}</b> taken for <b>{_esc(pair.predicted)}</b>: "
            f"{pair.count} time(s)<ul>{examples}</ul></li>"
        )
    return "<h3>Most confused</h3>\n<ol>" + "\n".join(items) + "</ol>"


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _img(chart: str, axis: str) -> str:
    alt = f"{chart} of {axis}"
    return f'<img src="{_esc(_png(chart, axis))}" alt="{_esc(alt)}">'


def _png(chart: str, axis: str) -> str:
    """A file name for an axis's chart; an axis name never escapes the report folder."""
    return f"{chart}-{re.sub(r'[^A-Za-z0-9_.-]', '_', axis)}.png"


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[: EXAMPLE_CHARS - 1] + "…"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 48%; margin-right: 1%; vertical-align: top; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""
