"""erasures: the audit of UK GDPR erasure requests carried out (no personal data)

Revision ID: 0005_erasures
Revises: 0004_deadletter_redrives
Create Date: 2026-11-27 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0005_erasures"
down_revision = "0004_deadletter_redrives"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("erasure_id", sa.Uuid(), nullable=False),
        sa.Column("erased_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("repeat", sa.Boolean(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("erasure_id"),
    )
    op.create_index(op.f("ix_erasures_subject"), "erasures", ["subject"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_erasures_subject"), table_name="erasures")
    op.drop_table("erasures")
