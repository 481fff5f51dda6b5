"""A changelog topic against snapshots in the database, on the embedded broker (issue 14, item 1).

The stream's per-supporter state could be kept where a restore reads it back in one pass in two
ways: a changelog (a topic keyed by supporter id, one record per state change, as Kafka Streams,
faust and Quix Streams keep one), or periodic snapshots in the database (streams/snapshots.py,
what the worker does). Tansu's memory engine never compacts, so a changelog on it keeps every
write. This measures both, for the same states:

- the states come from folding the synthetic history (``engage.bench.state.synthetic_log``,
  about 3.8 events a supporter) with the stream's own Engine and the shipped playbook; after
  each folded event the supporter's state, encoded as the snapshots encode it
  (``streams.engagement.encode_state``), is written to the changelog, keyed by supporter id,
  on the partition the relay's partitioner gives that key;
- ``changelog_restore_s``: one aiokafka consumer reads every partition of the changelog from
  offset 0 to its high watermark, keeps the last value per key and decodes them;
- ``one_per_key_restore_s``: the same read of a topic holding one record per supporter (the
  latest state): what a fully compacted changelog would hold;
- ``snapshot_save_s`` / ``snapshot_load_s``: the same states saved in a ``SnapshotStore`` on a
  temporary SQLite file (a partition a transaction, as the worker saves), then loaded as the
  worker loads them (saved offsets, each partition's states, decoded); the worker's check of
  the record before each saved offset (one fetch per topic-partition) is not counted.

The three restores run in turn ``--runs`` times (3): each ``..._s`` is the median, ``..._runs_s``
every run; each restore is checked against the folded states, byte for byte.

Then the history doubles (the same supporters, as many events again, appended to the same
changelog and upserted into the same snapshot) and everything is measured again (``..._2x``).
Apache Kafka is not run here: ``kafka_estimate_not_measured`` is an estimate from the
one-record-per-key figures, labelled as such.

Usage: ``.venv/bin/python scripts/changelog_growth.py [--supporters 100000] [--partitions 4]``
(JSON on stdout; about 2 minutes at the defaults on 2 shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2
from sqlalchemy import func, select

from engage.bench.state import synthetic_log
from engage.wiring import engine_for
from infra.broker import EmbeddedBroker
from infra.db import StreamState, make_engine, migrate, session_factory
from infra.topics import admin_client
from schemas.events import INPUT_EVENT_TYPES
from streams.engagement import Engine, SupporterState, decode_state, encode_state
from streams.snapshots import SnapshotStore

CHANGELOG = "engage-stream-state-changelog"
"""A name in the style of Kafka Streams' ``<application.id>-<store>-changelog``."""
INPUT = "supporter.signup"
"""The input topic the snapshot's offsets are saved against (the bench saves one offset a
partition: the changelog records written so far, so each save is ahead of the last)."""


def partition_of(key: bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner (the relay's) gives ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (the broker: Tansu keeps its log in memory)."""
    with open(f"/proc/{pid}/statm") as statm:
        return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def file_bytes(path: Path) -> int:
    """The SQLite database's size on disk, with its write-ahead log if it has one."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def create_topic(bootstrap: str, name: str, partitions: int) -> bool:
    """Create ``name`` with ``cleanup.policy=compact`` as Kafka Streams creates a changelog;
    whether the broker took that setting (Tansu's memory engine never compacts either way)."""
    admin = admin_client(bootstrap)
    try:
        try:
            admin.create_topics(
                [NewTopic(name, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
            )
            return True
        except Exception:  # the setting refused: the topic plain, as a changelog can live
            admin.create_topics([NewTopic(name, partitions, 1)])
            return False
    finally:
        admin.close()


def folded_states(
    engine: Engine, states: dict[str, SupporterState], supporters: int, seed: int
) -> Iterator[tuple[str, bytes]]:
    """Fold the synthetic history into ``states``; after each event, the supporter's id and
    encoded state (one changelog record per state change)."""
    for topic, value, arrived in synthetic_log(supporters, seed):
        event = INPUT_EVENT_TYPES[topic].model_validate_json(value)
        sid = event.key()
        state = states.get(sid)
        if state is None:
            state = states[sid] = SupporterState()
        engine.apply(state, event, arrived, emit=False)
        yield sid, encode_state(state)


def write_changelog(
    bootstrap: str, topic: str, records: Iterable[tuple[str, bytes]], partitions: int
) -> dict[str, Any]:
    """Produce ``records`` to ``topic`` keyed by supporter id, acks=all (confluent-kafka:
    kafka-python's pure-Python producer would make the write, not the restore, the cost of
    this program); the count, the key and value bytes, and the seconds."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "engage-bench-changelog",
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 256 * 1024,
        }
    )
    failed: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    count = size = 0
    started = time.perf_counter()
    for sid, value in records:
        key = sid.encode()
        while True:
            try:
                producer.produce(
                    topic, value, key, partition_of(key, partitions), on_delivery=delivered
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        count += 1
        size += len(key) + len(value)
    if producer.flush(300) or failed:
        raise RuntimeError(f"changelog write failed: {failed[:3]}")
    return {"records": count, "bytes": size, "seconds": time.perf_counter() - started}


async def _read_back(
    bootstrap: str, topic: str, partitions: int, timeout_s: float
) -> tuple[int, dict[bytes, bytes]]:
    """Every record of ``topic`` from offset 0 to each partition's high watermark (from the
    fetch responses: Tansu's ListOffsets(latest) is wrong for multi-record batches), the last
    value per key."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="engage-bench-changelog-restore",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        latest: dict[bytes, bytes] = {}
        read = 0
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=200, max_records=100_000)
            for batch in batches.values():
                read += len(batch)
                for record in batch:
                    assert record.key is not None and record.value is not None
                    latest[record.key] = record.value
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    pending.discard(tp)
        return read, latest
    finally:
        await consumer.stop()


def restore_from_topic(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 300.0
) -> dict[str, Any]:
    """A restore from ``topic``: read it all with one consumer, keep the last value per key,
    decode them; the seconds it took, the records read and the states restored."""
    started = time.perf_counter()
    read, latest = asyncio.run(_read_back(bootstrap, topic, partitions, timeout_s))
    states = {key.decode(): decode_state(value) for key, value in latest.items()}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "records_read": read, "states": states}


def save_snapshot(
    store: SnapshotStore,
    encoded: dict[str, bytes],
    partitions: int,
    offsets: dict[int, int],
    replace: bool,
) -> float:
    """Save ``encoded`` states in ``store``, a partition a transaction; the seconds taken."""
    by_partition: dict[int, dict[str, bytes]] = {p: {} for p in range(partitions)}
    for sid, value in encoded.items():
        by_partition[partition_of(sid.encode(), partitions)][sid] = value
    started = time.perf_counter()
    for p, states in by_partition.items():
        saved = store.save(p, {(INPUT, p): offsets[p]}, {(INPUT, p): None}, states, replace)
        if not saved:
            raise RuntimeError(f"the snapshot of partition {p} was refused")
    return time.perf_counter() - started


def load_snapshot(url: str, partitions: int) -> dict[str, Any]:
    """Load every partition's snapshot as the worker does (``StreamWorker.load_snapshots``
    without the record checks): saved offsets, then each partition's states, decoded; from a
    fresh engine (a new process's first connection)."""
    started = time.perf_counter()
    db = make_engine(url)
    try:
        store = SnapshotStore(session_factory(db))
        saved = store.offsets(range(partitions))
        states = {sid: decode_state(data) for p in saved for sid, data in store.states(p).items()}
        seconds = time.perf_counter() - started
    finally:
        db.dispose()
    return {"seconds": seconds, "states": states}


def repeated(runs: int, *restores: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of ``restores`` run in turn, ``runs`` times over: per restore its last result
    (earlier runs' restored states are dropped as the next run starts, to bound memory),
    with ``seconds`` the median of its runs and ``runs`` every run's seconds, fastest first."""
    results: list[list[dict[str, Any]]] = [[] for _ in restores]
    for run in range(runs):
        for done, restore in zip(results, restores, strict=True):
            if run:
                done[-1].pop("states", None)
            done.append(restore())
    return [
        {
            **done[-1],
            "seconds": statistics.median(r["seconds"] for r in done),
            "runs": sorted(round(r["seconds"], 2) for r in done),
        }
        for done in results
    ]


def changelog_figures(
    supporters: int, partitions: int, runs: int = 3, timeout_s: float = 300.0
) -> dict[str, Any]:
    """The changelog and the snapshot, each written and restored, for ``supporters``, then
    again with the history doubled."""
    figures: dict[str, Any] = {"supporters": supporters, "partitions": partitions}
    engine = engine_for()
    states: dict[str, SupporterState] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        assert broker.process is not None
        bootstrap = broker.bootstrap
        figures["changelog_compact_setting_accepted"] = create_topic(
            bootstrap, CHANGELOG, partitions
        )
        figures["broker_rss_mb_empty"] = rss_mb(broker.process.pid)
        path = Path(tmp) / "engage.db"
        url = f"sqlite:///{path}"
        db = make_engine(url)
        migrate(db)
        store = SnapshotStore(session_factory(db))
        offsets = {p: 0 for p in range(partitions)}
        records = bytes_written = 0
        for label, seed in (("", 7), ("_2x", 8)):
            started = time.perf_counter()
            log = list(folded_states(engine, states, supporters, seed))
            fold_s = time.perf_counter() - started
            changed = {sid for sid, _ in log}
            for sid, _ in log:
                offsets[partition_of(sid.encode(), partitions)] += 1
            written = write_changelog(bootstrap, CHANGELOG, log, partitions)
            del log
            records += written["records"]
            bytes_written += written["bytes"]
            encoded = {sid: encode_state(states[sid]) for sid in states}
            one_per_key = f"engage-stream-state-one-per-key{label or '_1x'}"
            create_topic(bootstrap, one_per_key, partitions)
            compacted = write_changelog(bootstrap, one_per_key, encoded.items(), partitions)
            figures[f"broker_rss_mb{label}"] = rss_mb(broker.process.pid)
            save_s = save_snapshot(
                store, {sid: encoded[sid] for sid in changed}, partitions, offsets, not label
            )
            with store.sessions() as session:
                rows = session.scalar(select(func.count()).select_from(StreamState))
                state_bytes = session.scalar(select(func.sum(func.length(StreamState.state))))
            # The three restores in turn, ``runs`` times: the machine is shared, so a slow
            # moment lands on each of them alike; the median of each is reported.
            changelog, single, loaded = repeated(
                runs,
                partial(restore_from_topic, bootstrap, CHANGELOG, partitions, timeout_s),
                partial(restore_from_topic, bootstrap, one_per_key, partitions, timeout_s),
                partial(load_snapshot, url, partitions),
            )
            for name, restored in (("changelog", changelog), ("one per key", single),
                                   ("snapshot", loaded)):  # fmt: skip
                got = {sid: encode_state(state) for sid, state in restored.pop("states").items()}
                if got != encoded:
                    raise RuntimeError(f"the {name} restore differs from the folded states")
            figures.update(
                {
                    f"events_folded{label}": written["records"],
                    f"fold_s{label}": round(fold_s, 2),
                    f"changelog_write_s{label}": round(written["seconds"], 2),
                    f"changelog_records{label}": records,
                    f"changelog_mb{label}": round(bytes_written / 1e6, 1),
                    f"changelog_records_per_key{label}": round(records / len(states), 2),
                    f"changelog_restore_s{label}": round(changelog["seconds"], 2),
                    f"changelog_restore_runs_s{label}": changelog["runs"],
                    f"changelog_restore_records_read{label}": changelog["records_read"],
                    f"changelog_restore_records_per_s{label}": round(
                        changelog["records_read"] / changelog["seconds"]
                    ),
                    f"one_per_key_records{label}": compacted["records"],
                    f"one_per_key_mb{label}": round(compacted["bytes"] / 1e6, 1),
                    f"one_per_key_restore_s{label}": round(single["seconds"], 2),
                    f"one_per_key_restore_runs_s{label}": single["runs"],
                    f"snapshot_rows{label}": rows,
                    f"snapshot_state_mb{label}": round((state_bytes or 0) / 1e6, 1),
                    f"snapshot_file_mb{label}": round(file_bytes(path) / 1e6, 1),
                    f"snapshot_saved_rows{label}": len(changed),
                    f"snapshot_save_s{label}": round(save_s, 2),
                    f"snapshot_load_s{label}": round(loaded["seconds"], 2),
                    f"snapshot_load_runs_s{label}": loaded["runs"],
                    f"restored_states{label}": len(states),
                }
            )
        db.dispose()
    # Apache Kafka would compact the changelog: about one record per key, plus the head the
    # cleaner has not reached (the active segment is never cleaned; by default a partition is
    # cleaned once half of it is dirty). Not measured on Kafka: the one-record-per-key reads
    # measured above, and the full read's rate per record applied to two records per key.
    per_record_s = figures["changelog_restore_s"] / figures["changelog_restore_records_read"]
    figures["kafka_estimate_not_measured"] = {
        "restore_s_one_record_per_key": figures["one_per_key_restore_s"],
        "restore_s_one_record_per_key_2x": figures["one_per_key_restore_s_2x"],
        "restore_s_two_records_per_key": round(per_record_s * 2 * figures["restored_states"], 2),
        "note": (
            "estimate, not measured on Apache Kafka: a compacted changelog holds about one "
            "record per key plus its uncompacted head (the active segment, and up to the "
            "dirty share min.cleanable.dirty.ratio allows); its restore stays about flat as "
            "the history grows, where Tansu's grows with it"
        ),
    }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--supporters", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs of each restore (median)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per restore")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = changelog_figures(args.supporters, args.partitions, args.runs, args.timeout)
    figures["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
