"""device plans: a device's class, the plans operators register per model, a session's plan point

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_class", sa.JSON(), nullable=True))
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_point", sa.JSON(), nullable=True))
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_plans_model", "plans", ["model"])


def downgrade() -> None:
    op.drop_index("ix_plans_model", table_name="plans")
    op.drop_table("plans")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("plan_point")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("device_class")
