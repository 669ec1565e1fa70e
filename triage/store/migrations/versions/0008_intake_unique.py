"""one stored request per content key across sources; messages.post_kind; alerts

A customer's request (status stored or classified) becomes unique per content key across sources
(a partial unique index), so two pollers storing one mail sent to two support addresses at the
same instant cannot both keep it. Copies that earlier builds stored in such a race are kept, with
status ``duplicate``: the first copy stays the request. A post's kind (mention, dm, ...) becomes
a column, read once from the stored JSON; quarantined posts get their channel from it too. The
``alerts`` table records each alert and whether it could be mailed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INTAKE = sa.text("status IN ('stored', 'classified')")
SOCIAL = ("x", "telegram", "mastodon", "social")
CHUNK = 500


def upgrade() -> None:
    _mark_copies()
    op.drop_index("ix_messages_content_key", table_name="messages")
    op.create_index(
        "ux_messages_intake_content_key",
        "messages",
        ["content_key"],
        unique=True,
        sqlite_where=INTAKE,
        postgresql_where=INTAKE,
    )
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("post_kind", sa.String(length=16), nullable=True))
    _fill_post_kinds()
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alerts_created_at", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ux_messages_intake_content_key", table_name="messages")
    op.create_index("ix_messages_content_key", "messages", ["content_key"])
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("post_kind")


def _mark_copies() -> None:
    """Requests stored twice by an earlier build: the later copies become ``duplicate``."""
    bind = op.get_bind()
    copies = bind.execute(
        sa.text(
            "SELECT m.id, first.id FROM messages m JOIN ("
            "  SELECT content_key, MIN(id) AS id FROM messages"
            "  WHERE status IN ('stored', 'classified')"
            "  GROUP BY content_key HAVING COUNT(*) > 1"
            ") first ON m.content_key = first.content_key "
            "WHERE m.status IN ('stored', 'classified') AND m.id <> first.id"
        )
    ).all()
    for copy, first in copies:
        bind.execute(
            sa.text("UPDATE messages SET status = 'duplicate', routing = :why WHERE id = :id"),
            {"id": copy, "why": f"a copy of message {first}, stored twice by an earlier build"},
        )


def _fill_post_kinds() -> None:
    """Each post's kind (and the channel of a quarantined one) from its stored JSON."""
    bind = op.get_bind()
    last = 0
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT id, channel, raw FROM messages WHERE id > :last AND channel IN "
                "('x', 'telegram', 'mastodon', 'social') ORDER BY id LIMIT :chunk"
            ),
            {"last": last, "chunk": CHUNK},
        ).all()
        if not rows:
            return
        for id_, channel, raw in rows:
            post = _post(raw)
            kind = str(post.get("kind") or "")[:16] or None
            if channel == "social" and post.get("channel"):
                channel = str(post["channel"])[:32]
            bind.execute(
                sa.text("UPDATE messages SET post_kind = :kind, channel = :channel WHERE id = :id"),
                {"id": id_, "kind": kind, "channel": channel},
            )
        last = rows[-1][0]


def _post(raw: bytes | None) -> dict[str, object]:
    try:
        post = json.loads(bytes(raw or b""))
    except (UnicodeDecodeError, ValueError):
        return {}  # purged, or not JSON (a quarantined post)
    return post if isinstance(post, dict) else {}
