"""Replay: fold the whole event log again, with the stream's own engine, in bulk.

The log is read from the input topics (every partition from the start to its high watermark)
or from the database ledger (in acceptance order), for when the embedded broker has lost its
memory. Events are folded by the same ``Engine.apply`` the stream worker runs, one state per
supporter, and ``Engine.tick`` then says what time alone has caused by ``now``. What comes
out: each supporter's score and rung, and every nudge and task the rules decide, with the
same idempotency keys the live stream gives them: the keys are checked against what the
consumers stored, and none should be new. A supporter erased (supporter.erased) comes out
with no score and none of their nudges or tasks, whatever the log held before the erasure.
"""

from __future__ import annotations

import multiprocessing
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import LedgerEvent, epoch_millis
from schemas.catalogue import INPUT_TOPICS
from schemas.events import (
    INPUT_EVENT_TYPES,
    EngagementScored,
    Event,
    NudgeRequested,
    TaskCreated,
)
from streams.engagement import (
    ERASED,
    NOT_PARSED,
    Engine,
    RuleDecision,
    SupporterState,
    fold_order,
)
from streams.playbook import Playbook, SendAction
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
        if state.rung >= 0 and state.latest
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
    deciders: list[str] = []  # the supporter of each decision, to drop those erased since
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
            continue
        if len(decisions) > len(deciders):
            deciders.extend([sid] * (len(decisions) - len(deciders)))
    result.scores = final_scores(engine, states)
    for output in engine.tick(states, now):
        if isinstance(output, NudgeRequested):
            result.nudge_ids.add(output.nudge_id)
        elif isinstance(output, TaskCreated):
            result.task_ids.add(output.task_id)
    sends = {rule.name for rule in engine.rules if isinstance(rule.action, SendAction)}
    erased = {sid for sid, state in states.items() if state.rung == ERASED}
    for decision, sid in zip(decisions, deciders, strict=True):
        assert decision.output_id is not None
        if sid in erased:
            continue  # an erased supporter's outputs are not decided again
        (result.nudge_ids if decision.rule in sends else result.task_ids).add(decision.output_id)
    result.seconds = time.perf_counter() - started
    return result


def in_fold_order(records: Iterable[LogRecord]) -> Iterator[LogRecord]:
    """Re-order each run of records with the same arrival millisecond by ``fold_order``."""
    group: list[tuple[int, LogRecord]] = []
    group_ms: int | None = None
    for n, record in enumerate(records):
        arrived = record[2]
        ms = int(arrived * 1000) if arrived is not None else 0
        if ms != group_ms:
            yield from _sorted(group, group_ms or 0)
            group, group_ms = [], ms
        group.append((n, record))
    yield from _sorted(group, group_ms or 0)


def _sorted(group: list[tuple[int, LogRecord]], ms: int) -> list[LogRecord]:
    if len(group) == 1:
        return [group[0][1]]
    keyed = []
    for n, record in group:
        topic, value, _ = record
        match = _EVENT_TIME.search(
            value if isinstance(value, str) else value.decode(errors="replace")
        )
        event_ms = (
            int(datetime.fromisoformat(match.group(1)).timestamp() * 1000) if match else NOT_PARSED
        )
        keyed.append((fold_order(ms, event_ms, topic, n), record))
    keyed.sort(key=itemgetter(0))
    return [record for _, record in keyed]


_EVENT_TIME = re.compile(r'"event_time":"([^"]+)"')


def ledger_records(
    sessions: sessionmaker[Session], shard: int = 0, shards: int = 1
) -> Iterator[LogRecord]:
    """The ledger's input events in order of acceptance, streamed; with ``shards``, only
    those of the supporters in ``shard`` (by the last hex digit of the supporter id)."""
    with sessions() as session:
        query = select(LedgerEvent.topic, LedgerEvent.payload, LedgerEvent.accepted_at).where(
            LedgerEvent.topic.in_(INPUT_TOPICS)
        )
        if shards > 1:
            # Supporter ids end in a hex digit of a keyed hash: an even split, in SQL.
            last = func.substr(LedgerEvent.key, func.length(LedgerEvent.key))
            query = query.where(last.in_([d for d in _HEX if int(d, 16) % shards == shard]))
        rows = session.execute(
            query.order_by(LedgerEvent.accepted_at, LedgerEvent.seq).execution_options(
                yield_per=10_000
            )
        )
        for topic, payload, accepted_at in rows:
            yield topic, payload, epoch_millis(accepted_at) / 1000


_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Source:
    """Where a sharded replay reads: the ledger at a database URL, or the topics."""

    database_url: str | None = None
    bootstrap: str | None = None

    def records(self, shard: int, shards: int) -> Iterable[LogRecord]:
        if self.bootstrap is not None:
            return topic_records(self.bootstrap, shard, shards)
        from infra.db import make_engine, session_factory

        assert self.database_url is not None
        return ledger_records(session_factory(make_engine(self.database_url)), shard, shards)


def replay_sharded(source: Source, playbook: Playbook, now: float, shards: int) -> ReplayResult:
    """``replay`` split by supporter over ``shards`` processes (a supporter's events all go
    to one), merged; what every process keeps is the same as one process keeps."""
    started = time.perf_counter()
    if shards <= 1:
        return replay(Engine(playbook), source.records(0, 1), now)
    context = multiprocessing.get_context("fork")
    with context.Pool(shards) as pool:
        parts = pool.starmap(
            _replay_shard, [(source, playbook, now, shard, shards) for shard in range(shards)]
        )
    merged = ReplayResult()
    for part in parts:
        merged.events += part.events
        merged.refused += part.refused
        merged.scores.update(part.scores)
        merged.nudge_ids |= part.nudge_ids
        merged.task_ids |= part.task_ids
    merged.seconds = time.perf_counter() - started
    return merged


def _replay_shard(
    source: Source, playbook: Playbook, now: float, shard: int, shards: int
) -> ReplayResult:
    result = replay(Engine(playbook), source.records(shard, shards), now)
    result.states = {}  # the parent needs the scores and keys, not the states
    return result


@dataclass(frozen=True)
class Stored:
    """What the consumers stored: each supporter's (score, rung), and the nudges' and tasks'
    idempotency keys."""

    scores: Mapping[str, tuple[float, str]]
    nudge_ids: Set[str]
    task_ids: Set[str]


def compare_with_stored(
    result: ReplayResult,
    stored: Stored,
    half_life_days: float,
    repair: Callable[[list[EngagementScored]], object] | None = None,
) -> dict[str, Any]:
    """How the replay's scores, nudges and tasks compare with what the consumers stored.

    With ``repair``, the scores that differ (or are missing) are handed to it as
    engagement.scored events, as of each supporter's newest action, to be stored.
    """
    differ = sorted(
        sid
        for sid, (score, rung, _) in result.scores.items()
        if stored.scores.get(sid) != (score, rung)
    )
    if repair is not None and differ:
        repair([_repaired_score(result, sid, half_life_days) for sid in differ])
    return {
        "scores_identical": len(result.scores) - len(differ),
        "scores_different_or_missing": len(differ),
        "scores_repaired": len(differ) if repair is not None else 0,
        "example_differences": differ[:5],
        "nudges_decided": len(result.nudge_ids),
        "nudges_new": len(result.nudge_ids - stored.nudge_ids),
        "tasks_decided": len(result.task_ids),
        "tasks_new": len(result.task_ids - stored.task_ids),
    }


def _repaired_score(result: ReplayResult, sid: str, half_life_days: float) -> EngagementScored:
    score, rung, as_of = result.scores[sid]
    return EngagementScored(
        event_id=uuid.uuid4(),
        event_time=as_of,
        supporter_id=sid,
        score=score,
        rung=rung,
        cause_event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"replay:{sid}"),
        half_life_days=half_life_days,
    )


def replay_report(
    source: str,
    result: ReplayResult,
    stored: Stored,
    half_life_days: float,
    repair: Callable[[list[EngagementScored]], object] | None = None,
) -> dict[str, Any]:
    """What `engage replay` prints: the fold's figures, then ``compare_with_stored``'s."""
    return {
        "source": source,
        "events": result.events,
        "refused": result.refused,
        "supporters": len(result.scores),
        "seconds": round(result.seconds, 2),
        "events_per_s": round(result.events / result.seconds) if result.seconds else None,
        **compare_with_stored(result, stored, half_life_days, repair),
    }


def topic_records(bootstrap: str, shard: int = 0, shards: int = 1) -> list[LogRecord]:
    """Every input topic's records up to the end offsets, in order of arrival (their
    timestamps): read partition by partition, then sorted, so held in memory. With
    ``shards``, only the partition numbers in ``shard`` (a supporter's events share one)."""
    return sorted(_topic_records(bootstrap, shard, shards), key=lambda r: r[2] or 0.0)


def _topic_records(bootstrap: str, shard: int, shards: int) -> Iterator[LogRecord]:
    from infra.topic_reader import read_to_end

    for m in read_to_end(
        bootstrap,
        INPUT_TOPICS,
        partition_filter=lambda p: p % shards == shard,
        client_id="engage-replay",
    ):
        yield m.topic, m.value, m.timestamp / 1000 if m.timestamp > 0 else None
