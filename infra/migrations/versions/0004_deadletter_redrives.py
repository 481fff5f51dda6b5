"""deadletter redrives: the dead letters `engage deadletters redrive` has republished

Revision ID: 0004_deadletter_redrives
Revises: 0003_sending
Create Date: 2026-11-25 18:30:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0004_deadletter_redrives"
down_revision = "0003_sending"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deadletter_redrives",
        sa.Column("letter_id", sa.String(length=300), nullable=False),
        sa.Column("redriven_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("target_topic", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("letter_id"),
    )


def downgrade() -> None:
    op.drop_table("deadletter_redrives")
