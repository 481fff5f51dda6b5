"""An analyst's replay of one topic with their own Kafka client: confluent-kafka (librdkafka).

Subscribes in its own consumer group, replays the topic from the start, reads each partition up
to the end librdkafka reports from the fetch responses (its PARTITION_EOF event, which is the
fetch response's high watermark), and validates every record against the JSON Schema the app
serves at /schemas/{topic}.json. Prints a summary as JSON; with --out, the valid records as
JSON lines. Exit status 0 when every record was valid, 1 otherwise.

Why not stop at the "end offset"? On the embedded broker (Tansu 0.6.0) ListOffsets(latest),
which `get_watermark_offsets(cached=False)`, `end_offsets` and lag tools ask, answers the last
batch's base offset + 1: a client that stops there misses records (docs/analysts.md). The fetch
high watermark is right on Tansu and on Apache Kafka alike.

    pip install -c constraints.txt -e '.[analyst]'      # confluent-kafka, jsonschema-rs
    python examples/analyst_consumer.py --topic analytics.actions --out actions.jsonl

Without --bootstrap and --api it finds the running pipeline (`engage up`) through
ENGAGE_HOME/run.json (default ./.engage).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema_rs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def running_pipeline() -> dict[str, Any]:
    """The bootstrap and API URL `engage up` wrote, if it is running here."""
    run_file = Path(os.environ.get("ENGAGE_HOME", ".engage")) / "run.json"
    return json.loads(run_file.read_text()) if run_file.is_file() else {}


def served_schema(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def replay(
    bootstrap: str,
    topic: str,
    group: str,
    validator: jsonschema_rs.Validator,
    out: Any = None,
    stall_s: float = 60.0,
) -> dict[str, Any]:
    """Read ``topic`` from the start to each partition's end, validating every record."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",  # a group's first read starts at the start...
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # librdkafka says when a partition's end is reached
            "session.timeout.ms": 6000,
        }
    )
    assigned: list[int] = []

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # ...and a replay starts there whatever the group committed
            tp.offset = OFFSET_BEGINNING
        c.assign(partitions)
        assigned[:] = [tp.partition for tp in partitions]

    consumer.subscribe([topic], on_assign=on_assign)
    ends: dict[int, int] = {}
    read = valid = 0
    errors: list[dict[str, Any]] = []
    deadline = time.monotonic() + stall_s
    try:
        while not assigned or set(ends) != set(assigned):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no progress on {topic} in {stall_s} s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends[message.partition()] = message.offset()  # the fetch high watermark
                    continue
                raise KafkaException(error)
            deadline = time.monotonic() + stall_s
            ends.pop(message.partition(), None)  # more arrived after that end
            read += 1
            where = {"partition": message.partition(), "offset": message.offset()}
            try:
                record = json.loads(message.value())
                validator.validate(record)
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                errors.append({**where, "error": str(exc).splitlines()[0][:300]})
                continue
            valid += 1
            if out is not None:
                out.write(json.dumps(record) + "\n")
        # librdkafka's own record of each partition's high watermark, from the fetch responses
        cached = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
            for p in assigned
        }
        if read:  # the group's offsets, for lag tools (librdkafka refuses an empty commit)
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return {
        "topic": topic,
        "group": group,
        "read": read,
        "valid": valid,
        "invalid": len(errors),
        "errors": errors[:20],
        "end_offsets": {str(p): ends[p] for p in sorted(ends)},
        "cached_high_watermarks": {str(p): cached[p] for p in sorted(cached)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--topic", default="analytics.scores", help="an analytics.* topic (docs/analysts.md)"
    )
    parser.add_argument("--group", default=f"analyst-{getpass.getuser()}")
    parser.add_argument("--bootstrap", help="Kafka bootstrap (default: the running pipeline's)")
    parser.add_argument("--api", help="the app's base URL (default: the running pipeline's)")
    parser.add_argument(
        "--schema-url", help="the JSON Schema to validate against (default: API/schemas/TOPIC.json)"
    )
    parser.add_argument("--out", help="write the valid records here as JSON lines")
    parser.add_argument("--stall-s", type=float, default=60.0, help="give up after no progress")
    args = parser.parse_args(argv)
    running = running_pipeline()
    bootstrap = args.bootstrap or running.get("bootstrap")
    api = (args.api or running.get("api_url") or "").rstrip("/")
    if not bootstrap or not (api or args.schema_url):
        parser.error("give --bootstrap and --api, or start the pipeline (engage up)")
    validator = jsonschema_rs.validator_for(
        served_schema(args.schema_url or f"{api}/schemas/{args.topic}.json")
    )
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (closed below)
    try:
        summary = replay(bootstrap, args.topic, args.group, validator, out, args.stall_s)
    finally:
        if out is not None:
            out.close()
    print(json.dumps(summary, indent=2))
    return 0 if summary["invalid"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
