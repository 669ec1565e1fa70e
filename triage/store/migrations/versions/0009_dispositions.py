"""the routing decision as data: messages.disposition, reasons, urgent reasons; forwards too

Earlier builds stored the router's decision as an English sentence (``messages.routing``,
``forwards.reason``) that the views parsed back. This revision parses every wording any earlier
build wrote, once, into columns: the disposition (forwarded, review, recorded, machine, capped,
correction, ignored, duplicate), the department, the reasons (a code and its details each), the
urgent flag and the urgent reasons. A sentence no rule understands becomes disposition
``unknown`` with the sentence kept as its one reason, so nothing is lost. The sentence columns
are dropped: the views render it from the data.

Self-contained on purpose: it must read what earlier builds wrote, whatever the code becomes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import json
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHUNK = 500
URGENT_SUFFIX = ", escalated as urgent"
URGENT_BECAUSE = ". Urgent because: "
CORRECTED = "; corrected by "
NO_REVIEW = "; no review department configured"

_WHY: list[tuple[str, str]] = [  # (code, pattern over the text in brackets)
    ("owns_area", r"owns (?P<area>.+)"),
    ("rule", r"rule (?P<kind>[^/]+)/(?P<area>.+)"),
    ("no_model", r"no active model"),
    ("no_kind_axis", r"the model has no 'kind' axis"),
    ("out_of_scope", r"out of scope: best guess (?P<label>.+) (?P<confidence>[0-9.]+)"),
    # "low confidence: kind complaint 0.31" was written before the axis name was dropped
    ("low_confidence", r"low confidence: (?:(?:kind|area) )?(?P<label>.+) (?P<confidence>[0-9.]+)"),
    ("unowned_area", r"no department owns area (?P<area>.+)"),
    ("oversized", r"message of (?P<size>\d+) bytes is over the size limit; headers kept"),
    ("unreadable", r"the body could not be read: (?P<detail>.+)"),
    ("said", r"(?P<by>\S+) says: (?P<said>.+)"),
]  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("messages", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("disposition", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("department", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reasons", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("urgent_reasons", sa.JSON(), nullable=False, server_default="[]")
        )
    with op.batch_alter_table("forwards", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("disposition", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("reasons", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column("urgent_reasons", sa.JSON(), nullable=False, server_default="[]")
        )
    _convert("messages", "routing", messages=True)
    _convert("forwards", "reason", messages=False)
    with op.batch_alter_table("messages", recreate="never") as batch_op:
        batch_op.drop_column("routing")
        batch_op.create_index("ix_messages_disposition", ["disposition"], unique=False)
    with op.batch_alter_table("forwards", recreate="never") as batch_op:
        batch_op.drop_column("reason")


def downgrade() -> None:
    """Back to sentences, rendered roughly (the data stays readable, not byte-identical)."""
    with op.batch_alter_table("messages", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("routing", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("forwards", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
    bind = op.get_bind()
    for table, column in (("messages", "routing"), ("forwards", "reason")):
        rows = bind.execute(sa.text(f"SELECT id, disposition, reasons FROM {table}")).all()
        for id_, disposition, reasons in rows:
            texts = [str(r.get("text") or r.get("code")) for r in _loads(reasons)]
            bind.execute(
                sa.text(f"UPDATE {table} SET {column} = :text WHERE id = :id"),
                {"id": id_, "text": f"{disposition or ''}: {'; '.join(texts)}".strip(": ")},
            )
    with op.batch_alter_table("messages", recreate="never") as batch_op:
        batch_op.drop_index("ix_messages_disposition")
        for name in ("urgent_reasons", "urgent", "reasons", "department", "disposition"):
            batch_op.drop_column(name)
    with op.batch_alter_table("forwards", recreate="never") as batch_op:
        for name in ("urgent_reasons", "reasons", "disposition"):
            batch_op.drop_column(name)


def _convert(table: str, column: str, *, messages: bool) -> None:
    bind = op.get_bind()
    extra = ", status" if messages else ", department"
    last = 0
    while True:
        rows = bind.execute(
            sa.text(
                f"SELECT id, {column}{extra} FROM {table} WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": CHUNK},
        ).all()
        if not rows:
            return
        for id_, text, other in rows:
            parsed = parse(text or "", other if messages else None)
            values: dict[str, Any] = {
                "id": id_,
                "disposition": parsed["disposition"],
                "reasons": json.dumps(parsed["reasons"]),
                "urgent_reasons": json.dumps(parsed["urgent_reasons"]),
            }
            sets = (
                "disposition = :disposition, reasons = :reasons, urgent_reasons = :urgent_reasons"
            )
            if messages:
                values |= {"department": parsed["department"], "urgent": parsed["urgent"]}
                sets += ", department = :department, urgent = :urgent"
            bind.execute(sa.text(f"UPDATE {table} SET {sets} WHERE id = :id"), values)
        last = rows[-1][0]


def parse(text: str, status: str | None = None) -> dict[str, Any]:
    """One routing sentence of an earlier build, as data."""
    result: dict[str, Any] = {
        "disposition": None, "department": None, "reasons": [], "urgent": False,
        "urgent_reasons": [],
    }  # fmt: skip
    if status == "quarantined" and not text:
        return result  # never routed
    reasons: list[dict[str, Any]] = []
    rest, corrected, by = text.rpartition(CORRECTED) if CORRECTED in text else (text, "", "")
    rest, because_sep, because = rest.partition(URGENT_BECAUSE)
    if because_sep:
        result["urgent_reasons"] = [{"kind": "text", "text": p} for p in because.split("; ")]
    if rest.endswith(URGENT_SUFFIX):
        rest, result["urgent"] = rest.removesuffix(URGENT_SUFFIX), True
    if match := re.fullmatch(
        r"(forwarded to (?P<department>\S+)|sent to review) \((?P<why>.*)\)", rest, re.S
    ):
        result["disposition"] = "forwarded" if match["department"] else "review"
        result["department"] = match["department"] or "review"
        reasons.append(_why(match["why"]))
    elif rest.startswith("not forwarded: "):
        reasons.extend(_not_forwarded(rest.removeprefix("not forwarded: "), result))
    elif status == "reply" and rest.startswith("ignored: "):
        result["disposition"] = "ignored"
        reasons.append({"code": "ignored", "why": rest.removeprefix("ignored: ")})
    elif status == "reply" and (
        match := re.fullmatch(r"correction of message (\d+): (.*)", rest, re.S)
    ):
        result["disposition"] = "correction"
        reasons.append({"code": "correction", "message": int(match[1]), "notes": match[2]})
    elif match := re.fullmatch(r"a copy of message (\d+), stored twice by an earlier build", rest):
        result["disposition"] = "duplicate"
        reasons.append({"code": "copy_of", "message": int(match[1])})
    if result["disposition"] is None or any(r["code"] == "text" for r in reasons):
        result |= {"disposition": "unknown", "department": None, "urgent": False,
                   "urgent_reasons": []}  # fmt: skip
        reasons = [{"code": "text", "text": text}] if text else []
    elif corrected:
        reasons.append({"code": "corrected", "by": by})
    if result["disposition"] == "review" and result["department"] == "review":
        result["department"] = None  # the review department's name is not in the sentence
    result["reasons"] = reasons
    return result


def _why(text: str) -> dict[str, Any]:
    for code, pattern in _WHY:
        if match := re.fullmatch(pattern, text, re.S):
            detail: dict[str, Any] = dict(match.groupdict())
            if "confidence" in detail:
                detail["confidence"] = float(detail["confidence"])
            if "size" in detail:
                detail["size"] = int(detail["size"])
            if code == "unowned_area":
                detail["area"] = detail["area"].strip("'\"")
            return {"code": code, **detail}
    return {"code": "text", "text": text}


def _not_forwarded(text: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    if match := re.fullmatch(r"machine-sent \((?P<why>.*)\)", text, re.S):
        result["disposition"] = "machine"
        return [{"code": "machine_sent", "why": match["why"]}]
    if match := re.fullmatch(r"over (\d+) forwards from this sender in an hour", text):
        result["disposition"] = "capped"
        return [{"code": "sender_cap", "cap": int(match[1])}]
    if match := re.fullmatch(r"(.+) is not a forwarded kind", text):
        result["disposition"] = "recorded"
        return [{"code": "kind_not_forwarded", "kind": match[1]}]
    if text.endswith(NO_REVIEW):
        result["disposition"] = "recorded"
        return [_why(text.removesuffix(NO_REVIEW)), {"code": "no_review_department"}]
    return [{"code": "text", "text": text}]


def _loads(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value or "[]")
    return list(value or [])
