"""secure aggregation: the attempts of a secure round and its members (keys, masked updates)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secagg_rounds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("fixed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("excluded", sa.JSON(), nullable=False),
    )
    op.create_index("ix_secagg_rounds_job_id", "secagg_rounds", ["job_id"])
    op.create_table(
        "secagg_members",
        sa.Column("session_id", sa.String(48), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("layout", sa.JSON(), nullable=False),
        sa.Column("adapter_config", sa.JSON(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("masked", sa.LargeBinary(), nullable=True),
        sa.Column("masked_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_secagg_members_job_id", "secagg_members", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_secagg_members_job_id", table_name="secagg_members")
    op.drop_table("secagg_members")
    op.drop_index("ix_secagg_rounds_job_id", table_name="secagg_rounds")
    op.drop_table("secagg_rounds")
