"""Where the latency goes: API acceptance -> input topic -> nudge.requested -> nudge row.

    python scripts/latency_hops.py [--events 5000] [--rate 500]

Starts the pipeline as `engage up` does (embedded broker, temporary home), posts the traffic
`engage bench`'s latency figure posts (two recent days, seed 9) at a steady rate, while a tail
consumer notes when each input and output record becomes readable. Then it joins the ledger's
acceptance times, those arrivals, the outputs' Kafka timestamps (set by the stream's producer
when it sends) and the nudge and task rows' creation times, and prints p50, p90 and p99 in
milliseconds for each hop:

    api      a POST of 25 events, sent -> answered (after its ledger transaction commits)
    relay    accepted_at -> input record readable (the relay stamps its records with
             accepted_at, so their own timestamps cannot show this hop)
    stream   input record readable -> output sent by the stream stage (its timestamp)
    publish  output sent -> output readable (linger and acks=all)
    consume  output readable -> nudge or task row created
    total    accepted_at -> row created (what `engage bench`'s latency figure reports)

The tail's own fetch wait (5 ms) is charged to the hop before it. Also printed: each child's
CPU in cores and mean batch time (from its /metrics), and with --lock-probe how often SQLite's
write lock was held while the traffic was posted. Loopback only; bounded by --events.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from engage.bench.pipeline import wait_until_consuming
from engage.metrics import metrics_url
from engage.processes import Supervisor
from infra.db import FollowUpTask, LedgerEvent, Nudge
from infra.settings import Settings
from producers.simulator import generate_events
from schemas.catalogue import INPUT_TOPICS

OUTPUT_TOPICS = ("nudge.requested", "task.created")


def percentiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return f"p50={pick(0.5):.0f} p90={pick(0.9):.0f} p99={pick(0.99):.0f} n={len(ordered)}"


class Tail:
    """Reads the input and output topics as they are written, noting when each record came:
    ``inputs[event_id]`` and ``outputs[output_id] = (cause_event_id, sent_ms, read_ms)``."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
        )
        tps = [
            TopicPartition(t, p)
            for t in (*INPUT_TOPICS, *OUTPUT_TOPICS)
            for p in self.consumer.partitions_for_topic(t) or ()
        ]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)  # resolve the end now, before traffic starts
        self.inputs: dict[str, float] = {}
        self.outputs: dict[str, tuple[str, float, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for tp, records in self.consumer.poll(20, max_records=10_000).items():
                now = time.time() * 1000
                for record in records:
                    value = json.loads(record.value)
                    if tp.topic in OUTPUT_TOPICS:
                        output_id = value.get("nudge_id") or value["task_id"]
                        self.outputs[output_id] = (value["cause_event_id"], record.timestamp, now)
                    else:
                        self.inputs[value["event_id"]] = now
        self.consumer.close()


BATCH_TIME = re.compile(
    r"^(engage_\w+_batch_seconds|engage_sqlite_lock_\w+_seconds)_(sum|count) ([0-9.e+-]+)$", re.M
)


def batch_times(supervisor: Supervisor) -> dict[str, str]:
    """Each child's mean batch time and batch count, from its ``*_batch_seconds`` histogram,
    and on SQLite its write transactions' waits for the lock and hold times (infra.sqlite_lock:
    the mean, the count and the total, whose sum over the children is the lock's occupancy)."""
    found: dict[str, str] = {}
    urls = {"api": supervisor.api_url}  # the API serves its /metrics on its own port
    for name, port in supervisor.metrics_ports.items():
        urls[name] = metrics_url(supervisor.settings.metrics_host, port)
    for name, url in urls.items():
        try:
            text = httpx.get(f"{url}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        figures: dict[str, dict[str, float]] = {}
        for metric, kind, value in BATCH_TIME.findall(text):
            figures.setdefault(metric, {})[kind] = float(value)
        for metric, f in figures.items():
            if f.get("count"):
                mean = f["sum"] / f["count"] * 1000
                found[f"{name} {metric}"] = (
                    f"mean={mean:.1f} ms batches={f['count']:.0f}"
                    if metric.endswith("_batch_seconds")
                    else f"mean={mean:.1f} ms n={f['count']:.0f} total={f['sum']:.1f} s"
                )
    return found


def post_timed(url: str, token: str, events: list[dict[str, Any]], rate: float) -> list[float]:
    """``post_steadily``'s traffic (batches of 25 at ``rate`` events/s); returns each
    request's milliseconds, an upper bound of the API's share of the relay hop (accepted_at
    is taken before the ledger transaction, which may wait for SQLite's write lock)."""
    batch, took = 25, []
    interval = batch / rate
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        for n, i in enumerate(range(0, len(events), batch)):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            client.post("/v1/events/batch", json={"events": events[i : i + batch]})
            took.append((time.perf_counter() - sent) * 1000)
    return took


def cpu_seconds(supervisor: Supervisor) -> dict[str, float]:
    """CPU seconds (user and system) each child and the broker have used so far."""
    pids = {name: child.process.pid for name, child in supervisor.children.items()}
    if supervisor.broker is not None and supervisor.broker.process is not None:
        pids["broker"] = supervisor.broker.process.pid
    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


class LockProbe:
    """SQLite: tries the write lock every 2 ms (BEGIN IMMEDIATE, ROLLBACK, no busy wait) and
    counts how often someone else holds it: the share of time the file's one writer slot is
    taken. It takes the lock itself for microseconds, so it is off unless asked for."""

    def __init__(self, path: Path) -> None:
        self.path, self.busy, self.free = path, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        while not self.stop.wait(0.002):
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
                self.free += 1
            except sqlite3.OperationalError:
                self.busy += 1
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--logs", type=Path, help="copy the children's logs here at the end")
    parser.add_argument(
        "--lock-probe", action="store_true", help="SQLite: how often the write lock is held"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engage-hops-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True)
        supervisor = Supervisor(settings)
        supervisor.start()
        try:
            token = settings.secret("api_token")
            wait_until_consuming(supervisor, token)
            start = datetime.now(UTC) - timedelta(days=2, hours=1)
            events = generate_events(args.events // 3 + 1, seed=9, start=start, days=2)
            tail = Tail(supervisor.bootstrap)
            tail.thread.start()
            cpu_before, posting_started = cpu_seconds(supervisor), time.monotonic()
            probe = LockProbe(settings.home / "engage.db") if args.lock_probe else None
            if probe is not None:
                probe.thread.start()
            requests = post_timed(supervisor.api_url, token, events[: args.events], args.rate)
            if probe is not None:
                probe.stop.set()
                probe.thread.join()
            time.sleep(5)
            cpu_after, wall = cpu_seconds(supervisor), time.monotonic() - posting_started
            tail.stop.set()
            tail.thread.join()
            batches = batch_times(supervisor)
            with supervisor.sessions() as session:
                ledger = select(LedgerEvent.event_id, LedgerEvent.accepted_at)
                accepted = {str(k): v.timestamp() * 1000 for k, v in session.execute(ledger)}
                written = {
                    k: v.timestamp() * 1000
                    for model, key in (
                        (Nudge, Nudge.nudge_id),
                        (FollowUpTask, FollowUpTask.task_id),
                    )
                    for k, v in session.execute(select(key, model.created_at))
                }
        finally:
            supervisor.stop()
            if args.logs is not None:
                shutil.copytree(supervisor.logs, args.logs, dirs_exist_ok=True)
    print(f"CPU over the {wall:.1f} s of traffic, in cores (os.getloadavg: {os.getloadavg()}):")
    print(
        "  ", " ".join(f"{n}={(cpu_after[n] - cpu_before.get(n, 0)) / wall:.2f}" for n in cpu_after)
    )
    for name, figure in batches.items():
        print(f"{name:50s} {figure}")
    if probe is not None:
        tries = probe.busy + probe.free
        print(
            f"SQLite write lock held by the pipeline in {probe.busy / tries:.0%} of {tries} tries"
        )
    read = tail.inputs
    outs = [(o, *v) for o, v in tail.outputs.items() if o in written and v[0] in read]
    print("api     ", percentiles(requests), "(a request of 25 events, posted to answered)")
    print("relay   ", percentiles([read[e] - accepted[e] for e in read if e in accepted]))
    print("stream  ", percentiles([sent - read[cause] for _, cause, sent, _ in outs]))
    print("publish ", percentiles([got - sent for _, _, sent, got in outs]))
    print("consume ", percentiles([written[o] - got for o, _, _, got in outs]))
    print(
        "total   ",
        percentiles([written[o] - accepted[c] for o, c, _, _ in outs if c in accepted]),
    )


if __name__ == "__main__":
    main()
