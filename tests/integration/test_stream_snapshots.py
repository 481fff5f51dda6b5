"""The stream worker restores from its snapshots (streams/snapshots.py), on the embedded broker
and both databases: a restarted worker loads the saved state and folds only what came after
it, ending with the state a full replay of the log gives; an erasure after the snapshot is not
undone; a snapshot from another log is refused; a worker keeps the partitions it keeps across
a rebalance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from infra.broker import EmbeddedBroker
from infra.db import StreamState, StreamStateOffset
from schemas.events import SupporterErased
from streams.engagement import ERASED, Engine, encode_state
from streams.playbook import load_playbook
from streams.replay import replay, topic_records
from streams.snapshots import SnapshotStore
from streams.worker import StreamWorker
from tests.integration.running import Running
from tests.integration.test_stream_worker import (
    SHORT_JOIN,
    T0,
    Producer,
    attended,
    new_sid,
    petition,
    signup,
    wait_committed,
)
from tests.polling import wait_until


def worker(
    broker: EmbeddedBroker, group: str, store: SnapshotStore | None
) -> Running[StreamWorker]:
    return Running(
        StreamWorker(
            broker.bootstrap,
            Engine(load_playbook()),
            group_id=group,
            consumer_settings=SHORT_JOIN,
            snapshots=store,
            snapshot_seconds=3600,  # saved when the worker stops or its partitions are revoked
        )
    )


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[Producer]:
    p = Producer(broker.bootstrap)
    yield p
    p.close()


def states_of(running: Running[StreamWorker], sids: set[str]) -> dict[str, bytes]:
    return {
        sid: encode_state(state)
        for states in running.worker.processor.states.values()
        for sid, state in states.items()
        if sid in sids
    }


def replayed(broker: EmbeddedBroker, sids: set[str]) -> dict[str, bytes]:
    full = replay(Engine(load_playbook()), topic_records(broker.bootstrap), T0.timestamp())
    return {sid: encode_state(s) for sid, s in full.states.items() if sid in sids}


def run_until_committed(
    broker: EmbeddedBroker, producer: Producer, group: str, store: SnapshotStore | None
) -> Running[StreamWorker]:
    running = worker(broker, group, store)
    wait_committed(broker.bootstrap, group, producer.last)
    wait_until("the assignment", lambda: bool(running.worker.last_assignment), 30, 0.05)

    def restored() -> bool:
        folded, to_fold = running.worker.processor.restore_progress()
        return folded == to_fold and not any(running.worker.processor.buffers.values())

    wait_until("the restore", restored, 60, 0.05)
    return running


def test_the_store_saves_changed_states_replaces_after_a_rebuild_and_never_goes_back(
    sessions: sessionmaker[Session],
) -> None:
    store = SnapshotStore(sessions)
    a, b = ("supporter.signup", 1), ("event.attended", 1)
    assert store.save(1, {a: 5, b: 2}, {a: "1:aa", b: "2:bb"}, {"s1": b"x", "s2": b"y"})
    assert store.save(1, {a: 7, b: 2}, {a: "3:cc", b: "2:bb"}, {"s2": b"z"})  # changed only
    assert store.states(1) == {"s1": b"x", "s2": b"z"}
    saved = store.offsets([1, 2])
    assert set(saved) == {1} and saved[1].offsets == {a: 7, b: 2}
    assert saved[1].checks == {a: "3:cc", b: "2:bb"}

    # A worker that lost the partition, behind its new owner: refused, nothing written.
    assert not store.save(1, {a: 6, b: 2}, {}, {"s1": b"old"})
    assert store.states(1)["s1"] == b"x"
    # Rebuilt from another log (its snapshot rejected at load): replaces the rows whole.
    assert store.save(1, {a: 1, b: 0}, {a: "9:99"}, {"s3": b"w"}, True, {a: 7, b: 2})
    assert store.states(1) == {"s3": b"w"}
    assert store.offsets([1])[1].offsets == {a: 1, b: 0}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_restarted_worker_restores_from_its_snapshot_and_equals_a_full_replay(
    broker: EmbeddedBroker, producer: Producer, sessions: sessionmaker[Session]
) -> None:
    store = SnapshotStore(sessions)
    group = f"snapshots-{uuid.uuid4().hex[:8]}"
    kept, erased = new_sid(), new_sid()
    sids = {kept, erased}
    for sid in sids:
        for event in (signup(sid, 0), petition(sid, 1)):
            producer.event(event)

    first = run_until_committed(broker, producer, group, store)
    first.stop()  # its partitions' state is saved as it stops
    with sessions() as session:
        saved = set(session.scalars(select(StreamState.supporter_id)))
        offsets = session.scalar(select(func.count()).select_from(StreamStateOffset))
    assert sids <= saved and offsets

    producer.event(attended(kept, 2))
    producer.event(SupporterErased(event_time=T0, supporter_id=erased))
    with capture_logs() as logs:
        second = run_until_committed(broker, producer, group, store)
    try:
        assigned = second.worker.last_assignment
        assert assigned["loaded"] >= 1
        assert assigned["supporters_loaded"] >= len(sids)
        # The snapshot was as of the committed offsets: no record is folded again.
        assert assigned["replaying"] == 0, logs
        assert states_of(second, sids) == replayed(broker, sids)
        marker = second.worker.processor.states_of(erased)
        assert marker is not None and marker.rung == ERASED
    finally:
        second.stop()
    with sessions() as session:
        row = session.scalar(select(StreamState.state).where(StreamState.supporter_id == erased))
    assert row == encode_state(marker)  # the marker alone

    # A snapshot whose record checks do not match the log (another broker's log) is refused:
    # the next worker rebuilds the partitions from the beginning, and replaces it.
    with sessions.begin() as session:
        session.execute(update(StreamStateOffset).values(check="0:00000000"))
    with capture_logs() as logs:
        third = run_until_committed(broker, producer, group, store)
    try:
        assert third.worker.last_assignment["loaded"] == 0
        assert third.worker.last_assignment["rejected"] > 0
        assert any(e["event"] == "stream.snapshot_rejected" for e in logs)
        assert states_of(third, sids) == replayed(broker, sids)
    finally:
        third.stop()
    with sessions() as session:
        checks = set(session.scalars(select(StreamStateOffset.check)))
    assert "0:00000000" not in checks


def test_a_worker_keeps_the_partitions_it_keeps_when_another_joins(
    broker: EmbeddedBroker, producer: Producer, group_id: str
) -> None:
    sids = {new_sid() for _ in range(8)}
    for sid in sids:
        producer.event(signup(sid, 0))
    first = run_until_committed(broker, producer, group_id, None)
    second: Running[StreamWorker] | None = None
    try:
        before = dict(first.worker.processor.states)
        second = worker(broker, group_id, None)

        def rebalanced() -> bool:
            assert second is not None
            return bool(second.worker.last_assignment.get("partitions"))

        wait_until("the second worker's assignment", rebalanced, 60, 0.1)
        wait_until(
            "the first worker's new assignment",
            lambda: first.worker.last_assignment.get("partitions") == 1,
            60,
            0.1,
        )
        assert first.worker.last_assignment["kept"] == 1
        assert first.worker.last_assignment["replaying"] == 0
        (partition,) = first.worker.processor.assigned
        assert first.worker.processor.states[partition] is before[partition]
        assert second.worker.last_assignment["kept"] == 0
    finally:
        if second is not None:
            second.stop()
        first.stop()
