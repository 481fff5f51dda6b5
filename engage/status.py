"""What the pipeline is doing: topic message counts, consumer-group lag, ledger and nudges,
and whether each process of `engage up` is healthy (its /healthz)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
from kafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from consumers import runner as sinks
from consumers.mart import sink as mart
from infra.db import FollowUpTask, LedgerEvent, Nudge
from infra.topic_reader import end_offsets, group_lags
from schemas.catalogue import TOPICS
from streams import analytics_worker as analytics
from streams import worker as stream

GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        stream.GROUP: tuple(stream.SUBSCRIBED),
        sinks.GROUP: tuple(sinks.TOPICS),
        analytics.GROUP: analytics.SUBSCRIBED,
        mart.GROUP: mart.TOPICS,
    }
)
"""Each worker's consumer group and the topics it reads, as the workers declare them."""


def topic_counts(bootstrap: str) -> dict[str, dict[TopicPartition, int]]:
    """End offset (the fetch high watermark) of every partition of every catalogue topic."""
    return end_offsets(bootstrap, (spec.name for spec in TOPICS))


def pipeline_status(bootstrap: str, sessions: sessionmaker[Session]) -> dict[str, Any]:
    ends = topic_counts(bootstrap)
    lag = {group: found.lag for group, found in group_lags(bootstrap, GROUPS, ends).items()}
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


def process_health(home: Path, timeout_s: float = 2.0) -> dict[str, dict[str, Any]]:
    """Each process of the `engage up` running under ``home`` (its run file), asked on its
    /healthz: healthy or why not, and where its metrics are. No run file: nothing."""
    path = home / "run.json"
    if not path.exists():
        return {}
    run = json.loads(path.read_text())
    urls: dict[str, str] = {"api": run["api_url"], **run.get("metrics", {})}
    found: dict[str, dict[str, Any]] = {}
    for name, url in urls.items():
        try:
            answer = httpx.get(f"{url}/healthz", timeout=timeout_s)
            document = answer.json()
            healthy = answer.status_code == 200
            reason = "ok" if healthy else str(document.get("reason", answer.status_code))
        except (httpx.HTTPError, ValueError) as exc:
            healthy, reason = False, f"no answer at {url}/healthz ({type(exc).__name__})"
        found[name] = {"healthy": healthy, "reason": reason, "metrics": f"{url}/metrics"}
    return found


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
    processes: dict[str, dict[str, Any]] = status.get("processes", {})
    if processes:
        lines.append("\nprocess   health")
        for name, health in processes.items():
            said = "healthy" if health["healthy"] else f"unhealthy: {health['reason']}"
            lines.append(f"{name:<9} {said}  ({health['metrics']})")
    return "\n".join(lines)
