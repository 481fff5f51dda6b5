"""A peer of the stream stage in `engage bench`: Quix Streams hosting the same pure fold.

One ``StreamingDataFrame`` per input topic, concatenated into one: Quix then gives the
concatenation one state store (its ``stream_id`` covers every input topic) and aligns
co-partitioned topics by record timestamp (``require_time_alignment``: the partition buffer
with the oldest next record goes first), which is how the stage orders a supporter's records
too. For each record it parses and folds as the stage does (``engage.bench.hosted``), with
the supporter's state in Quix's State: RocksDB, with its changelog topic, as Quix does by
default, the values serialised with the stage's own snapshot encoding
(``streams.engagement.encode_state``, through ``RocksDBOptions(dumps=..., loads=...)``: the
state is a slotted object, not JSON). The outputs go through ``to_topic`` to the output
topics named with a prefix (created here beside the stage's), keyed by supporter, encoded as
the stage encodes them.

Tuning: ``consumer_poll_timeout`` 0.05 s (Quix's default of 1 s stalls the poll loop at the end
of a drained backlog), everything else Quix's defaults (commit every 5 s, at-least-once).
Timed from the first record handed to the fold to the last one processed, the group join and
the state's recovery excluded, as the stage is timed.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    # Quix imports confluent-kafka's schema registry client, which imports authlib, which
    # warns that httpx is deprecated after putting its own "always" filter first: ours goes
    # in front of it, and both go when this block ends.
    import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401

    warnings.simplefilter("ignore", DeprecationWarning)
    from quixstreams import Application, message_context
    from quixstreams.models.serializers import SerializationContext, Serializer
    from quixstreams.state.rocksdb import RocksDBOptions

from engage.bench.hosted import fold_record, output_topics
from engage.wiring import engine_for
from infra.kafka import CONSUMER_DEFAULTS
from schemas.catalogue import INPUT_TOPICS
from streams.engagement import Engine, decode_state, encode_state

HOST = "quix_fold"
STATE_KEY = b"state"
"""The one State key per supporter: Quix scopes State by the record's key (the supporter id)."""
POLL_TIMEOUT_S = 0.05


class _Payload(Serializer):
    """The value of an output as the stage encodes it (the fold's record is (topic, key, value))."""

    def __call__(self, value: Any, ctx: SerializationContext) -> bytes:
        payload: bytes = value[2]
        return payload


def run_quix_fold(
    bootstrap: str,
    count: int,
    *,
    engine: Engine | None = None,
    prefix: str = "bench.quix.",
    group: str | None = None,
    poll_timeout_s: float = POLL_TIMEOUT_S,
    session_timeout_ms: int = CONSUMER_DEFAULTS.session_timeout_ms,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Fold the first ``count`` records of the input topics (a new consumer group from the
    earliest offsets) in a Quix Application; stop once ``count`` are processed. Returns the
    events/s, the seconds, the join (start to the first record), and outputs by topic."""
    engine = engine or engine_for()
    names = output_topics(bootstrap, prefix)
    group = group or f"bench-quix-{uuid.uuid4().hex[:8]}"
    outputs: dict[str, int] = {}
    marks: dict[str, float] = {}
    processed = 0
    with tempfile.TemporaryDirectory(prefix="engage-quix-") as state_dir:

        def done(topic: str, partition: int, offset: int) -> None:
            nonlocal processed
            processed += 1
            if processed >= count:
                marks["last"] = time.time()
                app.stop()

        app = Application(
            broker_address=bootstrap,
            consumer_group=group,
            auto_offset_reset="earliest",
            consumer_poll_timeout=poll_timeout_s,
            state_dir=state_dir,
            rocksdb_options=RocksDBOptions(dumps=encode_state, loads=decode_state),
            on_message_processed=done,
            loglevel=None,  # Quix adds no handler of its own: its warnings reach the root logger
            # The stage's group settings (infra.kafka.CONSUMER_DEFAULTS): Tansu answers a new
            # group's first join after half the session timeout (librdkafka's default: 45 s).
            consumer_extra_config={
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": CONSUMER_DEFAULTS.heartbeat_interval_ms,
                "fetch.wait.max.ms": CONSUMER_DEFAULTS.fetch_max_wait_ms,
            },
        )
        sinks = {
            topic: app.topic(name, key_serializer="bytes", value_serializer=_Payload())
            for topic, name in names.items()
        }

        def fold(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> list[Any]:
            if "first" not in marks:
                marks["first"] = time.time()
            context = message_context()
            caused = fold_record(
                engine,
                HOST,
                context.topic,
                context.partition,
                context.offset,
                key,
                value,
                timestamp,
                lambda _sid: state.get(STATE_KEY),
                lambda _sid, kept: state.set(STATE_KEY, kept),
            )
            for topic, _, _ in caused:
                outputs[topic] = outputs.get(topic, 0) + 1
            return caused

        sdf = _concatenated(app, INPUT_TOPICS)
        sdf = sdf.apply(fold, stateful=True, metadata=True, expand=True)
        sdf.to_topic(lambda value, key, ts, headers: sinks[value[0]], key=lambda value: value[1])
        watchdog = threading.Timer(timeout_s, app.stop)
        watchdog.daemon = True
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        started = time.time()
        watchdog.start()
        try:
            app.run()
        finally:
            watchdog.cancel()
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
    if processed < count or "first" not in marks:
        raise TimeoutError(f"{HOST} processed {processed}/{count} in {timeout_s} s")
    seconds = marks["last"] - marks["first"]
    return {
        "events": count,
        "events_per_s": round(count / seconds),
        "seconds": round(seconds, 2),
        "join_s": round(marks["first"] - started, 1),
        "outputs": dict(sorted(outputs.items())),
    }


def _concatenated(app: Application, topics: Iterable[str]) -> Any:
    frames = [
        app.dataframe(app.topic(name, key_deserializer="bytes", value_deserializer="bytes"))
        for name in topics
    ]
    sdf = frames[0]
    for frame in frames[1:]:
        sdf = sdf.concat(frame)
    return sdf
