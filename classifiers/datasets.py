"""Labelled training data: the in-memory value and readers for CSV and JSON Lines files.

A file has one row per message, one or more text columns (subject, body) that are joined,
and one label column per axis. A row may be labelled on some axes only: an empty label means
"unlabelled for that axis", so one file can grow axis by axis.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from classifiers.base import DatasetError, quoted

log = logging.getLogger(__name__)

CSV_SUFFIXES = frozenset({".csv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass(frozen=True)
class LabelledData:
    """Texts with one label list per axis, aligned by row.

    Attributes:
        texts: One text per row (several text columns already joined with a newline).
        labels: Axis name to one label per row; None means unlabelled on that axis
            (empty or blank strings are turned into None, surrounding spaces are stripped).
        skipped: Rows dropped by the reader because all their text columns were empty.
    """

    texts: list[str]
    labels: dict[str, list[str | None]]
    skipped: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        """Copy and normalize, so the frozen value cannot change behind the fingerprint."""
        texts = list(self.texts)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise DatasetError(f"Text of row {row} is {type(text).__name__}, not a string.")
        labels: dict[str, list[str | None]] = {}
        for axis, values in self.labels.items():
            cleaned = [_clean_label(value) for value in values]
            if len(cleaned) != len(texts):
                raise DatasetError(
                    f"Axis {axis!r} has {len(cleaned)} labels for {len(texts)} texts."
                )
            labels[str(axis)] = cleaned
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names in column order."""
        return tuple(self.labels)

    def labelled(self, axis: str) -> tuple[list[int], list[str]]:
        """Return the row indices labelled on `axis` and their labels.

        Raises:
            DatasetError: If `axis` is not one of the data's axes.
        """
        if axis not in self.labels:
            raise DatasetError(
                f"Axis {axis!r} is not in the data; its axes are {quoted(self.axes)}."
            )
        pairs = [(row, label) for row, label in enumerate(self.labels[axis]) if label is not None]
        return [row for row, _ in pairs], [label for _, label in pairs]

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex of texts and labels: names the exact data a model was trained on."""
        canonical = json.dumps(
            {"texts": self.texts, "labels": self.labels},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_labelled(
    path: Path, text_columns: Sequence[str], label_columns: Sequence[str]
) -> LabelledData:
    """Read labelled rows from a CSV (.csv) or JSON Lines (.jsonl, .ndjson) file.

    Args:
        path: The file; CSV is read as UTF-8 with or without a byte-order mark.
        text_columns: Columns joined with a newline into the text (e.g. subject, body);
            empty ones are left out. Rows whose text columns are all empty are skipped.
        label_columns: One column per axis; an empty cell means unlabelled on that axis.

    Returns:
        The rows as LabelledData, with `skipped` counting the rows without text.

    Raises:
        DatasetError: If the file cannot be read or parsed, a column is missing (the message
            lists the available ones), or no row has text.
    """
    path = Path(path)
    columns = _check_columns(text_columns, label_columns)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows = _read_csv(path, columns)
    elif suffix in JSONL_SUFFIXES:
        rows = _read_jsonl(path, columns)
    else:
        raise DatasetError(
            f"{path} is neither CSV (.csv) nor JSON Lines (.jsonl, .ndjson); rename or convert it."
        )
    try:
        data = _collect(path, rows, text_columns, label_columns)
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8 "
            "(in Excel: CSV UTF-8)."
        ) from exc
    if not data.texts:
        raise DatasetError(f"{path} has no row with text in column(s) {quoted(text_columns)}.")
    if data.skipped:
        log.warning(
            "%s: skipped %d row(s) with no text in column(s) %s",
            path, data.skipped, quoted(text_columns),
        )  # fmt: skip
    log.debug("%s: read %d row(s), axes %s", path, len(data), ", ".join(data.axes))
    return data


def _check_columns(text_columns: Sequence[str], label_columns: Sequence[str]) -> list[str]:
    """Refuse a column list that cannot describe a dataset, before opening the file."""
    if isinstance(text_columns, str) or isinstance(label_columns, str):
        raise TypeError("text_columns and label_columns must be sequences of names, not a string")
    if not text_columns:
        raise DatasetError("No text column was given; name at least one (e.g. subject, body).")
    columns = [*text_columns, *label_columns]
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DatasetError(f"Column(s) {quoted(duplicates)} are named more than once.")
    return columns


def _read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, Mapping[str, object]]]:
    """Yield (line number, row) of a CSV file after checking its header has `columns`."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            try:
                header = reader.fieldnames
                if not header:
                    raise DatasetError(f"{path} is empty; expected a header row.")
                _require_columns(path, columns, header)
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as exc:
                raise DatasetError(
                    f"{path} line {reader.line_num} is not valid CSV: {exc}."
                ) from exc
    except FileNotFoundError as exc:
        raise DatasetError(f"{path} does not exist.") from exc


def _read_jsonl(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, Mapping[str, object]]]:
    """Yield (line number, object) of a JSON Lines file; blank lines are allowed.

    Keys may differ between lines, so a column is missing only if no line has it.
    """
    seen: set[str] = set()
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"{path} line {number} is not valid JSON: {exc.msg}."
                    ) from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{path} line {number} is not a JSON object.")
                seen.update(row)
                yield number, row
    except FileNotFoundError as exc:
        raise DatasetError(f"{path} does not exist.") from exc
    _require_columns(path, columns, sorted(seen))


def _require_columns(path: Path, columns: Sequence[str], available: Sequence[str]) -> None:
    """Name the missing columns and the available ones, the two facts needed to fix the call."""
    missing = [name for name in columns if name not in available]
    if missing:
        hint = (
            " It looks separated by ';': save it as comma-separated CSV."
            if len(available) == 1 and ";" in available[0]
            else ""
        )
        raise DatasetError(
            f"{path} has no column {quoted(missing)}; available columns: {quoted(available)}."
            + hint
        )


def _collect(
    path: Path,
    rows: Iterator[tuple[int, Mapping[str, object]]],
    text_columns: Sequence[str],
    label_columns: Sequence[str],
) -> LabelledData:
    """Join text columns, gather labels per axis and count the rows without text."""
    texts: list[str] = []
    labels: dict[str, list[str | None]] = {axis: [] for axis in label_columns}
    skipped = 0
    for number, row in rows:
        where = f"{path} line {number}"
        parts = [_cell(row, name, where) for name in text_columns]
        text = "\n".join(part.strip() for part in parts if part.strip())
        if not text:
            skipped += 1
            continue
        texts.append(text)
        for axis in label_columns:
            labels[axis].append(_cell(row, axis, where) or None)
    return LabelledData(texts=texts, labels=labels, skipped=skipped)


def _cell(row: Mapping[str, object], column: str, where: str) -> str:
    """Return a cell as text: missing or null is empty, numbers become their JSON spelling."""
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise DatasetError(
        f"{where} column {column!r} holds a {type(value).__name__}, not text or a number."
    )


def _clean_label(value: object) -> str | None:
    """Strip a label; blank means unlabelled."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def subset(data: LabelledData, rows: Sequence[int]) -> LabelledData:
    """The given rows of `data`, in the given order, with all its axes."""
    return LabelledData(
        texts=[data.texts[row] for row in rows],
        labels={axis: [values[row] for row in rows] for axis, values in data.labels.items()},
    )


def concat(parts: Sequence[LabelledData]) -> LabelledData:
    """Rows of all parts one after another; an axis missing from a part is unlabelled there.

    Raises:
        DatasetError: If there are no parts.
    """
    if not parts:
        raise DatasetError("There is no data to join.")
    axes = list(dict.fromkeys(axis for part in parts for axis in part.axes))
    texts: list[str] = []
    labels: dict[str, list[str | None]] = {axis: [] for axis in axes}
    for part in parts:
        texts.extend(part.texts)
        for axis in axes:
            labels[axis].extend(part.labels.get(axis, [None] * len(part)))
    return LabelledData(texts=texts, labels=labels, skipped=sum(p.skipped for p in parts))


def to_json(data: LabelledData) -> dict[str, object]:
    """A JSON-ready value of `data` (kept in a model's sidecar as its evaluation set)."""
    return {"texts": list(data.texts), "labels": {k: list(v) for k, v in data.labels.items()}}


def from_json(value: Mapping[str, object]) -> LabelledData:
    """The inverse of `to_json`.

    Raises:
        DatasetError: If the value is not shaped like `to_json`'s output.
    """
    texts, labels = value.get("texts"), value.get("labels")
    if not isinstance(texts, list) or not isinstance(labels, dict):
        raise DatasetError("A stored evaluation set needs a list 'texts' and a dict 'labels'.")
    return LabelledData(texts=texts, labels=labels)


# A row goes to the held-out split only if every label it has has this many examples, so the
# training part keeps enough of each class to train and calibrate.
MIN_EXAMPLES_TO_HOLD_OUT = 5


def holdout_split(
    data: LabelledData, fraction: float, random_state: int = 0
) -> tuple[LabelledData, LabelledData | None]:
    """Split off a held-out part, stratified on the first axis, reproducibly; the rows of one
    text stay on one side (a copy on the training side would make its twin's score a memory
    test).

    Rows with a label that has fewer than MIN_EXAMPLES_TO_HOLD_OUT examples on any axis stay
    in the training part. The same data and seed always give the same split, so retraining on
    the same file holds out the same rows as the model it may replace.

    Args:
        data: All labelled rows.
        fraction: Share of rows to hold out, in [0, 1); 0 holds out nothing.
        random_state: Seed of the draw.

    Returns:
        (training part, held-out part or None when nothing could be held out).
    """
    if not 0 <= fraction < 1:
        raise ValueError("the held-out fraction must be in [0, 1)")
    if fraction == 0 or not data.axes:
        return data, None
    counts = {axis: Counter(values) for axis, values in data.labels.items()}
    rows_of: dict[str, list[int]] = {}  # a repeated text is held out with all its rows or none
    for row, text in enumerate(data.texts):
        rows_of.setdefault(text, []).append(row)
    strata: dict[str | None, list[str]] = {}
    first = data.axes[0]
    for text, rows in rows_of.items():
        if all(
            values[row] is None or counts[axis][values[row]] >= MIN_EXAMPLES_TO_HOLD_OUT
            for row in rows
            for axis, values in data.labels.items()
        ):
            strata.setdefault(data.labels[first][rows[0]], []).append(text)
    rng = np.random.default_rng(random_state)
    held: list[int] = []
    for key in sorted(strata, key=lambda k: (k is None, k or "")):
        texts = strata[key]
        take = round(fraction * len(texts))
        for index in rng.permutation(len(texts))[:take]:
            held.extend(rows_of[texts[index]])
    if not held:
        return data, None
    held_set = set(held)
    kept = [row for row in range(len(data)) if row not in held_set]
    return subset(data, kept), subset(data, sorted(held))
