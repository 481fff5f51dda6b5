"""What the pipeline is doing: topic message counts, consumer-group lag, ledger and nudges."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from consumers import runner as sinks
from infra.db import FollowUpTask, LedgerEvent, Nudge
from infra.topic_reader import end_offsets
from infra.topics import admin_client
from schemas.catalogue import TOPICS
from streams import worker as stream

GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {stream.GROUP: tuple(stream.SUBSCRIBED), sinks.GROUP: tuple(sinks.TOPICS)}
)
"""Each worker's consumer group and the topics it reads, as the workers declare them."""


def topic_counts(bootstrap: str) -> dict[str, dict[TopicPartition, int]]:
    """End offset (the fetch high watermark) of every partition of every catalogue topic."""
    return end_offsets(bootstrap, (spec.name for spec in TOPICS))


def pipeline_status(bootstrap: str, sessions: sessionmaker[Session]) -> dict[str, Any]:
    ends = topic_counts(bootstrap)
    admin = admin_client(bootstrap)
    lag: dict[str, int] = {}
    try:
        for group, topics in GROUPS.items():
            committed = admin.list_group_offsets(group).get(group, {})
            lag[group] = sum(
                max(end - (committed[tp].offset if tp in committed else 0), 0)
                for topic in topics
                for tp, end in ends.get(topic, {}).items()
            )
    finally:
        admin.close()
    with sessions() as session:
        nudges = dict(
            session.execute(select(Nudge.status, func.count()).group_by(Nudge.status)).all()
        )
        tasks = session.scalar(select(func.count()).select_from(FollowUpTask)) or 0
        ledger = session.scalar(select(func.count()).select_from(LedgerEvent)) or 0
        unpublished = (
            session.scalar(
                select(func.count()).select_from(LedgerEvent).where(~LedgerEvent.published)
            )
            or 0
        )
    return {
        "topics": {name: sum(e.values()) for name, e in ends.items()},
        "consumer_lag": lag,
        "ledger": {"events": ledger, "unpublished": unpublished},
        "nudges": nudges,
        "tasks": tasks,
    }


def render_status(status: dict[str, Any]) -> str:
    lines = ["topic                 messages"]
    lines += [f"{name:<20} {count:>9}" for name, count in status["topics"].items()]
    lines.append("")
    lines += [f"lag {group:<17} {lag:>9}" for group, lag in status["consumer_lag"].items()]
    ledger = status["ledger"]
    lines.append(f"\nledger: {ledger['events']} events, {ledger['unpublished']} not yet published")
    nudges = ", ".join(f"{k} {v}" for k, v in sorted(status["nudges"].items())) or "none"
    lines.append(f"nudges: {nudges}")
    lines.append(f"tasks: {status['tasks']}")
    return "\n".join(lines)
