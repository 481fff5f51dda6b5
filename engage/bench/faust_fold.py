"""A peer of the stream stage in `engage bench`: faust hosting the same pure fold.

One agent over every input topic parses and folds each record as the stage does
(``engage.bench.hosted``), with the supporter's state in a faust Table (RocksDB through
rocksdict, with its changelog topic, the values in the stage's snapshot encoding
``streams.engagement.encode_state``), and sends what the fold causes to the output topics
named with a prefix. faust has no ordering across topics: records are folded in the order
its consumer delivers them. Settings as the stage's consumer: a 10 s session timeout (Tansu
answers a new group's first join after half of it), at most 5,000 records a poll.

Run as a subprocess, as the naive agents are (engage/bench/naive_faust.py), so each
measurement has a fresh process, event loop and app id:

    python -m engage.bench.faust_fold --bootstrap 127.0.0.1:PORT --count N [--store memory]

It prints one JSON line on stdout: events/s from the first record folded to the Nth, the join
(worker start to the first record), outputs by topic. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import faust

from engage.bench.hosted import fold_record, output_topics
from engage.bench.naive_faust import EXIT_TIMEOUT, SHUTDOWN_GRACE_S, run_faust_process
from engage.bench.raw import create_topic, partition_count
from engage.wiring import engine_for
from infra.kafka import CONSUMER_DEFAULTS
from schemas.catalogue import INPUT_TOPICS
from streams.engagement import SupporterState, decode_state, encode_state

HOST = "faust_fold"
TABLE_NAME = "supporters"


class Progress:
    """Counters shared by the agent and the watchdog."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.started = time.time()
        self.seen = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = False
        self.outputs: dict[str, int] = {}

    def result(self) -> dict[str, Any]:
        assert self.first is not None and self.last is not None
        seconds = self.last - self.first
        return {
            "events": self.seen,
            "events_per_s": round(self.seen / seconds) if seconds > 0 else 0,
            "seconds": round(seconds, 2),
            "join_s": round(self.first - self.started, 1),
            "outputs": dict(sorted(self.outputs.items())),
        }


def build_app(
    bootstrap: str,
    app_id: str,
    partitions: int,
    names: dict[str, str],
    progress: Progress,
    store: str,
    datadir: Path,
    order: TextIO | None,
    session_timeout_s: float,
) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store=store,
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=CONSUMER_DEFAULTS.heartbeat_interval_ms / 1000,
        broker_max_poll_records=CONSUMER_DEFAULTS.max_poll_records,
    )
    source = app.topic(*INPUT_TOPICS, key_type=bytes, value_type=bytes, value_serializer="raw")
    sinks = {
        topic: app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw")
        for topic, name in names.items()
    }
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        key_type=bytes,  # bytes: faust's "raw" codec, for the table and its changelog
        value_type=bytes,
    )
    engine = engine_for()

    def load(sid: str) -> SupporterState | None:
        kept = table.get(sid.encode())
        return None if kept is None else decode_state(kept)

    def store_state(sid: str, state: SupporterState) -> None:
        table[sid.encode()] = encode_state(state)

    @app.agent(source)
    async def fold(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if progress.first is None:
                progress.first = time.time()
            message = event.message
            if order is not None:
                order.write(f"{message.topic} {message.partition} {message.offset}\n")
            caused = fold_record(
                engine,
                HOST,
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                round(message.timestamp * 1000),
                load,
                store_state,
            )
            for topic, key, value in caused:
                progress.outputs[topic] = progress.outputs.get(topic, 0) + 1
                await sinks[topic].send(key=key, value=value)
            progress.seen += 1
            if progress.seen >= progress.count and not progress.done:
                progress.last = time.time()
                progress.done = True
                if order is not None:
                    order.close()
                finish(progress)

    return app


def finish(progress: Progress) -> None:
    """Print the result line, then stop the worker as a signal would (hard exit if it hangs)."""
    print(json.dumps(progress.result()), flush=True)
    hard_exit = threading.Timer(SHUTDOWN_GRACE_S, os._exit, args=(0,))
    hard_exit.daemon = True
    hard_exit.start()
    os.kill(os.getpid(), signal.SIGTERM)


def watch(progress: Progress, timeout_s: float) -> None:
    """Exit non-zero when ``timeout_s`` passes before every record is folded."""
    deadline = progress.started + timeout_s
    while not progress.done and time.time() < deadline:
        time.sleep(0.5)
    if not progress.done:
        print(
            f"faust_fold: timed out after {timeout_s:.0f}s with {progress.seen}/{progress.count}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_TIMEOUT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engage.bench.faust_fold")
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--count", type=int, required=True, help="input records to fold")
    parser.add_argument("--prefix", default="bench.faust.", help="of the output topics")
    parser.add_argument("--store", default="rocksdb://", help="the Table's store")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=CONSUMER_DEFAULTS.session_timeout_ms / 1000,
        help="seconds (the stage's by default)",
    )
    parser.add_argument("--order-file", type=Path, help="write each record folded, in order")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    parser.add_argument("--loglevel", default="warning", help="faust/aiokafka log level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    progress = Progress(args.count)
    app_id = f"bench-fold-{uuid.uuid4().hex[:10]}"
    partitions = partition_count(args.bootstrap, INPUT_TOPICS[0])
    # Tansu creates no topic by itself: the Table's changelog, as faust names it.
    create_topic(args.bootstrap, f"{app_id}-{TABLE_NAME}-changelog", partitions)
    names = output_topics(args.bootstrap, args.prefix)
    order = args.order_file.open("w") if args.order_file else None
    with tempfile.TemporaryDirectory(prefix="engage-faust-") as datadir:
        app = build_app(
            args.bootstrap,
            app_id,
            partitions,
            names,
            progress,
            args.store,
            Path(datadir),
            order,
            args.session_timeout,
        )
        threading.Thread(target=watch, args=(progress, args.timeout), daemon=True).start()
        worker = faust.Worker(
            app, loglevel=args.loglevel, stdout=sys.stderr, redirect_stdouts=False, quiet=True
        )
        with contextlib.suppress(SystemExit):
            worker.execute_from_commandline()
    sys.exit(0 if progress.done else 1)


def run_faust_fold(
    bootstrap: str,
    count: int,
    *,
    prefix: str = "bench.faust.",
    store: str = "rocksdb://",
    order_file: Path | None = None,
    session_timeout_s: float = CONSUMER_DEFAULTS.session_timeout_ms / 1000,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run the measurement in a subprocess and return its parsed result line."""
    command = [
        sys.executable,
        "-m",
        "engage.bench.faust_fold",
        "--bootstrap",
        bootstrap,
        "--count",
        str(count),
        "--prefix",
        prefix,
        "--store",
        store,
        "--timeout",
        str(timeout_s),
        "--session-timeout",
        str(session_timeout_s),
    ]
    if order_file is not None:
        command += ["--order-file", str(order_file)]
    return run_faust_process(command, timeout_s)


if __name__ == "__main__":
    logging.captureWarnings(True)
    main()
