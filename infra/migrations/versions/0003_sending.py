"""sending: quiet hours, caps, retries, leases, delivery status, suppressions, webhooks

Revision ID: 0003_sending
Revises: 0002
Create Date: 2026-11-25 17:45:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0003_sending"
down_revision = "0002"
branch_labels = None
depends_on = None

_NUDGE_COLUMNS = (
    ("reason_code", sa.String(length=40)),
    ("not_before", infra.db.UTCDateTime(timezone=True)),
    ("sending_since", infra.db.UTCDateTime(timezone=True)),
    ("sent_at", infra.db.UTCDateTime(timezone=True)),
    ("provider", sa.String(length=20)),
    ("delivery_status", sa.String(length=20)),
    ("delivery_updated_at", infra.db.UTCDateTime(timezone=True)),
    ("opt_out_code", sa.String(length=16)),
    ("recipient", sa.String(length=80)),
)


def upgrade() -> None:
    with op.batch_alter_table("nudges") as batch:
        for name, type_ in _NUDGE_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("in_call", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_unique_constraint("uq_nudges_opt_out_code", ["opt_out_code"])
    op.create_index("ix_nudges_provider_message_id", "nudges", ["provider_message_id"])
    op.create_index("ix_nudges_sent_at", "nudges", ["sent_at"])
    op.create_index("ix_nudges_supporter_sent", "nudges", ["supporter_id", "channel", "sent_at"])
    with op.batch_alter_table("supporters") as batch:
        batch.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("contact", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("created_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lifted_at", infra.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lifted_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("channel", "contact"),
    )
    op.create_table(
        "webhook_receipts",
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("receipt_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "receipt_id"),
    )


def downgrade() -> None:
    op.drop_table("webhook_receipts")
    op.drop_table("suppressions")
    with op.batch_alter_table("supporters") as batch:
        batch.drop_column("timezone")
    op.drop_index("ix_nudges_supporter_sent", table_name="nudges")
    op.drop_index("ix_nudges_sent_at", table_name="nudges")
    op.drop_index("ix_nudges_provider_message_id", table_name="nudges")
    with op.batch_alter_table("nudges") as batch:
        batch.drop_constraint("uq_nudges_opt_out_code", type_="unique")
        batch.drop_column("in_call")
        batch.drop_column("attempts")
        for name, _ in reversed(_NUDGE_COLUMNS):
            batch.drop_column(name)
