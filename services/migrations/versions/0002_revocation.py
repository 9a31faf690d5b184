"""revocation: disabled edges and devices, sessions edges must close

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("edges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "session_closures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("edge_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=48), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["edge_id"], ["edges.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("session_closures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_closures_edge_id"), ["edge_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_session_closures_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("session_closures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_closures_created_at"))
        batch_op.drop_index(batch_op.f("ix_session_closures_edge_id"))
    op.drop_table("session_closures")
    with op.batch_alter_table("edges", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
