"""The log and the ledger before and after retention, on a simulated year: fills a SQLite file
with a year of the simulator's traffic through the ingest ledger (a day's events accepted at
the day's end), and the live stream's outputs stored as the consumers store them (nudges,
tasks, scores: every event folded as it arrives, the timer ticked daily); then applies
retention an hour after the year's last events arrived, with ``--retention-days`` for events,
scores, nudges and tasks, the other periods at their defaults. Prints the figures as JSON:

- ``ledger_rows``, ``ledger_bytes`` (topic, key and payload of every row);
- ``log_records``, ``log_bytes`` (key and value of every record the relay publishes: what the
  embedded broker holds after its next start, and Apache Kafka's topics net of overhead);
- ``db_bytes`` (the SQLite file after a checkpoint; SQLite reuses freed pages but gives them
  back to the file system only on VACUUM: ``db_bytes_after_vacuum``);
- the dry run's and the apply's time, rows deleted per table and topic;
- a replay of what remains against what is stored: no nudge or task should be new.

    .venv/bin/python scripts/retention_bench.py [--supporters 20000] [--retention-days 180]
        [--fill-limit-s 300] [--db PATH]

The fill stops at ``--fill-limit-s`` (the figures then say how many days were filled).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import store_nudges, store_scores, store_tasks, stored_outputs
from engage.retention import apply_retention
from engage.wiring import engine_for
from infra.db import make_engine, migrate, session_factory
from infra.settings import Settings
from producers.ledger import ingest_events
from producers.simulator import generate_events
from schemas.events import (
    INPUT_EVENT_TYPES,
    EngagementScored,
    Event,
    IngestEvent,
    NudgeRequested,
    TaskCreated,
)
from streams.engagement import SupporterState
from streams.replay import Stored, compare_with_stored, in_fold_order, ledger_records, replay

KEY = "bench-key"
START = datetime(2026, 1, 1, tzinfo=UTC)
NOW = START + timedelta(days=366, hours=1)
"""When retention is applied: an hour after the year's last events were accepted."""
DAY_S = 86_400
_INGEST: TypeAdapter[Any] = TypeAdapter(IngestEvent)


def fill(sessions: sessionmaker[Session], supporters: int, limit_s: float) -> dict[str, Any]:
    """A year of traffic through the ingest ledger, a day at a time, until ``limit_s``."""
    started = time.perf_counter()
    by_day: dict[datetime, list[Event]] = defaultdict(list)
    for payload in generate_events(supporters, seed=2026, start=START, days=365):
        event = _INGEST.validate_python(payload)
        by_day[event.event_time.replace(hour=23, minute=59, second=0, microsecond=0)].append(event)
    days = 0
    for day in sorted(by_day):
        with sessions.begin() as session:
            ingest_events(session, by_day[day], day + timedelta(minutes=5), KEY)
        days += 1
        if time.perf_counter() - started > limit_s:
            break
    return {
        "supporters": supporters,
        "days_filled": days,
        "ingest_s": round(time.perf_counter() - started, 1),
    }


def store_live_outputs(sessions: sessionmaker[Session], now: datetime) -> dict[str, int]:
    """What the live stream would have asked the consumers to store for the ledger's events."""
    engine = engine_for()
    states: dict[str, SupporterState] = {}
    outputs: list[Event] = []
    ticked: int | None = None
    for topic, value, arrived in in_fold_order(ledger_records(sessions)):
        day = int((arrived or 0) // DAY_S)
        for tick in range((ticked or day) + 1, day + 1):
            outputs += engine.tick(states, tick * DAY_S)
        ticked = day
        event = INPUT_EVENT_TYPES[topic].model_validate_json(value)
        outputs += engine.apply(states.setdefault(event.key(), SupporterState()), event, arrived)
    outputs += engine.tick(states, now.timestamp())
    nudges = [o for o in outputs if isinstance(o, NudgeRequested)]
    tasks = [o for o in outputs if isinstance(o, TaskCreated)]
    scores = list({o.supporter_id: o for o in outputs if isinstance(o, EngagementScored)}.values())
    with sessions.begin() as session:
        for lo in range(0, max(len(nudges), len(tasks), len(scores)), 5_000):
            store_nudges(session, nudges[lo : lo + 5_000])
            store_tasks(session, tasks[lo : lo + 5_000])
            store_scores(session, scores[lo : lo + 5_000])
    return {"nudges": len(nudges), "tasks": len(tasks), "scores": len(scores)}


def sizes(path: Path) -> dict[str, int]:
    """Rows and bytes of the ledger, of the log it publishes, and of the database file."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows, ledger_bytes, log_bytes = db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(CAST(key AS BLOB))"
            " + length(CAST(payload AS BLOB))), 0),"
            " coalesce(sum(length(CAST(key AS BLOB)) + length(CAST(payload AS BLOB))), 0)"
            " FROM ledger"
        ).fetchone()
        counts = {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("nudges", "tasks", "supporter_scores", "consent")
        }
    finally:
        db.close()
    return {
        "ledger_rows": rows,
        "ledger_bytes": ledger_bytes,
        "log_records": rows,
        "log_bytes": log_bytes,
        "db_bytes": path.stat().st_size,
        **{f"{table}_rows": n for table, n in counts.items()},
    }


def vacuum(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    db = sqlite3.connect(path)
    try:
        db.execute("VACUUM")
    finally:
        db.close()
    return {
        "db_bytes_after_vacuum": path.stat().st_size,
        "vacuum_s": round(time.perf_counter() - started, 2),
    }


def replay_check(sessions: sessionmaker[Session], now: datetime) -> dict[str, Any]:
    result = replay(engine_for(), ledger_records(sessions), now.timestamp())
    with sessions() as session:
        stored = Stored(*stored_outputs(session))
    report = compare_with_stored(result, stored, 90.0)
    return {
        key: report[key]
        for key in ("nudges_new", "tasks_new", "scores_identical", "scores_different_or_missing")
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supporters", type=int, default=20_000)
    parser.add_argument("--retention-days", type=int, default=180)
    parser.add_argument("--fill-limit-s", type=float, default=300.0)
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "retention-bench.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        sessions = session_factory(engine)
        figures: dict[str, Any] = fill(sessions, args.supporters, args.fill_limit_s)
        figures["outputs_stored"] = store_live_outputs(sessions, NOW)
        with sessions.begin() as session:  # as the relay leaves them
            session.execute(text("UPDATE ledger SET published = 1"))
        days = args.retention_days
        settings = Settings(
            database_url=f"sqlite:///{path}",
            retention_events_days=days,
            retention_scores_days=days,
            retention_nudges_days=days,
            retention_tasks_days=days,
        )
        figures["before"] = sizes(path)
        dry = apply_retention(sessions, settings, NOW, dry_run=True)
        done = apply_retention(sessions, settings, NOW)
        figures["after"] = {**sizes(path), **vacuum(path)}
        figures.update(
            {
                "retention_days": days,
                "dry_run_s": dry.seconds,
                "apply_s": done.seconds,
                "rows_deleted": done.rows,
                "log_records_deleted": done.log,
                "replay_after": replay_check(sessions, NOW),
            }
        )
        engine.dispose()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
