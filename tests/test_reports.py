"""The tables the CLI prints: what a support lead reads must say what --json says."""

from __future__ import annotations

import io

from rich.console import Console

from triage.views.reports import metrics_table


def rendered(table: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, markup=False).print(table)
    return " ".join(buffer.getvalue().replace("│", " ").split())


def test_the_quality_table_names_what_is_missing_and_the_out_of_scope_numbers() -> None:
    metrics = {
        "kind": {
            "accuracy": 0.91, "macro_f1": 0.88, "n": 120, "in_scope_accuracy": 0.95,
            "oos_recall": 0.7, "abstain_threshold": 0.42, "repeated_texts": 4,
        },
        "area": {"accuracy": None, "macro_f1": None, "n": 9, "skipped": "a class is too small"},
    }  # fmt: skip
    text = rendered(metrics_table(metrics))
    assert "kind 0.910 0.880 120" in text and "area - - 9" in text
    assert (
        "kind: in-scope accuracy 0.950, out-of-scope recall 0.700 at abstain threshold 0.42" in text
    )
    assert "kind: 4 row(s) repeat an earlier text" in text
    assert "area: not estimated, a class is too small" in text
