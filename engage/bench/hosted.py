"""The stream stage's per-record work for another host (Quix Streams, faust) to run: parse a
record as ``streams.worker.EngagementProcessor`` does, fold it with the same pure
``Engine.apply``, and encode what it causes as the stage does; the host keeps the state.

Only the order and the keeping of state differ from the stage: each host folds records in the
order it delivers them, and loads and stores a supporter's state through its own store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from engage.bench.raw import create_topic, partition_count
from infra.kafka import Record, dead_letter
from infra.topics import admin_client
from schemas.catalogue import INPUT_TOPICS
from schemas.events import (
    INPUT_EVENT_TYPES,
    DeadLetter,
    EngagementScored,
    LadderChanged,
    NudgeRequested,
    TaskCreated,
)
from streams.engagement import Engine, RefusedEvent, SupporterState

OUTPUT_TOPICS: tuple[str, ...] = tuple(
    model.topic
    for model in (EngagementScored, LadderChanged, NudgeRequested, TaskCreated, DeadLetter)
)
"""The topics the fold writes: scores, ladder changes, nudge and task requests, dead letters."""


def fold_record(
    engine: Engine,
    host: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int,
    load: Callable[[str], SupporterState | None],
    store: Callable[[str, SupporterState], None],
) -> list[Record]:
    """What one input record causes, as the stage encodes it: (topic, key, value) each.

    ``load`` gives the supporter's state (None: a new supporter), ``store`` keeps it after
    the fold. Bad input (a record that does not parse, an event the engine refuses) is a dead
    letter naming ``host``, with the reason, as the stage's are."""
    try:
        event = INPUT_EVENT_TYPES[topic].model_validate_json(value or b"")
    except ValidationError as exc:
        return [_refused(host, topic, partition, offset, key, value, exc)]
    sid = event.key()
    state = load(sid)
    if state is None:
        state = SupporterState()
    arrived = timestamp_ms / 1000 if timestamp_ms > 0 else None
    try:
        caused = engine.apply(state, event, arrived, True)
    except RefusedEvent as exc:
        return [_refused(host, topic, partition, offset, key, value, exc)]
    store(sid, state)
    out_key = sid.encode()
    return [(out.topic, out_key, out.model_dump_json().encode()) for out in caused]


def _refused(
    host: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    exc: ValueError,
) -> Record:
    return dead_letter(host, topic, partition, offset, key, value, f"{type(exc).__name__}: {exc}")


def output_topics(bootstrap: str, prefix: str) -> dict[str, str]:
    """The peer's output topics (``prefix`` + the stage's), created like the inputs when missing
    (Tansu creates no topic by itself)."""
    partitions = partition_count(bootstrap, INPUT_TOPICS[0])
    names = {topic: f"{prefix}{topic}" for topic in OUTPUT_TOPICS}
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    for name in names.values():
        if name not in existing:
            create_topic(bootstrap, name, partitions)
    return names


def peer_figures(name: str, result: Mapping[str, Any], pipeline: float) -> dict[str, Any]:
    """A peer's figures for `engage bench`: events/s, its join, outputs per input event by
    topic (beside the stage's ``pipeline_outputs_per_event``), and the stage's rate over it."""
    events = result["events"]
    return {
        name: result["events_per_s"],
        f"{name}_join_s": result["join_s"],
        f"{name}_outputs_per_event": {
            topic: round(n / events, 3) for topic, n in result["outputs"].items()
        },
        f"pipeline_vs_{name}": round(pipeline / result["events_per_s"], 2),
    }


def pipeline_peers(bootstrap: str, count: int) -> dict[str, dict[str, Any]]:
    """Quix Streams and faust each folding the ``count`` input records already on the topics
    (each in its own consumer group), one after the other."""
    from engage.bench.faust_fold import run_faust_fold
    from engage.bench.quix_fold import run_quix_fold

    return {
        "quix_fold": run_quix_fold(bootstrap, count),
        "faust_fold": run_faust_fold(bootstrap, count),
    }
