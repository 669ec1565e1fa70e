"""Bulk curation of labels: `triage export --labelled FILE` and `triage label --import FILE`.

The export has one row per classified message: ``message_id``, ``subject``, ``text`` (what the
model classified), the current label per axis (the latest human label, else the model's guess)
and ``source``: ``human`` (every label a human's), ``model`` (none) or ``mixed``. The import reads
``message_id`` and any of the axis columns (other columns are ignored) and records each value as
a human label, in one transaction: a bad row stops the import, naming its line, before anything
is written. A value equal to the current human label is skipped, and so is one equal to the
model's guess on a row whose ``source`` says ``model`` or ``mixed`` (an exported guess nobody
changed); set ``source`` to ``human`` to confirm a guess. CSV or JSON Lines, by the extension.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.datasets import JSONL_SUFFIXES
from triage.errors import TriageError
from triage.lifecycle import UnknownMessage, add_labels, latest_guesses
from triage.store.database import Database
from triage.store.schema import Classification, Label, Message

log = logging.getLogger(__name__)

AXES = ("kind", "area", "urgency")
COLUMNS = ("message_id", "subject", "text", *AXES, "source")
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
    raise LabelFileError(f"{path}: use a .csv or .jsonl file (not {suffix or 'no extension'})")


# --- export --------------------------------------------------------------------------------


def export_labelled(db: Database, path: Path) -> int:
    """Write every classified or labelled message with its current labels; returns the count."""
    kind = file_format(path)
    rows = list(_export_rows(db))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        if kind == "csv":
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(path)
    log.info("exported %d labelled message(s) to %s", len(rows), path)
    return len(rows)


def _export_rows(db: Database) -> Iterator[dict[str, Any]]:
    with db.session() as session:
        ids = _labelled_ids(session)
        guesses = latest_guesses(session, ids)
        humans = _human_labels(session, ids)
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
            row["source"] = "human" if mine == given else "model" if not mine else "mixed"
            yield row


def _labelled_ids(session: Session) -> list[int]:
    """Messages with a model guess or a human label, still holding their text."""
    labelled = select(Classification.message_id).union(select(Label.message_id)).subquery()
    return list(
        session.scalars(
            select(Message.id)
            .where(Message.id.in_(select(labelled)), Message.purged_at.is_(None))
            .where(Message.status != "quarantined")
            .order_by(Message.id)
        )
    )


def _human_labels(session: Session, ids: list[int]) -> dict[int, dict[str, str]]:
    latest: dict[int, dict[str, str]] = {}
    if ids:
        for label in session.scalars(
            select(Label).where(Label.message_id.in_(ids)).order_by(Label.id)
        ):
            latest.setdefault(label.message_id, {})[label.axis] = label.label
    return latest


# --- import --------------------------------------------------------------------------------


def import_labels(db: Database, path: Path, by: str) -> ImportResult:
    """Record the labels of a curated file as human labels by ``by``, all or nothing.

    Raises:
        LabelFileError: The file cannot be read, or a row is bad (its line is named).
    """
    rows = list(_read_rows(path))
    recorded = unchanged = 0
    messages: set[int] = set()
    with db.transaction() as session:
        for line, row in rows:
            message_id, wanted = _parse_row(path, line, row)
            changes, skipped = _changes(session, message_id, wanted, str(row.get("source") or ""))
            unchanged += skipped
            if not changes:
                continue
            try:
                add_labels(session, message_id, changes, by)
            except UnknownMessage as exc:
                raise LabelFileError(f"{path} line {line}: {exc}") from None
            recorded += len(changes)
            messages.add(message_id)
    log.info(
        "imported %d label(s) on %d message(s) from %s, by %s", recorded, len(messages), path, by
    )
    return ImportResult(len(rows), len(messages), recorded, unchanged)


def _read_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, row) of every data row."""
    kind = file_format(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise LabelFileError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        try:
            if kind == "csv":
                yield from _csv_rows(path, handle)
            else:
                yield from _jsonl_rows(path, handle)
        except UnicodeDecodeError:
            raise LabelFileError(f"{path}: not UTF-8 text") from None


def _csv_rows(path: Path, handle: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    if "message_id" not in header or not any(axis in header for axis in AXES):
        raise LabelFileError(
            f"{path} line 1: the header needs message_id and at least one of {', '.join(AXES)}"
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
    human = _human_labels(session, [message_id]).get(message_id, {})
    model = latest_guesses(session, [message_id]).get(message_id, {})
    carried_over = source.strip().lower() in ("model", "mixed")
    changes = {}
    for axis, value in wanted.items():
        guess = model[axis].label if axis in model else None
        if human.get(axis) == value or (carried_over and axis not in human and guess == value):
            continue
        changes[axis] = value
    return changes, len(wanted) - len(changes)
