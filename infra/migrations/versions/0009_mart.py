"""the analysts' mart: the event fact table, supporter days, message and task outcomes, erasures

Written by consumers/mart/ alone, from the pseudonymised analytics.* topics (docs/analysts.md).

Revision ID: 0009_mart
Revises: 0008_ledger_accepted_at
Create Date: 2026-12-03 16:20:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0009_mart"
down_revision = "0008_ledger_accepted_at"
branch_labels = None
depends_on = None

_UTC = infra.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mart_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("person", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("event_time", _UTC, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("district", sa.String(length=8), nullable=True),
        sa.Column("area", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("petition_id", sa.String(length=200), nullable=True),
        sa.Column("meeting_id", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("training", sa.String(length=200), nullable=True),
        sa.Column("task_id", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=30), nullable=True),
        sa.Column("commitment", sa.String(length=30), nullable=True),
        sa.Column("channel", sa.String(length=10), nullable=True),
        sa.Column("granted", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_mart_events_person", "mart_events", ["person"])
    op.create_index("ix_mart_events_week", "mart_events", ["week"])
    op.create_index("ix_mart_events_person_time", "mart_events", ["person", "event_time"])
    op.create_table(
        "mart_supporter_days",
        sa.Column("person", sa.String(length=40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("rung", sa.String(length=100), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("as_of", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("person", "day"),
    )
    op.create_table(
        "mart_messages",
        sa.Column("nudge_id", sa.String(length=200), nullable=False),
        sa.Column("person", sa.String(length=40), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=True),
        sa.Column("channel", sa.String(length=10), nullable=True),
        sa.Column("template", sa.String(length=200), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=True),
        sa.Column("requested_at", _UTC, nullable=True),
        sa.Column("requested_week", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("reason_code", sa.String(length=40), nullable=True),
        sa.Column("status_at", _UTC, nullable=True),
        sa.PrimaryKeyConstraint("nudge_id"),
    )
    op.create_index("ix_mart_messages_person", "mart_messages", ["person"])
    op.create_table(
        "mart_tasks",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("person", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=True),
        sa.Column("rule", sa.String(length=200), nullable=True),
        sa.Column("priority", sa.String(length=10), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=True),
        sa.Column("area", sa.String(length=100), nullable=True),
        sa.Column("created_at", _UTC, nullable=True),
        sa.Column("created_week", sa.Date(), nullable=True),
        sa.Column("due_at", _UTC, nullable=True),
        sa.Column("outcome", sa.String(length=30), nullable=True),
        sa.Column("commitment", sa.String(length=30), nullable=True),
        sa.Column("outcome_at", _UTC, nullable=True),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_mart_tasks_person", "mart_tasks", ["person"])
    op.create_table(
        "mart_erasures",
        sa.Column("person", sa.String(length=40), nullable=False),
        sa.Column("erased_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("person"),
    )


def downgrade() -> None:
    for table in ("mart_erasures", "mart_tasks", "mart_messages", "mart_supporter_days"):
        op.drop_table(table)
    op.drop_table("mart_events")
