"""Classifier benchmark on real public data, through the product's own training and prediction.

    .venv/bin/python benchmarks/classify.py                 # both datasets, table
    .venv/bin/python benchmarks/classify.py --json          # one JSON object keyed by dataset
    .venv/bin/python benchmarks/classify.py --dataset clinc150 --no-embeddings

For each dataset (banking77 train/test; clinc150 data_full train + oos_train / test + oos_test)
it trains with `classifiers.training.train` exactly as `triage train` does (5-fold CV estimate
included in the training time; on clinc150 that CV also chooses the abstain threshold from the
out-of-fold predictions of the training rows), scores the test split with
`classifiers.training.evaluate`, and times `Classifier.predict` on the whole test split in one
batch and one message at a time. The same is done for the embedding mode when its extra is
installed and a model directory is given, and for a plain TF-IDF (word 1-2 + char_wb 2-5) +
LinearSVC baseline, trained and timed in the same run. The test splits are only ever scored.

Benchmarks are not tests: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.svm import LinearSVC

from classifiers import calibration
from classifiers.datasets import LabelledData, read_labelled
from classifiers.evaluation import evaluate
from classifiers.model import Classifier
from classifiers.training import train

DATASETS = ("banking77", "clinc150")
AXIS = "intent"
OOS = "oos"
LATENCY_SAMPLES = 1000


def load(name: str, root: Path) -> tuple[LabelledData, LabelledData]:
    """(train, test) of one dataset, with one axis "intent"."""
    return _load(name, root)[:2]  # type: ignore[return-value]


def validation(name: str, root: Path) -> LabelledData | None:
    """clinc150's val + oos_val split (training-side data), None for banking77."""
    return _load(name, root)[2]


def _load(name: str, root: Path) -> tuple[LabelledData, LabelledData, LabelledData | None]:
    if name == "banking77":
        splits = [
            read_labelled(root / "banking77" / f"{part}.csv", ["text"], ["category"])
            for part in ("train", "test")
        ]
        train_data, test_data = (
            LabelledData(data.texts, {AXIS: data.labels["category"]}) for data in splits
        )
        return train_data, test_data, None
    raw = json.loads((root / "clinc150" / "data_full.json").read_text(encoding="utf-8"))

    def rows(*keys: str) -> LabelledData:
        pairs = [pair for key in keys for pair in raw[key]]
        return LabelledData([t for t, _ in pairs], {AXIS: [label for _, label in pairs]})

    return rows("train", "oos_train"), rows("test", "oos_test"), rows("val", "oos_val")


def timing(predict: Callable[[list[str]], Any], texts: Sequence[str]) -> dict[str, float]:
    """Batch throughput over all texts, and single-message latency percentiles."""
    texts = list(texts)
    predict(texts[:100])  # warm caches, as a running worker would be
    started = time.perf_counter()
    predict(texts)
    batch = time.perf_counter() - started
    latencies = []
    for text in texts[:LATENCY_SAMPLES]:
        started = time.perf_counter()
        predict([text])
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {
        "batch_messages_per_s": round(len(texts) / batch),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
    }


def product(
    train_data: LabelledData,
    test_data: LabelledData,
    options: dict[str, Any] | None = None,
    val: LabelledData | None = None,
) -> dict[str, Any]:
    """Train and score through the product's code; `options` (train's keywords) set the mode."""
    started = time.perf_counter()
    classifier: Classifier = train(train_data, validation=val, **(options or {}))
    seconds = time.perf_counter() - started
    scores = evaluate(classifier, test_data)[AXIS]
    result: dict[str, Any] = {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "ece": scores["ece"],
        "train_seconds": round(seconds, 1),
        "cv_accuracy": classifier.metadata["metrics"]["cv"][AXIS]["accuracy"],
    }
    if "in_scope_accuracy" in scores:
        rule = classifier.metadata["abstain"][AXIS]
        result.update(
            in_scope_accuracy=scores["in_scope_accuracy"],
            oos_recall=scores["oos_recall"],
            abstain_threshold=scores["abstain_threshold"],
            threshold_chosen_by=rule["chosen_by"],
            cv_in_scope_accuracy_at_threshold=rule.get("in_scope_accuracy"),
            cv_oos_recall_at_threshold=rule.get("oos_recall"),
        )
    result.update(timing(classifier.predict, test_data.texts))
    return result


def baseline(train_data: LabelledData, test_data: LabelledData) -> dict[str, Any]:
    """Plain TF-IDF (word 1-2 + char_wb 2-5) + LinearSVC with default settings."""
    model = make_pipeline(
        FeatureUnion(
            [
                ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2))),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5))),
            ]
        ),
        LinearSVC(),
    )
    started = time.perf_counter()
    model.fit(train_data.texts, train_data.labels[AXIS])
    seconds = time.perf_counter() - started
    truth = test_data.labels[AXIS]
    predicted = model.predict(test_data.texts)
    result: dict[str, Any] = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "ece": None,  # LinearSVC gives no probabilities
        "train_seconds": round(seconds, 1),
    }
    if OOS in truth:
        in_scope, recall = calibration.abstain_scores(
            predicted, np.ones(len(truth)), truth, OOS, 0.0
        )
        result.update(in_scope_accuracy=in_scope, oos_recall=recall)
    result.update(timing(model.predict, test_data.texts))
    return result


def embeddings(
    train_data: LabelledData,
    test_data: LabelledData,
    model_dir: str | None,
    val: LabelledData | None = None,
) -> dict[str, Any] | None:
    """The embedding mode (weight 2, as measured in the issue), or a reason it was not run."""
    try:
        from classifiers import embeddings as mode
    except ImportError as exc:
        return {"skipped": f"embedding mode unavailable: {exc}"}
    problem = mode.unavailable(model_dir)
    if problem:
        return {"skipped": problem}
    options = {"mode": "embeddings", "embedding_model": model_dir}
    result = product(train_data, test_data, options=options, val=val)
    result["embedding_model"] = model_dir
    return result


def run(
    names: Sequence[str],
    root: Path,
    with_embeddings: bool,
    model_dir: str | None,
    threshold_from: str = "cv",
) -> dict:
    report: dict[str, Any] = {}
    for name in names:
        train_data, test_data, val = _load(name, root)
        print(f"{name}: {len(train_data)} train, {len(test_data)} test rows", file=sys.stderr)
        entry: dict[str, Any] = {"n_train": len(train_data), "n_test": len(test_data)}
        entry.update(product(train_data, test_data, val=val if threshold_from == "val" else None))
        entry["embeddings"] = (
            embeddings(train_data, test_data, model_dir, val if threshold_from == "val" else None)
            if with_embeddings
            else {"skipped": "--no-embeddings"}
        )
        if entry["embeddings"] and "skipped" in entry["embeddings"]:
            entry["embeddings"] = {"result": None, "reason": entry["embeddings"]["skipped"]}
        entry["baseline"] = baseline(train_data, test_data)
        report[name] = entry
    return report


COLUMNS = (
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro_f1", "macro-F1", "{:.4f}"),
    ("in_scope_accuracy", "in-scope", "{:.4f}"),
    ("oos_recall", "oos recall", "{:.3f}"),
    ("abstain_threshold", "threshold", "{:.2f}"),
    ("ece", "ECE", "{:.3f}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("batch_messages_per_s", "batch msg/s", "{:,}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
)


def table(report: dict[str, Any]) -> str:
    header = ["dataset", "mode", *(title for _, title, _ in COLUMNS)]
    lines = [header]
    for name, entry in report.items():
        modes = [
            ("default", entry),
            ("embeddings", entry.get("embeddings")),
            ("baseline", entry["baseline"]),
        ]
        for mode, values in modes:
            if values is None or values.get("result", 1) is None:
                reason = (values or {}).get("reason", "not run")
                lines.append([name, mode, f"(skipped: {reason})"])
                continue
            lines.append(
                [
                    name,
                    mode,
                    *(
                        "-" if values.get(key) is None else fmt.format(values[key])
                        for key, _, fmt in COLUMNS
                    ),
                ]
            )
    widths = [
        max(len(row[i]) for row in lines if len(row) > i and len(row) == len(header))
        for i in range(len(header))
    ]
    out = []
    for row in lines:
        if len(row) != len(header):
            out.append("  ".join(row))
            continue
        out.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", action="append", choices=DATASETS, help="Repeatable; default: all."
    )
    parser.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent.parent / "shared" / "datasets",
    )
    parser.add_argument("--no-embeddings", action="store_true", help="Skip the embedding mode.")
    parser.add_argument(
        "--embedding-model",
        default=os.environ.get("TRIAGE_EMBEDDING_MODEL"),
        help="Local sentence-transformers model folder (env TRIAGE_EMBEDDING_MODEL).",
    )
    parser.add_argument(
        "--threshold-from",
        choices=("cv", "val"),
        default="cv",
        help="Choose clinc150's abstain threshold on out-of-fold predictions of the training "
        "rows (cv, what `triage train` does) or on its val + oos_val split (val).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    report = run(
        args.dataset or DATASETS,
        args.datasets_dir,
        not args.no_embeddings,
        args.embedding_model,
        args.threshold_from,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))


if __name__ == "__main__":
    main()
