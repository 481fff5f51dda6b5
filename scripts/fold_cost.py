"""Microseconds of stream-stage CPU per event without Kafka: parse, order, fold, serialise.

Feeds simulated topic events to an EngagementProcessor in memory, once with the minimal
playbook (the baseline) and once with the default one, and prints CPU time per event.
Usage: ``.venv/bin/python scripts/fold_cost.py [--events 30000]``.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from engage.bench.pipeline import topic_events
from streams.engagement import Engine
from streams.playbook import DEFAULT_PLAYBOOK, load_playbook
from streams.worker import EngagementProcessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    by_topic: dict[str, list[SimpleNamespace]] = {}
    events = topic_events(args.events)
    for event, arrived_ms in events:
        records = by_topic.setdefault(event.topic, [])
        records.append(
            SimpleNamespace(
                offset=len(records),
                key=event.key().encode(),
                value=event.model_dump_json().encode(),
                timestamp=arrived_ms,
            )
        )
    figures: dict[str, float] = {"events": len(events)}
    for name in ("minimal.yaml", "default.yaml"):
        processor = EngagementProcessor(Engine(load_playbook(DEFAULT_PLAYBOOK.with_name(name))))
        processor.reset([], {})
        started = time.process_time()
        for topic, records in by_topic.items():
            processor.add(topic, 0, records)
        outputs = processor.release_all(None)
        seconds = time.process_time() - started
        label = name.removesuffix(".yaml")
        figures[f"{label}_us_per_event"] = round(seconds / len(events) * 1e6, 1)
        figures[f"{label}_outputs"] = len(outputs)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
