"""Where the latency goes: API acceptance -> input topic -> nudge.requested -> nudge row.

    python scripts/latency_hops.py [--events 5000] [--rate 500]

Starts the pipeline as `engage up` does (embedded broker, temporary home), posts simulated
traffic at a steady rate, then joins the ledger's acceptance times, the Kafka record
timestamps of the input and nudge topics, and the nudge rows' creation times. Prints p50,
p90 and p99 in milliseconds for each hop. Loopback only; bounded by --events.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from engage.bench.pipeline import post_steadily, wait_until_consuming
from engage.processes import Supervisor
from infra.db import LedgerEvent, Nudge
from infra.settings import Settings
from producers.simulator import generate_events
from schemas.catalogue import INPUT_TOPICS


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return f"p50={pick(0.5):.0f} p90={pick(0.9):.0f} p99={pick(0.99):.0f} n={len(ordered)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engage-hops-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True)
        supervisor = Supervisor(settings)
        supervisor.start()
        try:
            token = settings.secret("api_token")
            wait_until_consuming(supervisor, token)
            start = datetime.now(UTC) - timedelta(days=28)
            events = generate_events(args.events // 3 + 1, seed=3, start=start)[: args.events]
            post_steadily(supervisor.api_url, token, events, args.rate)
            time.sleep(8)
            consumer = KafkaConsumer(
                bootstrap_servers=supervisor.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            topics = (*INPUT_TOPICS, "nudge.requested")
            tps = [
                TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            published: dict[str, float] = {}
            requested: dict[str, tuple[str, float]] = {}
            for _ in range(30):
                for tp, records in consumer.poll(500, max_records=100_000).items():
                    for record in records:
                        value = json.loads(record.value)
                        if tp.topic == "nudge.requested":
                            requested[value["nudge_id"]] = (
                                value["cause_event_id"],
                                record.timestamp,
                            )
                        else:
                            published[value["event_id"]] = record.timestamp
            consumer.close()
            with supervisor.sessions() as session:
                ledger = select(LedgerEvent.event_id, LedgerEvent.accepted_at)
                accepted = {str(k): v.timestamp() * 1000 for k, v in session.execute(ledger)}
                rows = select(Nudge.nudge_id, Nudge.created_at)
                written = {k: v.timestamp() * 1000 for k, v in session.execute(rows)}
        finally:
            supervisor.stop()
    print("relay   ", percentiles([published[e] - accepted[e] for e in published if e in accepted]))
    print(
        "stream  ",
        percentiles([ts - published[c] for c, ts in requested.values() if c in published]),
    )
    print(
        "consume ",
        percentiles([written[n] - ts for n, (_, ts) in requested.items() if n in written]),
    )
    print(
        "total   ",
        percentiles(
            [
                written[n] - accepted[c]
                for n, (c, _) in requested.items()
                if n in written and c in accepted
            ]
        ),
    )


if __name__ == "__main__":
    main()
