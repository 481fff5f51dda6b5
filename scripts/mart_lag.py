"""The analysts' mart's lag behind the stream, at a steady rate of simulated traffic through the
whole pipeline as `engage up` runs it on the embedded broker: for each action stored in the
mart (``mart_events``), the milliseconds from its acceptance by the API (its ledger commit)
and from its record on ``analytics.actions`` (the record's timestamp, set by the analytics
worker's producer) to its row in the mart.

    python scripts/mart_lag.py [--rate 500] [--seconds 20] [--json]

When a row appeared is seen by polling the mart every ``--poll`` seconds (default 0.025): the
figures are late by half of that on average. Bounded: ``--seconds`` of traffic, then
``--timeout`` seconds to drain. Only loopback addresses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from engage.bench.pipeline import post_steadily, wait_until_consuming
from engage.processes import Supervisor
from infra.db import LedgerEvent, MartEvent
from infra.settings import Settings
from infra.topic_reader import read_to_end
from producers.simulator import generate_events


def _percentile(samples: list[float], q: float) -> float:
    return round(samples[min(len(samples) - 1, int(len(samples) * q))], 1)


class Watch:
    """Polls the mart's event ids every ``every_s`` seconds, noting when each first appeared."""

    def __init__(self, supervisor: Supervisor, every_s: float) -> None:
        self.supervisor = supervisor
        self.every_s = every_s
        self.seen: dict[Any, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            with self.supervisor.sessions() as session:
                ids = session.scalars(select(MartEvent.event_id)).all()
            now = time.time()
            for event_id in ids:
                self.seen.setdefault(event_id, now)


def _post(url: str, token: str, events: list[dict[str, Any]], rate: float, clients: int) -> int:
    """``events`` at ``rate`` events/s in all, from ``clients`` threads each posting every
    ``clients``-th batch of 25 at its share of the rate (one client alone cannot reach 500
    events/s when the API answers a batch in more than 50 ms)."""
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    shares = [[e for b in batches[k::clients] for e in b] for k in range(clients)]
    counts = [0] * clients

    def post(k: int) -> None:
        counts[k] = post_steadily(url, token, shares[k], rate / clients)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def run(
    rate: float, seconds: float, poll_s: float, timeout_s: float, clients: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engage-mart-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True)
        supervisor = Supervisor(settings)
        supervisor.start()
        try:
            token = settings.secret("api_token")
            wait_until_consuming(supervisor, token)
            _wait_for_mart(supervisor, 1, 60.0)  # the mart's group has joined
            now = datetime.now(UTC)
            events = generate_events(
                max(100, int(rate * seconds / 3)), seed=21, start=now - timedelta(days=28), days=28
            )[: int(rate * seconds)]
            watch = Watch(supervisor, poll_s)
            with supervisor.sessions() as session:
                for event_id in session.scalars(select(MartEvent.event_id)):
                    watch.seen[event_id] = 0.0  # the warm-up: not measured
            watch.thread.start()
            started = time.monotonic()
            accepted = _post(supervisor.api_url, token, events, rate, clients)
            posting_s = time.monotonic() - started
            _drain(supervisor, timeout_s)
            watch.stop.set()
            watch.thread.join()
            figures = _figures(supervisor, watch.seen)
        finally:
            supervisor.stop()
    figures.update(rate=rate, events_posted=accepted, posting_s=round(posting_s, 1))
    figures["measured_rate"] = round(accepted / posting_s, 1)
    figures["poll_s"] = poll_s
    return figures


def _count(supervisor: Supervisor) -> int:
    with supervisor.sessions() as session:
        return session.scalar(select(func.count()).select_from(MartEvent)) or 0


def _wait_for_mart(supervisor: Supervisor, rows: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _count(supervisor) < rows:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mart did not reach {rows} events in {timeout_s} s")
        time.sleep(0.2)


def _drain(supervisor: Supervisor, timeout_s: float) -> None:
    """Until the mart has had no new event for 3 s."""
    deadline = time.monotonic() + timeout_s
    previous = -1
    while (now := _count(supervisor)) != previous:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mart still growing after {timeout_s} s: {now}")
        previous = now
        time.sleep(3.0)


def _figures(supervisor: Supervisor, seen: dict[Any, float]) -> dict[str, Any]:
    with supervisor.sessions() as session:
        rows = session.execute(select(LedgerEvent.event_id, LedgerEvent.accepted_at)).all()
    accepted = {event_id: at for event_id, at in rows}
    on_topic: dict[Any, float] = {}
    for record in read_to_end(supervisor.bootstrap, ["analytics.actions"]):
        event = json.loads(record.value)
        on_topic[event["event_id"]] = record.timestamp / 1000
    from_api = sorted(
        (at - accepted[e].timestamp()) * 1000 for e, at in seen.items() if at and e in accepted
    )
    from_topic = sorted(
        (at - on_topic[str(e)]) * 1000 for e, at in seen.items() if at and str(e) in on_topic
    )
    return {
        "mart_events": len(seen),
        "api_to_mart_samples": len(from_api),
        "api_to_mart_ms_p50": round(statistics.median(from_api), 1) if from_api else None,
        "api_to_mart_ms_p99": _percentile(from_api, 0.99) if from_api else None,
        "topic_to_mart_samples": len(from_topic),
        "topic_to_mart_ms_p50": round(statistics.median(from_topic), 1) if from_topic else None,
        "topic_to_mart_ms_p99": _percentile(from_topic, 0.99) if from_topic else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events/s posted")
    parser.add_argument("--seconds", type=float, default=20.0, help="of traffic")
    parser.add_argument("--poll", type=float, default=0.025, help="s between looks at the mart")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--clients", type=int, default=4, help="threads posting to the API")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.rate, args.seconds, args.poll, args.timeout, args.clients)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
