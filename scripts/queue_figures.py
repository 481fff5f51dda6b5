"""The organisers' queue under simulated traffic, through the whole pipeline as `engage up` runs
it on the embedded broker: tasks created per 1,000 simulated supporters (and where they went:
two groups' queues, the national queue, held out, superseded), and the milliseconds from an
attendance accepted by the API (its ledger commit) to its follow-up task stored, which is when
the queue shows it (the queue is read from the ``tasks`` table at every request).

    python scripts/queue_figures.py [--supporters 1000] [--rate 200] [--json]

Bounded: the traffic is ``--supporters`` people's four weeks, posted at ``--rate`` events/s;
the pipeline gets ``--timeout`` seconds to drain. Only loopback addresses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from consumers.organising.directory import add_group
from engage.bench.pipeline import post_steadily, wait_until_consuming
from engage.processes import Supervisor
from infra.db import FollowUpTask, GroupArea, LedgerEvent
from infra.settings import Settings
from producers.simulator import AREAS, generate_events

GROUPS = {"hackney": "Hackney", "manchester": "Manchester"}
"""The two groups the figures route to: each owns its simulated area's postcode districts."""


def _percentile(samples: list[float], q: float) -> float:
    return round(samples[min(len(samples) - 1, int(len(samples) * q))], 1)


def run(supporters: int, rate: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engage-queue-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True)
        supervisor = Supervisor(settings)
        supervisor.start()
        try:
            now = datetime.now(UTC)
            with supervisor.sessions.begin() as session:
                for group_id, area in GROUPS.items():
                    (districts,) = [a.outward_codes for a in AREAS if a.name == area]
                    add_group(session, group_id, f"{area} group", districts, now)
            # Four recent weeks, ending now: the playbook answers what arrives in time.
            start = now - timedelta(days=28, hours=1)
            events = generate_events(supporters, seed=12, start=start, days=28)
            token = settings.secret("api_token")
            wait_until_consuming(supervisor, token)
            posted_at = time.monotonic()
            accepted = post_steadily(supervisor.api_url, token, events, rate)
            posting_s = time.monotonic() - posted_at
            figures = _drained(supervisor, accepted, timeout_s)
        finally:
            supervisor.stop()
    figures.update(
        supporters=supporters,
        events_posted=accepted,
        rate=rate,
        posting_s=round(posting_s, 1),
    )
    return figures


def _drained(supervisor: Supervisor, accepted: int, timeout_s: float) -> dict[str, Any]:
    """Wait until every accepted event is in the ledger and no new task has appeared for a
    few seconds, then read the figures."""
    deadline = time.monotonic() + timeout_s
    previous = (-1, -1)
    while True:
        with supervisor.sessions() as session:
            now = (
                session.scalar(select(func.count()).select_from(LedgerEvent)) or 0,
                session.scalar(select(func.count()).select_from(FollowUpTask)) or 0,
            )
        if now == previous and now[0] >= accepted:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"not drained after {timeout_s} s: {now}")
        previous = now
        time.sleep(3.0)
    with supervisor.sessions() as session:
        tasks = session.scalars(select(FollowUpTask)).all()
        owner = dict(session.execute(select(GroupArea.district, GroupArea.group_id)).all())
        accepted_at = dict(
            session.execute(
                select(LedgerEvent.event_id, LedgerEvent.accepted_at).where(
                    LedgerEvent.topic == "event.attended"
                )
            ).all()
        )
    supporters_with_a_task = len({t.supporter_id for t in tasks})
    where: Counter[str] = Counter()
    for t in tasks:
        if t.status in ("open", "claimed"):
            where[owner.get(t.district or "", "national")] += 1
        else:
            where[t.status if not t.status_reason else f"{t.status}: {t.status_reason[:30]}"] += 1
    samples = sorted(
        (t.created_at - accepted_at[t.cause_event_id]).total_seconds() * 1000
        for t in tasks
        if t.cause_event_id in accepted_at
    )
    return {
        "tasks": len(tasks),
        "supporters_with_a_task": supporters_with_a_task,
        "tasks_by_kind": dict(Counter(t.kind for t in tasks)),
        "tasks_by_queue_or_state": dict(where),
        "attendance_to_queue_samples": len(samples),
        "attendance_to_queue_ms_p50": round(statistics.median(samples), 1) if samples else None,
        "attendance_to_queue_ms_p99": _percentile(samples, 0.99) if samples else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supporters", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s posted")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.supporters, args.rate, args.timeout)
    figures["tasks_per_1000_supporters"] = round(figures["tasks"] * 1000 / args.supporters, 1)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
