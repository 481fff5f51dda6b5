"""Posting the simulated traffic through the ingest client, in batches, at a rate."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from producers.client import IngestClient
from producers.simulator.journeys import generate_events


@dataclass
class TypeCounts:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass
class SimulationReport:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    by_type: dict[str, TypeCounts] = field(default_factory=dict)
    seconds: float = 0.0
    sample_errors: list[str] = field(default_factory=list)  # the first few rejections


def simulate(
    client: IngestClient,
    supporters: int,
    seed: int,
    batch_size: int = 500,
    rate: float | None = None,
    progress: bool = True,
    *,
    start: datetime | None = None,
    days: int = 28,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SimulationReport:
    """Generate the traffic and post it in batches of ``batch_size``, at most ``rate`` events/s."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    events = generate_events(supporters, seed, start, days)
    report = SimulationReport(by_type={})
    type_of = {event["event_id"]: event["type"] for event in events}
    for event_type in Counter(type_of.values()):
        report.by_type[event_type] = TypeCounts()
    began = clock()
    with Progress(
        TextColumn("[bold]simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("events", total=len(events))
        for offset in range(0, len(events), batch_size):
            batch = events[offset : offset + batch_size]
            if rate is not None:
                wait = began + offset / rate - clock()
                if wait > 0:
                    sleep(wait)
            result = client.post_batch(batch)
            report.sent += len(batch)
            for event in batch:
                report.by_type[event["type"]].sent += 1
            for event_id in result.accepted:
                report.accepted += 1
                _counts(report, type_of.get(event_id, "unknown")).accepted += 1
            for event_id in result.duplicates:
                report.duplicates += 1
                _counts(report, type_of.get(event_id, "unknown")).duplicates += 1
            for rejection in result.rejected:
                report.rejected += 1
                inside = 0 <= rejection.index < len(batch)
                event_type = str(batch[rejection.index]["type"]) if inside else "unknown"
                _counts(report, event_type).rejected += 1
                if len(report.sample_errors) < 20:
                    reasons = "; ".join(f"{e.field}: {e.reason}" for e in rejection.errors)
                    report.sample_errors.append(
                        f"{event_type} #{offset + rejection.index}: {reasons}"
                    )
            bar.advance(task, len(batch))
    report.seconds = clock() - began
    return report


def _counts(report: SimulationReport, event_type: str) -> TypeCounts:
    return report.by_type.setdefault(event_type, TypeCounts())
