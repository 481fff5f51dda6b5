"""What the pipeline is doing: topic message counts, consumer-group lag, ledger and nudges."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import FollowUpTask, LedgerEvent, Nudge
from infra.topics import admin_client
from schemas.catalogue import INPUT_TOPICS, TOPICS

GROUPS: dict[str, tuple[str, ...]] = {
    "engage-stream": INPUT_TOPICS,
    "engage-consumers": ("nudge.requested", "task.created", "engagement.scored"),
}


def topic_counts(bootstrap: str) -> dict[str, dict[TopicPartition, int]]:
    """End offset of every partition of every catalogue topic.

    Tansu 0.6.0 answers ListOffsets(latest) with the last *batch's* base offset + 1, not
    the offset after its last record, so we take the high watermark from a fetch that
    starts at that batch instead.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="engage-status", enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(spec.name, p)
            for spec in TOPICS
            for p in sorted(consumer.partitions_for_topic(spec.name) or ())
        ]
        listed = consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(listed[tp] - 1, 0))
        ends: dict[str, dict[TopicPartition, int]] = {spec.name: {} for spec in TOPICS}
        pending = {tp for tp in tps if listed[tp] > 0}
        for tp in tps:
            ends[tp.topic][tp] = listed[tp]
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1_000_000)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp.topic][tp] = high
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"no high watermark for {sorted(map(str, pending))} in 30 s")
        return ends
    finally:
        consumer.close()


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
