"""How `engage nudges`, `outbox`, `tasks` and `scores` show the consumers' rows as text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def nudge_line(row: Row) -> str:
    """A nudge from ``repository.list_nudges``: status, channel, id, and why if known."""
    reason = f"  {row['reason_code']}: {row['reason']}" if row["reason"] else ""
    return f"{row['status']:<10} {row['channel']:<5} {row['nudge_id']}{reason}"


def outbox_entry(row: Row) -> str:
    """A message from ``repository.list_outbox``: to whom, the subject, the body."""
    return f"[{row['channel']}] to {row['to']}  {row['subject'] or ''}\n  {row['body']}\n"


def task_line(row: Row) -> str:
    """A task from ``repository.list_tasks``: due, priority, postcode district (routing),
    supporter, what and why."""
    return (
        f"due {row['due_at']}  {row['priority']:<6} {row.get('district') or '-':<5} "
        f"{row['supporter_id']}  {row['kind']}: {row['reason']}"
    )


def score_line(row: Row) -> str:
    """A score from ``repository.top_scores``: score, rung, supporter."""
    return f"{row['score']:>8.2f}  {row['rung']:<18} {row['supporter_id']}"


def render_rows(rows: Sequence[Row], line: Callable[[Row], str], noun: str) -> str:
    """One ``line`` a row, then the count (``3 nudges``)."""
    return "\n".join([*(line(row) for row in rows), f"{len(rows)} {noun}"])
