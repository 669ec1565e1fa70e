"""Bulk curation of labels: `triage export --labelled FILE` and `triage label --import FILE`.

The export has one row per classified, labelled or reviewed message: ``message_id``,
``subject``, ``text`` (what the model classified), the current label per axis (the latest human
label, else the model's guess, else empty) and ``source``: ``human`` (every label a human's),
``model`` (none), ``mixed``, or empty when there is no label yet. The import reads
``message_id`` and any of the axis columns (other columns are ignored) and records each value as
a human label, in one transaction: a bad row stops the import, naming its line, before anything
is written. A value equal to the current human label is skipped, and so is one equal to the
model's guess on a row whose ``source`` says ``model`` or ``mixed`` (an exported guess nobody
changed); set ``source`` to ``human`` to confirm a guess. ``source_name`` (the configured
source the message came from) and ``channel`` ("email", "x:dm", ...) are exported for a
reader and ignored on import. CSV or JSON Lines, by the extension.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.datasets import JSONL_SUFFIXES
from triage.errors import TriageError
from triage.lifecycle.labels import UnknownMessage, Vocabulary, add_labels
from triage.store.database import Database
from triage.store.queries import IN_REVIEW, human_labels, model_labels
from triage.store.schema import Classification, Label, Message, channel_key

log = logging.getLogger(__name__)

AXES = ("kind", "area", "urgency")
COLUMNS = ("message_id", "subject", "text", *AXES, "source", "source_name", "channel")
MAX_LABEL = 128  # labels.label is String(128)


class LabelFileError(TriageError):
    """A label file cannot be read or has a bad row; nothing was imported."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import recorded."""

    rows: int
    messages: int
    labels: int
    unchanged: int
    new_labels: dict[tuple[str, str], int]  # (axis, label) the active model lacks -> values
    similar: dict[tuple[str, str], tuple[str, ...]]  # known labels a new one may be a typo of


def file_format(path: Path) -> str:
    """``csv`` or ``jsonl`` by the file's extension.

    Raises:
        LabelFileError: Any other extension.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise LabelFileError(
        f"{path}: use a .csv or .jsonl file (not {repr(suffix) if suffix else 'a name without one'})"
    )


# --- export --------------------------------------------------------------------------------


def export_labelled(db: Database, path: Path) -> int:
    """Write every classified or labelled message with its current labels; returns the count."""
    kind = file_format(path)
    rows = list(_export_rows(db))
    tmp = path.with_name(path.name + ".tmp")
    try:
        handle = tmp.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise LabelFileError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        if kind == "csv":
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(_inert(row) for row in rows)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(path)
    log.info("exported %d labelled message(s) to %s", len(rows), path)
    return len(rows)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet run a cell as a formula (CSV injection)."""


def _inert(row: dict[str, Any]) -> dict[str, Any]:
    """The customer's subject and text, quoted so a spreadsheet shows them and runs nothing."""
    for column in ("subject", "text"):
        value = row[column]
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            row[column] = "'" + value
    return row


def _export_rows(db: Database) -> Iterator[dict[str, Any]]:
    with db.session() as session:
        ids = _labelled_ids(session)
        guesses = model_labels(session, ids)
        humans = human_labels(session, ids)
        for message in session.scalars(
            select(Message).where(Message.id.in_(ids)).order_by(Message.id)
        ):
            row: dict[str, Any] = {
                "message_id": message.id,
                "subject": message.subject,
                "text": message.text,
            }
            human, model = humans.get(message.id, {}), guesses.get(message.id, {})
            for axis in AXES:
                row[axis] = (
                    human[axis] if axis in human else (model[axis].label if axis in model else "")
                )
            given = [axis for axis in AXES if row[axis]]
            mine = [axis for axis in given if axis in human]
            row["source"] = (
                "" if not given else "human" if mine == given else "model" if not mine else "mixed"
            )
            row["source_name"] = message.source
            row["channel"] = channel_key(message.channel, message.post_kind)
            yield row


def _labelled_ids(session: Session) -> list[int]:
    """Messages with a model guess or a human label, or sent to review (with no model to
    guess, they are what most needs labels), still holding their text."""
    labelled = select(Classification.message_id).union(select(Label.message_id)).subquery()
    return list(
        session.scalars(
            select(Message.id)
            .where(
                Message.id.in_(select(labelled)) | IN_REVIEW,
                Message.purged_at.is_(None),
            )
            .where(Message.status != "quarantined")
            .order_by(Message.id)
        )
    )


# --- import --------------------------------------------------------------------------------


def import_labels(db: Database, path: Path, by: str) -> ImportResult:
    """Record the labels of a curated file as human labels by ``by``, all or nothing; each
    label in its known spelling (see `Vocabulary`).

    Raises:
        LabelFileError: The file cannot be read, or a row is bad (its line is named), or two
            rows give one message different labels.
    """
    rows = list(_read_rows(path))
    recorded = unchanged = 0
    messages: set[int] = set()
    new_labels: Counter[tuple[str, str]] = Counter()
    similar: dict[tuple[str, str], tuple[str, ...]] = {}
    with db.transaction() as session:
        vocabulary = Vocabulary(session)
        parsed = _consistent(path, rows, vocabulary)
        for line, row, message_id, wanted in parsed:
            changes, skipped = _changes(session, message_id, wanted, str(row.get("source") or ""))
            unchanged += skipped
            if not changes:
                continue
            try:
                added = add_labels(session, message_id, changes, by, vocabulary)
            except UnknownMessage as exc:
                raise LabelFileError(f"{path} line {line}: {exc}") from None
            for item in added:
                if item.new:
                    new_labels[item.axis, item.label] += 1
                    similar[item.axis, item.label] = item.similar
            recorded += len(changes)
            messages.add(message_id)
    log.info(
        "imported %d label(s) on %d message(s) from %s, by %s", recorded, len(messages), path, by
    )
    return ImportResult(
        len(rows), len(messages), recorded, unchanged, dict(new_labels.most_common()), similar
    )


def _consistent(
    path: Path, rows: list[tuple[int, Mapping[str, Any]]], vocabulary: Vocabulary
) -> list[tuple[int, Mapping[str, Any], int, dict[str, str]]]:
    """Every row parsed, its labels in their known spelling; refuses a file whose rows give
    one message two different labels on an axis (which one is right cannot be guessed)."""
    parsed = []
    first: dict[tuple[int, str], tuple[int, str]] = {}
    for line, row in rows:
        message_id, typed = _parse_row(path, line, row)
        wanted = {axis: vocabulary.spelling(axis, value) for axis, value in typed.items()}
        for axis, value in wanted.items():
            earlier_line, earlier = first.setdefault((message_id, axis), (line, value))
            if earlier != value:
                raise LabelFileError(
                    f"{path} lines {earlier_line} and {line} give message {message_id} two "
                    f"{axis} labels ({earlier!r}, {value!r}); keep one row"
                )
        parsed.append((line, row, message_id, wanted))
    return parsed


def _read_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, row) of every data row."""
    kind = file_format(path)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise LabelFileError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        try:
            if kind == "csv":
                yield from _csv_rows(path, handle)
            else:
                yield from _jsonl_rows(path, handle)
        except UnicodeDecodeError:
            raise LabelFileError(
                f"{path}: not UTF-8 text; save it as UTF-8 (in Excel: CSV UTF-8)"
            ) from None


def _csv_rows(path: Path, handle: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(handle)
    # "Message_ID " or "Message ID" from a spreadsheet is message_id: case and spaces differ.
    reader.fieldnames = ["_".join(name.lower().split()) for name in reader.fieldnames or []]
    header = reader.fieldnames
    if not header:
        raise LabelFileError(f"{path} is empty")
    if "message_id" not in header or not any(axis in header for axis in AXES):
        hint = (
            "; it looks separated by ';': save it as comma-separated CSV"
            if len(header) == 1 and ";" in header[0]
            else ""
        )
        raise LabelFileError(
            f"{path} line 1: the header needs message_id and at least one of "
            f"{', '.join(AXES)}{hint}"
        )
    start = reader.line_num + 1
    for row in reader:
        if None in row:
            raise LabelFileError(f"{path} line {start}: more fields than the header has")
        yield start, row
        start = reader.line_num + 1


def _jsonl_rows(path: Path, handle: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelFileError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LabelFileError(f"{path} line {number}: not a JSON object")
        yield number, row


def _parse_row(path: Path, line: int, row: Mapping[str, Any]) -> tuple[int, dict[str, str]]:
    """The message id and the non-empty axis values of one row."""
    raw_id = row.get("message_id")
    try:
        message_id = int(str(raw_id).strip()) if not isinstance(raw_id, bool) else None
    except ValueError:
        message_id = None
    if message_id is None or message_id < 1:
        raise LabelFileError(f"{path} line {line}: message_id {raw_id!r} is not a message id")
    wanted = {}
    for axis in AXES:
        value = row.get(axis)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise LabelFileError(f"{path} line {line}: {axis} {value!r} is not a label")
        if len(value.strip()) > MAX_LABEL:
            raise LabelFileError(f"{path} line {line}: {axis} is over {MAX_LABEL} characters")
        wanted[axis] = value.strip()
    return message_id, wanted


def _changes(
    session: Session, message_id: int, wanted: Mapping[str, str], source: str
) -> tuple[dict[str, str], int]:
    """The labels worth recording, and how many values were left as they are."""
    human = human_labels(session, [message_id]).get(message_id, {})
    model = model_labels(session, [message_id]).get(message_id, {})
    carried_over = source.strip().lower() in ("model", "mixed")
    changes = {}
    for axis, value in wanted.items():
        guess = model[axis].label if axis in model else None
        if human.get(axis) == value or (carried_over and axis not in human and guess == value):
            continue
        changes[axis] = value
    return changes, len(wanted) - len(changes)
