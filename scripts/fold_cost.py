"""Microseconds of stream-stage CPU per event without Kafka: parse, order, fold, serialise.

Feeds simulated topic events to an EngagementProcessor in memory, with the minimal playbook
(the baseline) and the default one, each the best of ``--runs``, and then the default one
with the worker's garbage-collector settings (``collect_less``); what encoding one output
costs (``model_dump_json`` against ``schemas.events.encoded``); then the same again in a
child process that runs the fold's source instead of its mypyc build (``ENGAGE_INTERPRETED=1``,
streams/compiled.py), so both are measured in the same run on the same events.
Usage: ``.venv/bin/python scripts/fold_cost.py [--events 30000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import streams
from engage.bench.pipeline import Arrival, topic_events
from schemas.events import Event, encoded
from streams.engagement import Engine, RefusedEvent, SupporterState
from streams.playbook import DEFAULT_PLAYBOOK, load_playbook
from streams.worker import EngagementProcessor, collect_less

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

    def fold(name: str) -> tuple[float, list[tuple[int, Any]]]:
        """CPU seconds of the best of ``runs`` folds of every record, and the outputs."""
        best = float("inf")
        for _ in range(runs):
            processor = EngagementProcessor(Engine(load_playbook(DEFAULT_PLAYBOOK.with_name(name))))
            processor.reset([], {})
            started = time.process_time()
            for topic, records in by_topic.items():
                processor.add(topic, 0, records)
            outputs = processor.release_all(None)
            best = min(best, time.process_time() - started)
        return best, outputs

    for name in ("minimal.yaml", "default.yaml"):
        seconds, outputs = fold(name)
        label = name.removesuffix(".yaml")
        figures[f"{label}_us_per_event"] = round(seconds / len(arrivals) * 1e6, 1)
        figures[f"{label}_outputs"] = len(outputs)
    # What one output costs to encode: pydantic's model_dump_json against the serializer
    # called directly (what the stream does, schemas.events.encoded), over these outputs.
    built = _outputs(arrivals)
    encoders: dict[str, Callable[[Event], bytes]] = {
        "model_dump_json": lambda out: out.model_dump_json().encode(),
        "encoded": encoded,
    }
    for label, encode in encoders.items():
        best = min(_timed(_encode_all, encode, built) for _ in range(runs))
        figures[f"{label}_us_per_output"] = round(best / len(built) * 1e6, 2)
    # Last, as it changes the process for good: the collector tuned as the worker tunes it.
    collect_less()
    seconds, _ = fold("default.yaml")
    figures["default_us_per_event_collect_less"] = round(seconds / len(arrivals) * 1e6, 1)
    return figures


def _outputs(arrivals: list[Arrival]) -> list[Event]:
    """The default playbook's outputs of these events, as the fold returns them."""
    engine = Engine(load_playbook())
    states: dict[str, SupporterState] = {}
    outputs: list[Event] = []
    for event, arrived_ms in sorted(arrivals, key=lambda a: a.timestamp_ms):
        state = states.setdefault(event.key(), SupporterState())
        with contextlib.suppress(RefusedEvent):
            outputs += engine.apply(state, event, arrived_ms / 1000)
    return outputs


def _encode_all(encode: Callable[[Event], bytes], outputs: list[Event]) -> list[bytes]:
    return [encode(out) for out in outputs]


def _timed(work: Callable[..., object], *args: Any) -> float:
    """CPU seconds of ``work(*args)``."""
    started = time.process_time()
    work(*args)
    return time.process_time() - started


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
