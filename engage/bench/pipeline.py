"""The spine's own figures: stream-stage throughput, and API-to-nudge latency at a steady rate."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty
from typing import Any, NamedTuple

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import TypeAdapter
from sqlalchemy import select

from engage.processes import Supervisor
from engage.wiring import engine_for
from infra.db import FollowUpTask, LedgerEvent, Nudge
from infra.settings import Settings
from producers.simulator import generate_events
from schemas.events import INGEST_TO_TOPIC, Event, IngestEvent
from schemas.identity import new_supporter_id
from streams.playbook import DEFAULT_PLAYBOOK
from streams.worker import RECORDS_OUT, StreamWorker

_INGEST: TypeAdapter[Any] = TypeAdapter(IngestEvent)


LIVE_DAYS = 28
"""The span of the bench's traffic: four weeks of a movement, ending as the bench starts."""


def topic_events(count: int, seed: int = 5, now: datetime | None = None) -> list[Arrival]:
    """About ``count`` realistic input events as they appear on the input topics, each with
    the time it reached the broker: a few seconds after it happened, as live traffic does
    (events dated months before they arrive are stale, and the playbook answers none of them).
    The events span the ``LIVE_DAYS`` before ``now``."""
    now = datetime.now(UTC) if now is None else now
    start = now - timedelta(days=LIVE_DAYS + 1)
    raw = generate_events(max(count // 3, 1), seed=seed, start=start, days=LIVE_DAYS)
    rng = random.Random(seed)
    ids: dict[str | None, str] = {}  # an id per email (else phone), given at first sight
    arrivals: list[Arrival] = []
    for payload in raw[:count]:
        parsed = _INGEST.validate_python(payload)
        fields = parsed.model_dump()
        address = parsed.email or parsed.phone
        if address not in ids:
            ids[address] = new_supporter_id(rng)
        fields["supporter_id"] = ids[address]
        event = INGEST_TO_TOPIC[type(parsed)].model_validate(fields)
        arrived = event.event_time.timestamp() + rng.uniform(0.5, 30.0)
        arrivals.append(Arrival(event, int(arrived * 1000)))
    return arrivals


class Arrival(NamedTuple):
    event: Event
    timestamp_ms: int
    """The record's timestamp: when it reached the broker (Kafka's CreateTime)."""


async def _fill(bootstrap: str, arrivals: list[Arrival]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                e.topic,
                value=e.model_dump_json().encode(),
                key=e.key().encode(),
                timestamp_ms=at,
            )
            for e, at in arrivals
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _published() -> dict[str, float]:
    """Records the stream stage has published in this process so far, by topic."""
    return {
        sample.labels["topic"]: sample.value
        for metric in RECORDS_OUT.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


async def _drain(worker: StreamWorker, count: int, timeout_s: float) -> dict[str, float]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    started, wall_started = time.perf_counter(), time.time()
    try:
        while worker.processed < count:
            if task.done():
                task.result()
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"stream stage did {worker.processed}/{count} in {timeout_s}s")
            await asyncio.sleep(0.01)
        finished = time.time()
    finally:
        stop.set()
        await task
    # From the moment the first records were fetched (before they are folded): records wait
    # in the worker's buffer for the co-partitioned topics, and that wait is the stage's time.
    first = worker.first_fetch_at
    assert first is not None
    return {"seconds": finished - first, "join_s": first - wall_started}


def pipeline_throughput(
    bootstrap: str, count: int, timeout_s: float = 300.0, fill: bool = True
) -> dict[str, Any]:
    """Events/s of the stream stage (parse, score, rules, publish outputs, commit) over
    ``count`` input events on the catalogue's input topics, group join excluded: with the
    minimal playbook (the spine's rules, the baseline) and with the default playbook, each
    in its own consumer group over the same events."""
    events = topic_events(count)
    if fill:
        asyncio.run(_fill(bootstrap, events))
    figures: dict[str, Any] = {"pipeline_events": len(events)}
    for label, playbook in (
        ("pipeline_minimal_playbook", DEFAULT_PLAYBOOK.with_name("minimal.yaml")),
        ("pipeline", DEFAULT_PLAYBOOK),
    ):
        engine = engine_for(playbook)
        group = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        worker = StreamWorker(bootstrap, engine, group_id=group)
        before = _published()
        timing = asyncio.run(_drain(worker, len(events), timeout_s))
        after = _published()
        figures[label] = round(len(events) / timing["seconds"])
        figures[f"{label}_join_s"] = round(timing["join_s"], 1)
        # What the figure pays for: outputs an input event, by topic.
        figures[f"{label}_outputs_per_event"] = {
            topic: round((after[topic] - before.get(topic, 0.0)) / len(events), 3)
            for topic in sorted(after)
            if after[topic] > before.get(topic, 0.0)
        }
    figures["pipeline_vs_minimal_playbook"] = round(
        figures["pipeline"] / figures["pipeline_minimal_playbook"], 2
    )
    return figures


def pipeline_processes_throughput(
    bootstrap: str, count: int, processes: int, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Events/s of the stream stage run as ``processes`` worker processes in one consumer
    group (ENGAGE_STREAM_WORKERS), default playbook, over the ``count`` input events
    already on the topics; from the first record any of them fetched to the last folded."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    stop = context.Event()
    group = f"bench-processes-{uuid.uuid4().hex[:8]}"
    children = [
        context.Process(target=_stream_process, args=(bootstrap, group, queue, stop, n))
        for n in range(processes)
    ]
    for child in children:
        child.start()
    folded: dict[int, int] = {}
    first: float | None = None
    last = time.time()
    deadline = time.monotonic() + timeout_s
    try:
        while sum(folded.values()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{processes} workers folded {sum(folded.values())}/{count}")
            try:
                n, fetched_at, processed, at = queue.get(timeout=1.0)
            except Empty:
                continue
            folded[n] = processed
            if fetched_at is not None:
                first = fetched_at if first is None else min(first, fetched_at)
            last = at
    finally:
        stop.set()
        for child in children:
            child.join(timeout=30)
    assert first is not None
    return {f"pipeline_{processes}_processes": round(count / (last - first))}


def _stream_process(bootstrap: str, group: str, queue: Any, stop: Any, n: int) -> None:
    async def main() -> None:
        worker = StreamWorker(bootstrap, engine_for(), group_id=group)
        halt = asyncio.Event()
        task = asyncio.create_task(worker.run(halt))
        reported: tuple[float | None, int] = (None, 0)
        while not stop.is_set():
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
            now = (worker.first_fetch_at, worker.processed)
            if now != reported:
                reported = now
                queue.put((n, *now, time.time()))
        halt.set()
        await task

    asyncio.run(main())


def post_steadily(url: str, token: str, events: list[dict[str, Any]], rate: float) -> int:
    """Post ``events`` at ``rate`` events/s in batches of 25; return how many were accepted."""
    batch, accepted = 25, 0
    interval = batch / rate
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        for n, i in enumerate(range(0, len(events), batch)):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            response = client.post("/v1/events/batch", json={"events": events[i : i + batch]})
            response.raise_for_status()
            accepted += len(response.json()["accepted"])
    return accepted


def latency(seconds: float, rate: float = 500.0, timeout_s: float = 120.0) -> dict[str, Any]:
    """Milliseconds from an event's acceptance by the API (its ledger commit) to the nudge or
    task it caused being written, for traffic posted at a steady ``rate`` events/s, through
    the whole pipeline as `engage up` runs it."""
    with tempfile.TemporaryDirectory(prefix="engage-bench-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True)
        supervisor = Supervisor(settings)
        supervisor.start()
        try:
            wanted = int(seconds * rate)
            # Two recent days of traffic: the playbook answers events that arrive in time.
            start = datetime.now(UTC) - timedelta(days=2, hours=1)
            events = generate_events(max(wanted // 3, 1), seed=9, start=start, days=2)[:wanted]
            token = settings.secret("api_token")
            wait_until_consuming(supervisor, token)
            accepted = post_steadily(supervisor.api_url, token, events, rate)
            samples = _collect_latencies(supervisor, accepted, timeout_s)
        finally:
            supervisor.stop()
    samples.sort()
    return {
        "latency_events": accepted,
        "latency_samples": len(samples),
        "latency_ms_p50": round(statistics.median(samples), 1),
        "latency_ms_p99": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
        "latency_rate": rate,
    }


def wait_until_consuming(supervisor: Supervisor, token: str, timeout_s: float = 60.0) -> None:
    """Post one warm-up signup and wait for its nudge, so group joins are not measured."""
    warm = {
        "type": "supporter.signup",
        "event_time": datetime.now(UTC).isoformat(),
        "email": f"warm-up-{uuid.uuid4().hex[:8]}@example.org",
        "consent_email": True,
    }
    httpx.post(
        f"{supervisor.api_url}/v1/events/batch",
        json={"events": [warm]},
        headers={"Authorization": f"Bearer {token}"},
    ).raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with supervisor.sessions() as session:
            if session.scalar(select(Nudge.nudge_id).limit(1)):
                return
        time.sleep(0.2)
    raise TimeoutError("the pipeline did not answer the warm-up event")


def _collect_latencies(supervisor: Supervisor, accepted: int, timeout_s: float) -> list[float]:
    deadline = time.monotonic() + timeout_s
    samples: list[float] = []
    previous = -1
    while time.monotonic() < deadline:
        with supervisor.sessions() as session:
            accepted_at = dict(
                session.execute(select(LedgerEvent.event_id, LedgerEvent.accepted_at)).all()
            )
            written = [
                *session.execute(select(Nudge.cause_event_id, Nudge.created_at)).all(),
                *session.execute(
                    select(FollowUpTask.cause_event_id, FollowUpTask.created_at)
                ).all(),
            ]
        samples = [
            (created - accepted_at[cause]).total_seconds() * 1000
            for cause, created in written
            if cause in accepted_at
        ]
        if len(samples) == previous and len(accepted_at) >= accepted:
            break  # nothing new for a while: the pipeline has drained
        previous = len(samples)
        time.sleep(2.0)
    return samples
