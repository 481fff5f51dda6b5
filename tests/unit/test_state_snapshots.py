"""Snapshots of the stream's state: the encoding folds identically, and a processor killed and
rebalanced at random, restored from its snapshots and the committed offsets, ends with the
state a full replay of the log gives, having emitted every output a replay decides.

The worker's loop is played here without a broker: records delivered in batches, offsets
committed only for what was "acknowledged", snapshots saved to a dict as the SQL store saves
them (``tests/integration/test_stream_snapshots.py`` runs the real worker and store)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalogue import INPUT_TOPICS
from schemas.events import Event, SupporterErased
from streams.engagement import (
    ERASED,
    STATE_VERSION,
    SupporterState,
    decode_state,
    encode_state,
)
from streams.replay import replay
from streams.worker import EngagementProcessor, PendingSnapshot
from tests.unit.engine_events import OTHER, SID, T0, attended, default_engine, fold, signup, unix
from tests.unit.test_order_and_replay import events
from tests.unit.test_stream_processor import Message

SLOTS = ("actions", "area", "fell", "fired", "lapsed", "latest", "rung")


def slots(state: SupporterState) -> tuple[object, ...]:
    return tuple(getattr(state, name) for name in SLOTS)


# --- the encoding -----------------------------------------------------------------------------

erasures = st.builds(
    lambda days: SupporterErased(event_time=T0 + timedelta(days=days), supporter_id=SID),
    st.integers(0, 800),
)
with_erasures = st.one_of(events(), erasures)
histories = st.builds(
    lambda kept, erased: kept + erased,
    st.lists(events(), min_size=1, max_size=20),
    st.lists(erasures, max_size=1),
)
"""Up to 20 events of one supporter, and in about half of the histories an erasure among them."""


@settings(max_examples=40, deadline=None)
@given(
    before=st.lists(events(), max_size=15),
    after=st.lists(with_erasures, max_size=10),
    tick_days=st.one_of(st.none(), st.integers(0, 900)),
)
def test_a_state_encoded_then_decoded_folds_identically(
    before: list[Event], after: list[Event], tick_days: int | None
) -> None:
    engine = default_engine()
    state = fold(before)
    if tick_days is not None:  # what time did (lapses, a fallen rung) is kept too
        engine.tick({SID: state}, unix(tick_days))
    copy = decode_state(encode_state(state))
    assert slots(copy) == slots(state)

    outputs = []
    for s in (state, copy):
        caused = []
        for event in after:
            try:
                caused += [o.model_dump_json() for o in engine.apply(s, event)]
            except ValueError:
                caused.append("refused")
        caused += [o.model_dump_json() for o in engine.tick({SID: s}, unix(1000))]
        outputs.append(caused)
    assert outputs[0] == outputs[1]
    assert encode_state(copy) == encode_state(state)


def test_the_encoding_is_versioned_and_checked() -> None:
    data = encode_state(fold([signup(0), attended(1)]))
    assert data[0] == STATE_VERSION
    with pytest.raises(ValueError, match="version"):
        decode_state(bytes([STATE_VERSION + 1]) + data[1:])
    with pytest.raises(ValueError, match="length"):
        decode_state(data[:-1])


def test_an_erased_supporter_is_encoded_as_the_marker_alone() -> None:
    state = fold([signup(0, area="Hackney"), attended(1)])
    default_engine().apply(state, SupporterErased(event_time=T0, supporter_id=SID))
    copy = decode_state(encode_state(state))
    assert (copy.rung, copy.actions, copy.fired, copy.area, copy.latest) == (
        ERASED,
        b"",
        b"",
        None,
        0,
    )
    assert default_engine().apply(copy, attended(3)) == []
    assert copy.rung == ERASED


# --- kills and rebalances against a full replay -----------------------------------------------


@dataclass
class Store:
    """The SQL store's behaviour: states upserted (or replaced), offsets of the last save."""

    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)

    def save(self, snap: PendingSnapshot) -> None:
        if snap.replace:
            self.states = {}
        self.states.update(snap.states)
        self.offsets = dict(snap.offsets)


@dataclass
class Run:
    """One partition's log, a worker's consumer positions and commits, what was published."""

    log: dict[str, list[Message]]
    store: Store = field(default_factory=Store)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    published: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    position: dict[str, int] = field(default_factory=dict)
    processor: EngagementProcessor = field(
        default_factory=lambda: EngagementProcessor(default_engine())
    )
    restored_from_snapshot: int = 0

    def assign(self) -> None:
        """A (re)assignment: the processor keeps its state, loads the snapshot, or rebuilds."""
        tps = [(t, 0) for t in self.log]
        committed = {tp: self.committed.get(tp, 0) for tp in tps}
        snapshots = {}
        saved = self.store.offsets
        if (
            not self.processor.keepable(tps, committed)
            and saved
            and all(o <= committed.get(tp, 0) for tp, o in saved.items())
        ):
            states = {sid: decode_state(b) for sid, b in self.store.states.items()}
            snapshots[0] = (dict(self.store.offsets), states)
            self.restored_from_snapshot += 1
        start = self.processor.reset(tps, committed, snapshots)
        self.position = {t: start[(t, 0)] for t in self.log}

    def batch(self, counts: dict[str, int], acked: bool) -> None:
        """Fetch up to ``counts`` records of each topic, fold, and (if ``acked``) publish the
        outputs and commit the offsets the processor says are done."""
        for topic, n in counts.items():
            start = self.position[topic]
            messages = self.log[topic][start : start + n]
            self.processor.add(topic, 0, messages)
            self.position[topic] = start + len(messages)
        caught_up = {(t, 0) for t in self.log if self.position[t] >= len(self.log[t])}
        outputs = [r for _, r in self.processor.release_all(caught_up)]
        if acked:
            self.published += outputs
            self.committed = dict(self.processor.done)

    def snapshot(self) -> None:
        snap = self.processor.take_snapshot(0, self.committed)
        if snap is not None:
            self.store.save(snap)
            self.processor.saved(snap)

    def kill(self) -> None:
        self.processor = EngagementProcessor(default_engine())
        self.assign()


def log_of(history: list[Event], lateness: list[int]) -> dict[str, list[Message]]:
    """The events on their topics, in arrival order (the relay's order): each arrives
    ``lateness`` seconds after it happened, and after the one before it."""
    log: dict[str, list[Message]] = {t: [] for t in INPUT_TOPICS}
    arrived = 0
    ordered = sorted(history, key=lambda e: e.event_time)
    for event, late in zip(ordered, lateness, strict=False):
        arrived = max(arrived + 1, int((event.event_time.timestamp() + late) * 1000))
        messages = log[event.topic]
        value = event.model_dump_json().encode()
        messages.append(Message(len(messages), event.key().encode(), value, arrived))
    return {t: m for t, m in log.items() if m}


steps = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("snapshot"), st.just(0), st.just(True)),
        st.tuples(st.just("kill"), st.just(0), st.just(True)),
        st.tuples(st.just("rebalance"), st.just(0), st.just(True)),
    ),
    min_size=6,
    max_size=16,
)


@settings(max_examples=80, deadline=None)
@given(
    history=histories,
    lateness=st.lists(st.sampled_from([0, 60, 3600, 100 * 3600]), min_size=21, max_size=21),
    script=steps,
)
def test_restored_state_equals_a_full_replay_after_kills_and_rebalances(
    history: list[Event], lateness: list[int], script: list[tuple[str, int, bool]]
) -> None:
    run = Run(log_of(history, lateness))
    run.assign()
    for step, n, acked in script:
        if step == "batch":
            run.batch(dict.fromkeys(run.log, n), acked)
            if not acked:  # the worker died before its outputs were acknowledged
                run.kill()
        elif step == "snapshot":
            run.snapshot()
        elif step == "kill":
            run.kill()
        else:
            run.assign()  # the eager protocol: revoked, then assigned the same partition
    while any(run.position[t] < len(run.log[t]) for t in run.log) or any(
        run.processor.buffers.values()
    ):
        run.batch(dict.fromkeys(run.log, 1000), True)
    run.snapshot()
    note_event(f"restored from a snapshot: {min(run.restored_from_snapshot, 2)}+")

    records = [
        (topic, m.value, m.timestamp / 1000)
        for topic, messages in run.log.items()
        for m in messages
        if m.value is not None
    ]
    records.sort(key=lambda r: r[2] or 0)
    full = replay(default_engine(), records, T0.timestamp())
    live = run.processor.states.get(0, {})
    assert {sid: encode_state(s) for sid, s in live.items()} == {
        sid: encode_state(s) for sid, s in full.states.items()
    }
    # The last snapshot holds the same state: a restore from it needs nothing from the log.
    assert run.store.states == {sid: encode_state(s) for sid, s in full.states.items()}
    # Every nudge and task a replay decides was published, whatever was lost uncommitted.
    keys = set()
    for topic, _, value in run.published:
        if topic in ("nudge.requested", "task.created"):
            body = json.loads(value)
            keys.add(body.get("nudge_id") or body.get("task_id"))
    note_event(f"nudges and tasks decided: {min(len(full.nudge_ids | full.task_ids), 2)}+")
    assert full.nudge_ids | full.task_ids <= keys


def test_a_kept_partition_is_not_restored_and_a_moved_one_is() -> None:
    run = Run(log_of([signup(0), attended(1), attended(2)], [0, 0, 0]))
    run.assign()
    run.batch(dict.fromkeys(run.log, 10), acked=True)
    states = run.processor.states[0]

    run.assign()  # same partition, same committed offsets: kept as it is
    assert run.processor.states[0] is states
    assert run.processor.restore_until == {}

    run.snapshot()
    run.kill()  # a new owner: loads the snapshot, folds nothing
    assert run.restored_from_snapshot == 1
    assert run.processor.restore_until == {}
    assert {s: encode_state(v) for s, v in run.processor.states[0].items()} == {
        s: encode_state(v) for s, v in states.items()
    }


def test_an_erasure_after_the_snapshot_is_not_undone_by_the_restore() -> None:
    other = SupporterErased(event_time=T0 - timedelta(days=1), supporter_id=OTHER)
    run = Run(log_of([other, signup(0), attended(1)], [0, 0, 0]))
    run.assign()
    run.batch(dict.fromkeys(run.log, 10), acked=True)
    run.snapshot()  # the supporter's actions are in the snapshot
    assert decode_state(run.store.states[SID]).actions
    erase = SupporterErased(event_time=T0 + timedelta(days=3), supporter_id=SID)
    arrived = int((erase.event_time.timestamp()) * 1000)
    run.log[erase.topic].append(Message(1, SID.encode(), erase.model_dump_json().encode(), arrived))
    run.batch(dict.fromkeys(run.log, 10), acked=True)  # the erasure, committed, not saved
    run.kill()
    assert decode_state(run.store.states[SID]).actions  # loaded with the actions...
    run.batch(dict.fromkeys(run.log, 10), acked=True)

    assert run.restored_from_snapshot == 1
    assert run.processor.states[0][SID].rung == ERASED  # folded again from the snapshot's offsets
    run.snapshot()
    assert decode_state(run.store.states[SID]).rung == ERASED
    assert decode_state(run.store.states[SID]).actions == b""
