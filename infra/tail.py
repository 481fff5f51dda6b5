"""Following a topic for a person (`engage tail`): its records as they arrive, or from the start,
printed as JSON lines or as CSV of their top-level fields.

Where a tail starts "at the end" is the high watermark of a fetch response
(``infra.topic_reader.end_offsets``), never ListOffsets(latest), which Tansu 0.6.0 answers with
the last batch's base offset + 1: starting there would print old records as new. ``to_end``
stops at each partition's high watermark as its latest fetch reported it, the same way.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import NoOffsetForPartitionError
from kafka.structs import OffsetAndMetadata

from infra.topic_reader import end_offsets

POLL_MS = 200


# --- formats ------------------------------------------------------------------------------


def parsed(value: bytes | None) -> Any:
    """A record's value as JSON; a value that is not JSON (or not UTF-8) as its text."""
    text = (value or b"").decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_line(value: bytes | None) -> str:
    """One record as one line of JSON (the value itself, compact; a non-JSON value as a
    JSON string)."""
    return json.dumps(parsed(value), ensure_ascii=False, separators=(",", ":"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


@dataclass
class CsvRows:
    """CSV of the records' top-level fields: one column per field (``columns``, or the first
    record's fields), nested values as JSON, null as empty; a field outside the columns is
    left out and named in ``dropped``."""

    columns: Sequence[str] | None = None
    dropped: set[str] = field(default_factory=set)

    def header(self) -> str:
        return self._line(list(self.columns or ()))

    def row(self, value: bytes | None) -> list[str]:
        """The lines this record adds: the header first, if the columns come from it."""
        record = parsed(value)
        if not isinstance(record, dict):
            record = {"value": record}
        lines = []
        if self.columns is None:
            self.columns = list(record)
            lines.append(self.header())
        self.dropped.update(set(record) - set(self.columns))
        lines.append(self._line([_cell(record.get(name)) for name in self.columns]))
        return lines

    @staticmethod
    def _line(cells: list[str]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(cells)
        return out.getvalue()


# --- following a topic --------------------------------------------------------------------


@dataclass
class _Tail:
    bootstrap: str
    topic: str
    from_beginning: bool
    consumer: Any
    group: str | None
    assigned: set[TopicPartition] = field(default_factory=set)
    printed: dict[TopicPartition, int] = field(default_factory=dict)

    def start_at(self, tps: list[TopicPartition]) -> None:
        if not tps:
            return
        if self.from_beginning:
            self.consumer.seek_to_beginning(*tps)
            return
        ends = end_offsets(self.bootstrap, [self.topic])[self.topic]
        for tp in tps:
            self.consumer.seek(tp, ends.get(tp, 0))

    def commit(self) -> None:
        """The group's offsets after the records handed out (none without a group)."""
        if self.group is None or not self.printed:
            return
        self.consumer.commit(
            {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self.printed.items()}
        )
        self.printed.clear()

    def at_end(self) -> bool:
        if not self.assigned:
            return False
        for tp in self.assigned:
            mark = self.consumer.highwater(tp)
            if mark is None or self.consumer.position(tp) < mark:
                return False
        return True


def follow(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = False,
    group: str | None = None,
    to_end: bool = False,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> Generator[Any, None, None]:
    """``topic``'s records (kafka-python ``ConsumerRecord``s), partition by partition in
    offset order, from the high watermark (records that arrive after the call) or from the
    start, until ``stop`` is set or, with ``to_end``, every partition has been read to the
    high watermark its latest fetch reported. A topic the broker does not have raises
    LookupError. ``ready`` is called once the positions are set: what arrives after it is
    handed out.

    With ``group``, the tail is a member of that consumer group: it starts where the group
    left off (a partition the group never read: at the start or the end, as above), and
    commits the offsets of the records it handed out after each poll and when it stops;
    without one it commits nothing."""
    stop = stop or threading.Event()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="engage-tail",
        group_id=group,
        enable_auto_commit=False,
        # A group member given a partition its group never read hears of it here (the
        # poll raises), and starts it as asked: never at ListOffsets(latest).
        auto_offset_reset="none" if group else "earliest",
        fetch_max_wait_ms=100,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    tail = _Tail(bootstrap, topic, from_beginning, consumer, group)
    announced = False

    def announce() -> None:
        nonlocal announced
        if tail.assigned and not announced:
            announced = True
            if ready is not None:
                ready()

    try:
        if not consumer.partitions_for_topic(topic):
            raise LookupError(f"no topic {topic!r} on {bootstrap}")
        if group is None:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            tail.start_at(tps)
            tail.assigned = set(tps)
            announce()
        else:
            consumer.subscribe([topic])
        while not stop.is_set():
            try:
                batches = consumer.poll(timeout_ms=POLL_MS)
            except NoOffsetForPartitionError as fresh:
                tail.start_at(sorted(_partitions_of(fresh, consumer)))
                continue
            tail.assigned = set(consumer.assignment())
            announce()
            for tp, records in batches.items():
                for record in records:
                    if stop.is_set():
                        return
                    tail.printed[tp] = record.offset + 1
                    yield record
            tail.commit()
            if to_end and tail.at_end():
                return
    finally:
        try:
            tail.commit()
        finally:
            consumer.close(autocommit=False)


def _partitions_of(error: NoOffsetForPartitionError, consumer: Any) -> set[TopicPartition]:
    """The partitions the error names (the group never read them); all assigned if none."""
    named = error.args[0] if error.args else None
    if isinstance(named, set | frozenset | list | tuple):
        return {tp for tp in named if isinstance(tp, TopicPartition)}
    return set(consumer.assignment())
