"""messages.content_key indexed alone: one mail delivered to several sources is stored once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_content_key", "messages", ["content_key"])


def downgrade() -> None:
    op.drop_index("ix_messages_content_key", table_name="messages")
