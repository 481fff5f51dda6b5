"""organisers: groups and their postcode districts, organisers, the task life and its history

Tasks get their routing district, a claim (who, until when), the attempts and newest outcome,
when they closed and why they were cancelled; at most one open task per supporter and kind.
Existing tasks get the district of their supporter's postcode, and where a supporter had two
open tasks of one kind, the one due first stays and the others are cancelled as superseded.

Revision ID: 0006_organisers
Revises: 0005_erasures
Create Date: 2026-12-03 13:00:00
"""

import sqlalchemy as sa
from alembic import op

import infra.db

revision = "0006_organisers"
down_revision = "0005_erasures"
branch_labels = None
depends_on = None

_OPEN = sa.text("status IN ('open', 'claimed')")
_TASK_COLUMNS = (
    ("district", sa.String(length=4)),
    ("claimed_by", sa.String(length=40)),
    ("claimed_until", infra.db.UTCDateTime(timezone=True)),
    ("outcome", sa.String(length=30)),
    ("closed_at", infra.db.UTCDateTime(timezone=True)),
    ("status_reason", sa.String(length=300)),
)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for name, type_ in _TASK_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_tasks_district", "tasks", ["district"])
    op.create_index("ix_tasks_status_district", "tasks", ["status", "district"])
    _route_existing_tasks()
    _supersede_duplicate_open_tasks()
    op.create_index(
        "ux_tasks_one_open",
        "tasks",
        ["supporter_id", "kind"],
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )
    op.create_table(
        "groups",
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_id"),
    )
    op.create_table(
        "group_areas",
        sa.Column("district", sa.String(length=4), nullable=False),
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("assigned_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.group_id"]),
        sa.PrimaryKeyConstraint("district"),
    )
    op.create_index("ix_group_areas_group_id", "group_areas", ["group_id"])
    op.create_table(
        "organisers",
        sa.Column("organiser_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", infra.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("organiser_id"),
    )
    op.create_table(
        "organiser_groups",
        sa.Column("organiser_id", sa.String(length=40), nullable=False),
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("lead", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.ForeignKeyConstraint(["group_id"], ["groups.group_id"]),
        sa.ForeignKeyConstraint(["organiser_id"], ["organisers.organiser_id"]),
        sa.PrimaryKeyConstraint("organiser_id", "group_id"),
    )
    op.create_index("ix_organiser_groups_group_id", "organiser_groups", ["group_id"])
    op.create_table(
        "task_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("at", infra.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(length=280), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])


def _route_existing_tasks() -> None:
    """Each task's district: the outward code of its supporter's (normalised) postcode."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT t.task_id, s.postcode FROM tasks t"
            " JOIN supporters s ON s.supporter_id = t.supporter_id"
            " WHERE s.postcode IS NOT NULL"
        )
    ).all()
    for task_id, postcode in rows:
        district = str(postcode).split(" ", 1)[0][:4]
        bind.execute(
            sa.text("UPDATE tasks SET district = :district WHERE task_id = :task_id"),
            {"district": district, "task_id": task_id},
        )


def _supersede_duplicate_open_tasks() -> None:
    """Keep one open task per supporter and kind (the one due first); cancel the others."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT task_id, supporter_id, kind FROM tasks WHERE status = 'open'"
            " ORDER BY supporter_id, kind, due_at, task_id"
        )
    ).all()
    kept: dict[tuple[str, str], str] = {}
    for task_id, supporter_id, kind in rows:
        first = kept.setdefault((supporter_id, kind), task_id)
        if first != task_id:
            bind.execute(
                sa.text(
                    "UPDATE tasks SET status = 'cancelled', status_reason = :reason"
                    " WHERE task_id = :task_id"
                ),
                {"reason": f"superseded: one open task per kind ({first})", "task_id": task_id},
            )


def downgrade() -> None:
    op.drop_index("ix_task_events_task_id", table_name="task_events")
    op.drop_table("task_events")
    op.drop_index("ix_organiser_groups_group_id", table_name="organiser_groups")
    op.drop_table("organiser_groups")
    op.drop_table("organisers")
    op.drop_index("ix_group_areas_group_id", table_name="group_areas")
    op.drop_table("group_areas")
    op.drop_table("groups")
    op.drop_index("ux_tasks_one_open", table_name="tasks")
    op.drop_index("ix_tasks_status_district", table_name="tasks")
    op.drop_index("ix_tasks_district", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("attempts")
        for name, _ in reversed(_TASK_COLUMNS):
            batch.drop_column(name)
