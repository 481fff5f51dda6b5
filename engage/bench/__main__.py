"""Benchmark driver: one embedded broker, one pre-filled topic, throughput figures as JSON.

Usage: ``python -m engage.bench [--events 100000] [--partitions 8] [--timeout 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from engage.bench.events import make_payloads
from engage.bench.raw import bench_topic_name, create_topic, raw_consume, raw_produce
from engage.extras import require_extras
from infra.broker import EmbeddedBroker


def prefill(bootstrap: str, events: int, partitions: int) -> tuple[str, float]:
    """Create a fresh topic, fill it with `events` payloads; return (topic, produce events/s)."""
    topic = create_topic(bootstrap, bench_topic_name(), partitions)
    rate = asyncio.run(raw_produce(bootstrap, topic, make_payloads(events)))
    return topic, rate


def measure_throughput(
    bootstrap: str, events: int, partitions: int, timeout_s: float
) -> dict[str, Any]:
    """Every throughput figure against one pre-filled topic on an already running broker."""
    from engage.bench.naive_faust import run_naive_faust  # faust: the `bench` extra

    topic, produced = prefill(bootstrap, events, partitions)
    consumed = asyncio.run(raw_consume(bootstrap, topic, events, timeout_s))
    plain = run_naive_faust(bootstrap, topic, events, table=False, timeout_s=timeout_s)
    table = run_naive_faust(bootstrap, topic, events, table=True, timeout_s=timeout_s)
    return {
        "events": events,
        "partitions": partitions,
        "raw_produce": round(produced),
        "raw_consume": round(consumed),
        "naive_faust": plain["events_per_s"],
        "naive_faust_table": table["events_per_s"],
        "naive_faust_join_s": plain["join_s"],
        "naive_faust_table_join_s": table["join_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engage.bench")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    require_extras("`python -m engage.bench`", "bench", "embedded")
    with EmbeddedBroker() as broker:
        figures = measure_throughput(broker.bootstrap, args.events, args.partitions, args.timeout)
    json.dump(figures, sys.stdout)
    print()


if __name__ == "__main__":
    main()
