"""customers.person_id: identities of one person across channels share it

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch_op:
        batch_op.add_column(sa.Column("person_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_customers_person_id", ["person_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch_op:
        batch_op.drop_index("ix_customers_person_id")
        batch_op.drop_column("person_id")
