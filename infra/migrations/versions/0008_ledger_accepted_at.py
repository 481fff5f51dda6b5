"""ledger accepted_at index: retention finds what is past its period without a full scan

Revision ID: 0008_ledger_accepted_at
Revises: 0007_organiser_sessions
Create Date: 2026-12-03 14:00:00
"""

from alembic import op

revision = "0008_ledger_accepted_at"
down_revision = "0007_organiser_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ledger_accepted_at", "ledger", ["accepted_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_accepted_at", table_name="ledger")
