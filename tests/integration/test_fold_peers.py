"""The bench's peers of the stream stage (engage/bench/quix_fold.py, faust_fold.py) fold
correctly: over a few hundred events on the embedded broker, each host publishes exactly the
records the stage's ``EngagementProcessor`` makes of the same records.

Quix aligns co-partitioned topics by record timestamp, as the stage does, so its outputs are
compared with the stage's own fold order. faust has no order across topics: its outputs are
compared with the processor fed the records in the order faust folded them (it writes that
order down).

The catalogue's topics are shared by the session's tests: the events here are dated a month
ahead (their arrivals after every other test's records, so no earlier record holds them back
in Quix's alignment), their supporters are new, and only their outputs are compared. The
hosts fold every record on the input topics, the other tests' too.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engage.bench.faust_fold import run_faust_fold
from engage.bench.hosted import OUTPUT_TOPICS
from engage.bench.pipeline import Arrival, _fill, topic_events
from engage.bench.quix_fold import run_quix_fold
from engage.wiring import engine_for
from infra.broker import EmbeddedBroker
from infra.kafka import Record
from infra.topic_reader import end_offsets, read_to_end
from schemas.catalogue import INPUT_TOPICS
from streams.worker import EngagementProcessor

EVENTS = 300
SESSION_TIMEOUT_MS = 6_000  # Tansu answers a new group's first join after half of it


@pytest.fixture(scope="module")
def filled(broker: EmbeddedBroker) -> tuple[set[bytes], int, dict[tuple[str, int, int], Any]]:
    """Our events on the input topics, one arrival time each, produced in arrival order;
    returns our supporters' keys, how many records the input topics hold, and every input
    record by (topic, partition, offset)."""
    later = datetime.now(UTC) + timedelta(days=30)
    arrivals = sorted(
        topic_events(EVENTS, seed=random.randrange(2**31), now=later), key=lambda a: a[1]
    )
    distinct: list[Arrival] = []
    for event, at in arrivals:
        at = max(at, distinct[-1].timestamp_ms + 1) if distinct else at
        distinct.append(Arrival(event, at))
    asyncio.run(_fill(broker.bootstrap, distinct))
    ours = {event.key().encode() for event, _ in distinct}
    total = sum(sum(ends.values()) for ends in end_offsets(broker.bootstrap, INPUT_TOPICS).values())
    records = {
        (r.topic, r.partition, r.offset): r for r in read_to_end(broker.bootstrap, INPUT_TOPICS)
    }
    assert len(records) == total
    return ours, total, records


def _outputs(bootstrap: str, prefix: str, ours: set[bytes]) -> Counter[Record]:
    """Our supporters' records on the output topics named with ``prefix``, by stage topic."""
    topics = {f"{prefix}{topic}": topic for topic in OUTPUT_TOPICS}
    return Counter(
        (topics[r.topic], r.key, r.value) for r in read_to_end(bootstrap, topics) if r.key in ours
    )


def _folded(records: Iterable[Any], ours: set[bytes], in_order: bool) -> Counter[Record]:
    """What the stage's processor makes of ``records``: in its own fold order (every record
    handed over before any is released), or ``in_order``, one record at a time."""
    processor = EngagementProcessor(engine_for())
    outputs: list[Record] = []
    if in_order:
        for record in records:
            outputs += processor.process(record.topic, record.partition, [record])
    else:
        by_tp: dict[tuple[str, int], list[Any]] = {}
        for record in records:
            by_tp.setdefault((record.topic, record.partition), []).append(record)
        for (topic, partition), batch in by_tp.items():
            processor.add(topic, partition, batch)
        outputs = [record for _, record in processor.release_all(None)]
    return Counter(output for output in outputs if output[1] in ours)


def test_quix_folds_as_the_stage_does(
    broker: EmbeddedBroker, filled: tuple[set[bytes], int, dict[tuple[str, int, int], Any]]
) -> None:
    ours, total, records = filled
    prefix = f"test.quix.{uuid.uuid4().hex[:8]}."
    figures = run_quix_fold(
        broker.bootstrap,
        total,
        prefix=prefix,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        timeout_s=120,
    )
    assert figures["events"] == total
    published = _outputs(broker.bootstrap, prefix, ours)
    expected = _folded(sorted(records.values(), key=lambda r: r.offset), ours, in_order=False)
    assert {topic for topic, _, _ in expected} >= {"engagement.scored", "nudge.requested"}
    assert published == expected


def test_faust_folds_as_the_stage_does_in_its_order(
    broker: EmbeddedBroker,
    filled: tuple[set[bytes], int, dict[tuple[str, int, int], Any]],
    tmp_path: Path,
) -> None:
    ours, total, records = filled
    prefix = f"test.faust.{uuid.uuid4().hex[:8]}."
    order_file = tmp_path / "order.txt"
    figures = run_faust_fold(
        broker.bootstrap,
        total,
        prefix=prefix,
        order_file=order_file,
        session_timeout_s=SESSION_TIMEOUT_MS / 1000,
        timeout_s=120,
    )
    assert figures["events"] == total
    order = [line.split() for line in order_file.read_text().splitlines()]
    assert len(order) == total
    in_order = [records[(topic, int(p), int(offset))] for topic, p, offset in order]
    published = _outputs(broker.bootstrap, prefix, ours)
    expected = _folded(in_order, ours, in_order=True)
    assert {topic for topic, _, _ in expected} >= {"engagement.scored", "nudge.requested"}
    assert published == expected
