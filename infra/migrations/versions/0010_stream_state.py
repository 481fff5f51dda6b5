"""stream state snapshots: the stream's per-supporter state and the input offsets it reflects

Revision ID: 0010_stream_state
Revises: 0009_mart
Create Date: 2026-12-03 16:40:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0010_stream_state"
down_revision = "0009_mart"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_state",
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("supporter_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("partition", "supporter_id"),
    )
    op.create_table(
        "stream_state_offsets",
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("check", sa.String(length=40), nullable=True),
        sa.Column("saved_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition"),
    )


def downgrade() -> None:
    op.drop_table("stream_state_offsets")
    op.drop_table("stream_state")
