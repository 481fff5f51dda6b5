"""Replay: fold the whole event log again, with the stream's own engine, in bulk.

The log is read from the input topics (every partition from the start to its high watermark)
or from the database ledger (in acceptance order), for when the embedded broker has lost its
memory. Events are folded by the same ``Engine.apply`` the stream worker runs, one state per
supporter, and ``Engine.tick`` then says what time alone has caused by ``now``. What comes
out: each supporter's score and rung, and every nudge and task the rules decide, with the
same idempotency keys the live stream gives them: the keys are checked against what the
consumers stored, and none should be new.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import LedgerEvent, epoch_millis
from schemas.catalogue import INPUT_TOPICS
from schemas.events import INPUT_EVENT_TYPES, Event, NudgeRequested, TaskCreated
from streams.engagement import (
    MERGED,
    NOT_PARSED,
    Engine,
    RuleDecision,
    SupporterState,
    fold_order,
)
from streams.playbook import SendAction
from streams.scoring import to_datetime, unpack_all

LogRecord = tuple[str, bytes | str, float | None]
"""(topic, value as stored, arrival time in Unix seconds if known)."""


@dataclass
class ReplayResult:
    events: int = 0
    refused: int = 0
    seconds: float = 0.0
    states: dict[str, SupporterState] = field(default_factory=dict)
    scores: dict[str, tuple[float, str, datetime]] = field(default_factory=dict)
    nudge_ids: set[str] = field(default_factory=set)
    task_ids: set[str] = field(default_factory=set)


def final_scores(
    engine: Engine, states: dict[str, SupporterState]
) -> dict[str, tuple[float, str, datetime]]:
    """Each supporter's (score, rung, as of) as engagement.scored last said it: in event time,
    before the timer has had its say."""
    names = engine.playbook.rung_names
    return {
        sid: (
            round(engine.scorer.score(unpack_all(state.actions), state.latest), 6),
            names[state.rung],
            to_datetime(state.latest),
        )
        for sid, state in states.items()
        if state.rung != MERGED and state.latest
    }


def replay(engine: Engine, records: Iterable[LogRecord], now: float) -> ReplayResult:
    """Fold every record without emitting, collecting the keys of every nudge and task the
    rules decide; an event that does not parse or is refused is counted, not fatal.

    ``records`` must come in order of arrival; those that arrived in the same millisecond (a
    batch posted together) are folded in ``fold_order``, as the stream worker folds them.
    """
    result = ReplayResult()
    states = result.states
    decisions: list[RuleDecision] = []
    started = time.perf_counter()
    for topic, value, arrived in in_fold_order(records):
        result.events += 1
        try:
            event: Event = INPUT_EVENT_TYPES[topic].model_validate_json(value)
            sid = event.key()
            state = states.get(sid)
            if state is None:
                state = states[sid] = SupporterState()
            engine.apply(state, event, arrived, emit=False, decisions=decisions)
        except ValueError:  # pydantic's ValidationError and FutureEvent are ValueErrors
            result.refused += 1
    result.scores = final_scores(engine, states)
    for output in engine.tick(states, now):
        if isinstance(output, NudgeRequested):
            result.nudge_ids.add(output.nudge_id)
        elif isinstance(output, TaskCreated):
            result.task_ids.add(output.task_id)
    sends = {rule.name for rule in engine.rules if isinstance(rule.action, SendAction)}
    for decision in decisions:
        assert decision.output_id is not None
        (result.nudge_ids if decision.rule in sends else result.task_ids).add(decision.output_id)
    result.seconds = time.perf_counter() - started
    return result


def in_fold_order(records: Iterable[LogRecord]) -> Iterator[LogRecord]:
    """Re-order each run of records with the same arrival millisecond by ``fold_order``."""
    group: list[tuple[tuple[int, ...], LogRecord]] = []
    group_ms: int | None = None
    for n, record in enumerate(records):
        topic, value, arrived = record
        ms = int(arrived * 1000) if arrived is not None else 0
        if ms != group_ms:
            group.sort(key=itemgetter(0))
            yield from (r for _, r in group)
            group, group_ms = [], ms
        match = _EVENT_TIME.search(
            value if isinstance(value, str) else value.decode(errors="replace")
        )
        event_ms = (
            int(datetime.fromisoformat(match.group(1)).timestamp() * 1000) if match else NOT_PARSED
        )
        group.append((fold_order(ms, event_ms, topic, n), record))
    group.sort(key=itemgetter(0))
    yield from (r for _, r in group)


_EVENT_TIME = re.compile(r'"event_time":"([^"]+)"')


def ledger_records(sessions: sessionmaker[Session]) -> Iterator[LogRecord]:
    """The ledger's input events in order of acceptance, streamed."""
    with sessions() as session:
        rows = session.execute(
            select(LedgerEvent.topic, LedgerEvent.payload, LedgerEvent.accepted_at)
            .where(LedgerEvent.topic.in_(INPUT_TOPICS))
            .order_by(LedgerEvent.accepted_at, LedgerEvent.seq)
            .execution_options(yield_per=10_000)
        )
        for topic, payload, accepted_at in rows:
            yield topic, payload, epoch_millis(accepted_at) / 1000


def topic_records(bootstrap: str) -> list[LogRecord]:
    """Every input topic's records up to the end offsets, in order of arrival (their
    timestamps): read partition by partition, then sorted, so held in memory."""
    return sorted(_topic_records(bootstrap), key=lambda r: r[2] or 0.0)


def _topic_records(bootstrap: str) -> Iterator[LogRecord]:
    from kafka import KafkaConsumer

    from infra.status import topic_counts

    ends = {
        tp: end
        for topic, partitions in topic_counts(bootstrap).items()
        if topic in INPUT_TOPICS
        for tp, end in partitions.items()
        if end > 0
    }
    if not ends:
        return
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="engage-replay",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        consumer.assign(list(ends))
        consumer.seek_to_beginning(*ends)
        remaining = set(ends)
        while remaining:
            for tp, messages in consumer.poll(timeout_ms=1000, max_records=10_000).items():
                end = ends[tp]
                for m in messages:
                    if m.offset < end:
                        yield tp.topic, m.value, m.timestamp / 1000 if m.timestamp > 0 else None
                if messages and messages[-1].offset + 1 >= end:
                    remaining.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()
