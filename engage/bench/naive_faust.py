"""A naive faust agent over a pre-filled topic (optionally counting per key in a Table), timed.

Run as a subprocess so every measurement gets a fresh process, event loop and app id:

    python -m engage.bench.naive_faust --bootstrap 127.0.0.1:PORT --topic T --count N [--table]

It prints one JSON line on stdout, ``{"events_per_s": ..., "join_s": ..., "count": ...}``, where
events_per_s covers the first to the Nth event and join_s is the time from worker start to the
first event (app start, topic declaration, group join, assignment). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import faust

from engage.bench.raw import create_topic, partition_count

TABLE_NAME = "counts"
EXIT_TIMEOUT = 2
SHUTDOWN_GRACE_S = 20.0


@dataclass
class Progress:
    """Counters shared between the agent, the progress reporter and the watchdog."""

    count: int
    started: float = field(default_factory=time.perf_counter)
    seen: int = 0
    first: float | None = None
    last: float | None = None
    done: bool = False

    def result(self) -> dict[str, float | int]:
        assert self.first is not None and self.last is not None
        span = self.last - self.first
        return {
            "events_per_s": round((self.seen - 1) / span, 1) if span > 0 else 0.0,
            "join_s": round(self.first - self.started, 2),
            "count": self.seen,
        }


def build_app(
    bootstrap: str,
    topic: str,
    partitions: int,
    progress: Progress,
    table: bool,
    app_id: str,
    poll_interval_s: float | None,
    max_poll_records: int | None = None,
) -> faust.App:
    settings: dict[str, Any] = {
        "broker": f"kafka://{bootstrap}",
        "store": "memory://",
        "topic_partitions": partitions,
        "topic_disable_leader": True,
        "web_enabled": False,
    }
    if poll_interval_s is not None:
        settings["broker_max_poll_interval"] = poll_interval_s
    if max_poll_records is not None:
        settings["broker_max_poll_records"] = max_poll_records
    app = faust.App(app_id, **settings)
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")

    def tick() -> None:
        now = time.perf_counter()
        if progress.first is None:
            progress.first = now
        progress.seen += 1
        progress.last = now
        if progress.seen >= progress.count and not progress.done:
            progress.done = True
            finish(progress)

    if table:
        counts = app.Table(TABLE_NAME, default=int, partitions=partitions)

        @app.agent(source)
        async def count_per_key(stream: faust.StreamT[bytes]) -> None:
            async for key, _value in stream.items():
                counts[key] += 1
                tick()

    else:

        @app.agent(source)
        async def read(stream: faust.StreamT[bytes]) -> None:
            async for _value in stream:
                tick()

    return app


def finish(progress: Progress) -> None:
    """Print the result line, then stop the worker as a signal would (hard exit if it hangs)."""
    print(json.dumps(progress.result()), flush=True)
    hard_exit = threading.Timer(SHUTDOWN_GRACE_S, os._exit, args=(0,))
    hard_exit.daemon = True
    hard_exit.start()
    os.kill(os.getpid(), signal.SIGTERM)


def watch(progress: Progress, timeout_s: float, every_s: float) -> None:
    """Report progress on stderr every every_s seconds; exit non-zero at timeout_s."""
    deadline = progress.started + timeout_s
    while not progress.done:
        time.sleep(min(every_s, max(deadline - time.perf_counter(), 0.0)))
        if progress.done:
            return
        now = time.perf_counter()
        print(
            f"naive_faust progress: {progress.seen}/{progress.count} events "
            f"at {now - progress.started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        if now >= deadline:
            print(
                f"naive_faust: timed out after {timeout_s:.0f}s with "
                f"{progress.seen}/{progress.count} events",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_TIMEOUT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engage.bench.naive_faust")
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--topic", required=True, help="pre-filled source topic")
    parser.add_argument("--count", type=int, required=True, help="events to read")
    parser.add_argument("--table", action="store_true", help="count per key in a Table")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="broker_max_poll_interval in seconds (default: faust's own)",
    )
    parser.add_argument(
        "--max-poll-records",
        type=int,
        default=None,
        help="broker_max_poll_records (default: faust's own, unbounded)",
    )
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--loglevel", default="warning", help="faust/aiokafka log level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    progress = Progress(count=args.count)
    app_id = f"bench-naive-{uuid.uuid4().hex[:10]}"
    partitions = partition_count(args.bootstrap, args.topic)
    if args.table:
        create_topic(args.bootstrap, f"{app_id}-{TABLE_NAME}-changelog", partitions)
    app = build_app(
        args.bootstrap,
        args.topic,
        partitions,
        progress,
        args.table,
        app_id,
        args.poll_interval,
        args.max_poll_records,
    )
    threading.Thread(
        target=watch, args=(progress, args.timeout, args.progress_every), daemon=True
    ).start()
    worker = faust.Worker(
        app,
        loglevel=args.loglevel,
        stdout=sys.stderr,
        redirect_stdouts=False,
        quiet=True,
    )
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    sys.exit(0 if progress.done else 1)


def run_naive_faust(
    bootstrap: str,
    topic: str,
    count: int,
    table: bool,
    timeout_s: float,
    poll_interval_s: float | None = None,
    max_poll_records: int | None = None,
) -> dict[str, float]:
    """Run the measurement in a subprocess and return its parsed result line."""
    command = [
        sys.executable,
        "-m",
        "engage.bench.naive_faust",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--count",
        str(count),
        "--timeout",
        str(timeout_s),
    ]
    if table:
        command.append("--table")
    if poll_interval_s is not None:
        command += ["--poll-interval", str(poll_interval_s)]
    if max_poll_records is not None:
        command += ["--max-poll-records", str(max_poll_records)]
    return run_faust_process(command, timeout_s)


def run_faust_process(command: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a faust bench program (its own process: faust owns the event loop and signals)
    and return the figures it printed as its last JSON line."""
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s + SHUTDOWN_GRACE_S + 30,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise RuntimeError(f"{command[2]} exited {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


if __name__ == "__main__":
    logging.captureWarnings(True)
    main()
