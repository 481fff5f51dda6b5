"""Microseconds of analytics-stream CPU per record without Kafka: parse the operational record,
map it to its analytics record (pseudonym included), serialise it.

Feeds simulated input events (as JSON, the way they sit on the topics) through
``streams.analytics.analytics_record`` and ``model_dump_json`` and prints the CPU time per
record and the records per second of one core.
Usage: ``.venv/bin/python scripts/analytics_cost.py [--events 30000]``.
"""

from __future__ import annotations

import argparse
import json
import time

from engage.bench.pipeline import topic_events
from streams.analytics import AnalyticsKey, analytics_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    key = AnalyticsKey("benchmark-key", "k1")
    records = [
        (arrival.event.topic, arrival.event.model_dump_json().encode())
        for arrival in topic_events(args.events)
    ]
    started = time.process_time()
    published = 0
    for topic, value in records:
        record = analytics_record(topic, value, key)
        if record is not None:
            record.model_dump_json()
            published += 1
    cpu = time.process_time() - started
    print(
        json.dumps(
            {
                "records": len(records),
                "analytics_records": published,
                "cpu_s": round(cpu, 3),
                "us_per_record": round(cpu / len(records) * 1e6, 1),
                "records_per_s_one_core": round(len(records) / cpu),
            }
        )
    )


if __name__ == "__main__":
    main()
