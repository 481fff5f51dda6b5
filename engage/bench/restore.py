"""Restore from a snapshot against a full replay, on the embedded broker (issue 14, item 7).

A synthetic history (``engage.bench.state.synthetic_log``) goes onto the input topics, keyed and
stamped as the relay does, and the stream group's offsets are committed at its end. Then, each
timed from the assignment to the end of the restore (the group join is not counted):

- ``full_replay_s``: a StreamWorker without snapshots rebuilds the state from the beginning of
  the log (the restore before snapshots);
- a StreamWorker with a snapshot store (SQLite in a temporary directory) rebuilds the same way
  and saves the state as it stops (``snapshot_save_s``);
- ``restore_s``: a StreamWorker loads that snapshot, with nothing left to fold.

Then the history doubles (the same supporters, as many events again) and the same is measured
again (``..._2x``): restore should stay flat, full replay doubles.

Usage: ``python -m engage.bench.restore [--supporters 100000]`` (JSON on stdout); also
``engage bench --scale-only --json`` adds these figures.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata
from sqlalchemy import func, select

from engage.bench.state import synthetic_log
from engage.wiring import engine_for
from infra.broker import EmbeddedBroker
from infra.db import StreamState, make_engine, migrate, session_factory
from infra.kafka import ConsumerSettings, idempotent_producer
from infra.topic_reader import end_offsets
from infra.topics import ensure_topics
from schemas.catalogue import INPUT_TOPICS
from streams.snapshots import SnapshotStore
from streams.worker import StreamWorker

_JOIN = ConsumerSettings(session_timeout_ms=6_000)
"""The broker's shortest session: a successor's join waits for less of it."""


def produce_history(bootstrap: str, supporters: int, seed: int) -> int:
    """The synthetic log on the input topics (keyed by supporter, stamped with the arrival)."""
    producer = idempotent_producer(
        bootstrap, "engage-bench-restore", batch_size=256 * 1024, linger_ms=20
    )
    count = 0
    try:
        for topic, value, arrived in synthetic_log(supporters, seed):
            body = value.encode() if isinstance(value, str) else value
            key = json.loads(body)["supporter_id"].encode()
            producer.send(topic, key=key, value=body, timestamp_ms=int((arrived or 0) * 1000))
            count += 1
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=10)
    return count


def commit_to_end(bootstrap: str, group: str) -> int:
    """Commit the group's offsets at the high watermarks; the records that makes history."""
    ends = end_offsets(bootstrap, INPUT_TOPICS)
    offsets = {tp: end for per_topic in ends.values() for tp, end in per_topic.items()}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items() if o})
    finally:
        consumer.close()
    return sum(offsets.values())


def timed_restore(
    bootstrap: str, group: str, store: SnapshotStore | None, timeout_s: float
) -> dict[str, Any]:
    """Run a StreamWorker until its restore is over; the seconds from its assignment to then,
    what it loaded, and the seconds its stop (and the snapshot saved then) took."""
    worker = StreamWorker(
        bootstrap, engine_for(), group_id=group, consumer_settings=_JOIN, snapshots=store,
        snapshot_seconds=1e9,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(worker.run(stop))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    restored_at = None
    while time.monotonic() < deadline and not errors:
        processor = worker.processor
        if worker.assigned_at is not None and worker.last_assignment:
            folded, to_fold = processor.restore_progress()
            if folded >= to_fold and not any(processor.buffers.values()):
                restored_at = time.monotonic()
                break
        time.sleep(0.005)
    stopping = time.monotonic()
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout_s)
    if errors:
        raise errors[0]
    if restored_at is None or worker.assigned_at is None:
        raise TimeoutError(f"no restore within {timeout_s} s")
    supporters = sum(len(states) for states in worker.processor.states.values())
    return {
        "seconds": round(restored_at - worker.assigned_at, 2),
        "supporters": supporters,
        "folded": worker.processor.folded,
        "stop_s": round(time.monotonic() - stopping, 2),
        **worker.last_assignment,
    }


def restore_figures(supporters: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """restore_s and full_replay_s for ``supporters`` (about 3.4 events each), then again with
    the history doubled."""
    figures: dict[str, Any] = {"restore_supporters": supporters}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=None) as broker:
        bootstrap = broker.bootstrap
        ensure_topics(bootstrap, 4)
        db = make_engine(f"sqlite:///{Path(tmp) / 'engage.db'}")
        migrate(db)
        store = SnapshotStore(session_factory(db))
        for label, seed in (("", 7), ("_2x", 8)):
            group = f"engage-stream-bench-{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            produce_history(bootstrap, supporters, seed)
            figures[f"produce_s{label}"] = round(time.perf_counter() - started, 1)
            events = commit_to_end(bootstrap, group)
            # Every partition rebuilt from the beginning, then its state saved as it stops.
            replayed = timed_restore(bootstrap, group, None, timeout_s)
            built = timed_restore(bootstrap, group, store, timeout_s)
            restored = timed_restore(bootstrap, group, store, timeout_s)
            with store.sessions() as session:
                rows = session.scalar(select(func.count()).select_from(StreamState))
            figures.update(
                {
                    f"restore_history_events{label}": events,
                    f"full_replay_s{label}": replayed["seconds"],
                    f"full_replay_events_per_s{label}": round(
                        replayed["replaying"] / max(replayed["seconds"], 1e-9)
                    ),
                    f"snapshot_save_s{label}": built["stop_s"],
                    # Round 2 starts from round 1's snapshot: a restore one history behind.
                    f"snapshot_build_s{label}": built["seconds"],
                    f"snapshot_build_folded{label}": built["replaying"],
                    f"snapshot_rows{label}": rows,
                    f"restore_s{label}": restored["seconds"],
                    f"restore_supporters_loaded{label}": restored["supporters_loaded"],
                    f"restore_records_folded{label}": restored["replaying"],
                    f"restore_speedup{label}": round(
                        replayed["seconds"] / max(restored["seconds"], 1e-9), 1
                    ),
                }
            )
        db.dispose()
    return figures


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engage.bench.restore", description=__doc__)
    parser.add_argument("--supporters", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    print(json.dumps(restore_figures(args.supporters, args.timeout), indent=2))


if __name__ == "__main__":
    main()
