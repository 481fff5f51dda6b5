"""The playbook's scale figures: stream state memory per 100,000 supporters, replay time.

A synthetic log, fast to make, stands in for a large movement: each supporter signs up, and
a share of them sign petitions, RSVP and come to meetings, over the last year. Events are
valid topic events (JSON as the topics carry it), folded by the stream's own Engine.
"""

from __future__ import annotations

import gc
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engage.wiring import engine_for
from infra.db import LedgerEvent, make_engine, migrate, session_factory
from schemas.events import INPUT_EVENT_TYPES
from streams.engagement import SupporterState
from streams.playbook import load_playbook
from streams.replay import LogRecord, Source, replay_sharded

_AREAS = ("Hackney", "Leeds Central", "Bristol West", "Glasgow North", "Cardiff South")


def synthetic_log(supporters: int, seed: int = 7, days: int = 365) -> Iterator[LogRecord]:
    """About 3.4 events per supporter, in time order per supporter, arrival a minute later."""
    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(days=1)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    for n in range(supporters):
        sid = f"sup_{n:032x}"
        t = start.timestamp() + rng.random() * span * 0.9
        area = _AREAS[n % len(_AREAS)]
        common = {"supporter_id": sid, "email": f"p{n}@example.org", "area": area}
        yield _record(
            "supporter.signup",
            {**common, "consent_email": rng.random() < 0.87, "consent_sms": rng.random() < 0.6},
            t,
            rng,
        )
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            t += rng.random() * 86_400 * 20
            yield _record("petition.signed", {**common, "petition_id": "clean-air"}, t, rng)
        if rng.random() < 0.25:
            for m in range(rng.choice((1, 1, 2, 4, 6))):
                t += rng.random() * 86_400 * 14
                meeting = {**common, "meeting_id": f"m-{m}"}
                yield _record("event.rsvp", meeting, t, rng)
                yield _record(
                    "event.attended" if rng.random() < 0.7 else "event.no_show",
                    meeting,
                    t + 86_400,
                    rng,
                )


def _record(topic: str, fields: dict[str, Any], t: float, rng: random.Random) -> LogRecord:
    when = datetime.fromtimestamp(t, UTC)
    body = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_time": when.isoformat(),
        **fields,
    }
    return topic, json.dumps(body, separators=(",", ":")), t + 60


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def state_memory(supporters: int, step: int = 100_000, seed: int = 7) -> dict[str, Any]:
    """RSS of the stream's per-supporter state, measured after every ``step`` supporters are
    folded in; the baseline is the process before the first state."""
    engine = engine_for()
    states: dict[str, SupporterState] = {}
    models = INPUT_EVENT_TYPES
    gc.collect()
    baseline = rss_bytes()
    points: list[dict[str, Any]] = []
    events = 0
    started = time.perf_counter()
    for topic, value, arrived in synthetic_log(supporters, seed):
        event = models[topic].model_validate_json(value)
        sid = event.key()
        state = states.get(sid)
        if state is None:
            if len(states) % step == 0 and states:
                points.append(_point(states, baseline, events))
            state = states[sid] = SupporterState()
        engine.apply(state, event, arrived, emit=False)
        events += 1
    points.append(_point(states, baseline, events))
    stored = sum(len(s.actions) // 8 for s in states.values())
    return {
        "state_supporters": len(states),
        "state_events": events,
        "state_actions_kept": stored,
        "state_rss_points": points,
        "state_bytes_per_supporter": points[-1]["bytes_per_supporter"],
        "state_mb_per_100k_supporters": round(points[-1]["bytes_per_supporter"] * 1e5 / 1e6, 1),
        "state_fold_events_per_s": round(events / (time.perf_counter() - started)),
    }


def _point(states: dict[str, SupporterState], baseline: int, events: int) -> dict[str, Any]:
    gc.collect()
    grown = rss_bytes() - baseline
    return {
        "supporters": len(states),
        "events": events,
        "rss_mb": round(grown / 1e6, 1),
        "bytes_per_supporter": round(grown / len(states)),
    }


def replay_time(supporters: int, seed: int = 11, processes: int | None = None) -> dict[str, Any]:
    """Seconds to replay the whole log from a SQLite ledger with the default playbook."""
    with tempfile.TemporaryDirectory() as tmp:
        db = make_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        migrate(db)
        sessions = session_factory(db)
        count = _fill_ledger(sessions, synthetic_log(supporters, seed))
        db.dispose()
        # One process per core, split by supporter, as `engage replay` runs by default.
        shards = processes or os.cpu_count() or 1
        source = Source(database_url=f"sqlite:///{Path(tmp) / 'ledger.db'}")
        result = replay_sharded(source, load_playbook(), time.time(), shards)
    return {
        "replay_events": count,
        "replay_processes": shards,
        "replay_supporters": len(result.scores),
        "replay_seconds": round(result.seconds, 1),
        "replay_events_per_s": round(result.events / result.seconds),
        "replay_refused": result.refused,
        "replay_nudges": len(result.nudge_ids),
        "replay_tasks": len(result.task_ids),
    }


def _fill_ledger(sessions: Any, records: Iterator[LogRecord], batch: int = 20_000) -> int:
    from sqlalchemy import insert

    count = 0
    rows: list[dict[str, Any]] = []
    for topic, value, arrived in records:
        body = json.loads(value)
        rows.append(
            {
                "event_id": uuid.UUID(body["event_id"]),
                "topic": topic,
                "key": body["supporter_id"],
                "payload": value,
                "accepted_at": datetime.fromtimestamp(arrived or 0, UTC),
                "published": True,
            }
        )
        if len(rows) == batch:
            count += _insert(sessions, insert(LedgerEvent), rows)
            rows = []
    return count + _insert(sessions, insert(LedgerEvent), rows)


def _insert(sessions: Any, statement: Any, rows: list[dict[str, Any]]) -> int:
    if rows:
        with sessions.begin() as session:
            session.execute(statement, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engage.bench.state", description=__doc__)
    parser.add_argument("--supporters", type=int, default=1_000_000, help="for the memory")
    parser.add_argument("--step", type=int, default=100_000)
    parser.add_argument("--replay-events", type=int, default=1_000_000)
    parser.add_argument("--replay-processes", type=int, default=None, help="default: one a core")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    figures = {} if args.skip_memory else state_memory(args.supporters, args.step)
    # The synthetic log has about 3.4 events per supporter.
    events = max(round(args.replay_events / 3.4), 1)
    figures.update(replay_time(events, processes=args.replay_processes))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
