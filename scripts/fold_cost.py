"""Microseconds of stream-stage CPU per event without Kafka: parse, order, fold, serialise.

Feeds simulated topic events to an EngagementProcessor in memory, with the minimal playbook
(the baseline) and the default one, each the best of ``--runs``; then the same again in a
child process that runs the fold's source instead of its mypyc build (``ENGAGE_INTERPRETED=1``,
streams/compiled.py), so both are measured in the same run on the same events.
Usage: ``.venv/bin/python scripts/fold_cost.py [--events 30000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import streams
from engage.bench.pipeline import topic_events
from streams.engagement import Engine
from streams.playbook import DEFAULT_PLAYBOOK, load_playbook
from streams.worker import EngagementProcessor

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)  # the same events in the parent and the child


def measure(events: int, runs: int) -> dict[str, float | int | bool]:
    by_topic: dict[str, list[SimpleNamespace]] = {}
    arrivals = topic_events(events, now=NOW)
    for event, arrived_ms in arrivals:
        records = by_topic.setdefault(event.topic, [])
        records.append(
            SimpleNamespace(
                offset=len(records),
                key=event.key().encode(),
                value=event.model_dump_json().encode(),
                timestamp=arrived_ms,
            )
        )
    figures: dict[str, float | int | bool] = {
        "events": len(arrivals),
        "compiled": streams.COMPILED_FOLD,
    }
    for name in ("minimal.yaml", "default.yaml"):
        best = float("inf")
        for _ in range(runs):
            processor = EngagementProcessor(Engine(load_playbook(DEFAULT_PLAYBOOK.with_name(name))))
            processor.reset([], {})
            started = time.process_time()
            for topic, records in by_topic.items():
                processor.add(topic, 0, records)
            outputs = processor.release_all(None)
            best = min(best, time.process_time() - started)
        label = name.removesuffix(".yaml")
        figures[f"{label}_us_per_event"] = round(best / len(arrivals) * 1e6, 1)
        figures[f"{label}_outputs"] = len(outputs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only-this-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    figures = measure(args.events, args.runs)
    if args.only_this_process:
        print(json.dumps(figures))
        return
    child = subprocess.run(
        [sys.executable, __file__, "--events", str(args.events), "--runs", str(args.runs),
         "--only-this-process"],
        env={**os.environ, "ENGAGE_INTERPRETED": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    interpreted = json.loads(child.stdout)
    print(json.dumps({"fold": figures, "interpreted": interpreted}))


if __name__ == "__main__":
    main()
