"""organiser_sessions: signed-in organisers' server-side sessions

One row per session: the SHA-256 of the random token in the organiser's cookie (the token
itself is never stored), their CSRF token, and when it was created, expires and was last used.

Revision ID: 0007_organiser_sessions
Revises: 0006_organisers
Create Date: 2026-12-04 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0007_organiser_sessions"
down_revision = "0006_organisers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organiser_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("organiser_id", sa.String(length=40), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organiser_id"], ["organisers.organiser_id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_organiser_sessions_organiser_id", "organiser_sessions", ["organiser_id"])
    op.create_index("ix_organiser_sessions_expires_at", "organiser_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_organiser_sessions_expires_at", table_name="organiser_sessions")
    op.drop_index("ix_organiser_sessions_organiser_id", table_name="organiser_sessions")
    op.drop_table("organiser_sessions")
