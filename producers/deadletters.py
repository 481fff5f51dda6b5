"""Dead letters: read the dead-letter topic, pick letters out, re-drive them to their source."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import DeadLetterRedrive, dialect_insert
from infra.kafka import idempotent_producer
from infra.topic_reader import read_to_end
from schemas.catalogue import TOPICS
from schemas.events import DeadLetter

READ_DEADLINE_S = 30.0
"""How long reading the dead-letter topic to its end may take before we give up, in seconds."""
ERROR_WIDTH = 100
"""Characters of a letter's error shown on its line in a listing."""
CATALOGUE = frozenset(spec.name for spec in TOPICS)
"""The topics a letter may be re-driven to."""


# --- reading and choosing ----------------------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it sits in the dead-letter topic."""

    letter: DeadLetter
    partition: int
    offset: int

    @property
    def id(self) -> str:
        """Stable id: where the failed record sits in its source topic."""
        return letter_id(self.letter)

    @property
    def at(self) -> str:
        return f"{DeadLetter.topic}:{self.partition}:{self.offset}"


def letter_id(letter: DeadLetter) -> str:
    return f"{letter.source_topic}:{letter.partition}:{letter.offset}"


@dataclass(frozen=True)
class DeadLetters:
    """Every record of the dead-letter topic: the letters, and the records that are not."""

    letters: list[Letter]
    unreadable: list[str]


def read_records(bootstrap: str, topic: str, deadline_s: float = READ_DEADLINE_S) -> list[Any]:
    """Every record of ``topic`` from the start up to its high watermark, without a group."""
    return list(
        read_to_end(bootstrap, [topic], deadline_s=deadline_s, client_id="engage-deadletters")
    )


def parse_letters(records: Iterable[Any]) -> DeadLetters:
    """Each record as a ``DeadLetter``, oldest first; the records that are not one, said why."""
    letters: list[Letter] = []
    unreadable: list[str] = []
    for record in records:
        try:
            letter = DeadLetter.model_validate_json(record.value or b"")
        except ValidationError as exc:
            where = f"{record.topic}:{record.partition}:{record.offset}"
            unreadable.append(f"{where} is not a dead letter: {_one_line(str(exc), 200)}")
            continue
        letters.append(Letter(letter, record.partition, record.offset))
    letters.sort(key=lambda item: (item.letter.event_time, item.partition, item.offset))
    return DeadLetters(letters, unreadable)


def read_letters(bootstrap: str, deadline_s: float = READ_DEADLINE_S) -> DeadLetters:
    return parse_letters(read_records(bootstrap, DeadLetter.topic, deadline_s))


@dataclass(frozen=True)
class Selection:
    """Which letters: all of the given ones must hold (``None`` or empty: any)."""

    ids: frozenset[str] = frozenset()
    topic: str | None = None
    since: datetime | None = None
    contains: str | None = None
    consumer: str | None = None

    def matches(self, item: Letter) -> bool:
        letter = item.letter
        return (
            (not self.ids or item.id in self.ids)
            and (self.topic is None or letter.source_topic == self.topic)
            and (self.since is None or letter.event_time >= self.since)
            and (self.contains is None or self.contains.casefold() in letter.error.casefold())
            and (self.consumer is None or letter.consumer == self.consumer)
        )


def select_letters(letters: Iterable[Letter], selection: Selection) -> list[Letter]:
    return [item for item in letters if selection.matches(item)]


_AGO = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``12h``, ``7d``, ``2w`` before ``now``; or an ISO time with its zone."""
    ago = _AGO.match(text.strip().lower())
    if ago:
        return now - int(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time (e.g. 12h, 7d, 2026-11-25T09:00+00:00): {text!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"give a time zone, e.g. {when.isoformat()}+00:00")
    return when


# --- what has been re-driven (the caller owns the session) ----------------------------------


def redriven_at(session: Session, ids: Collection[str]) -> dict[str, datetime]:
    """When each of ``ids`` was last re-driven, for those that were."""
    wanted = sorted(set(ids))
    found: dict[str, datetime] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = session.execute(
            select(DeadLetterRedrive.letter_id, DeadLetterRedrive.redriven_at).where(
                DeadLetterRedrive.letter_id.in_(chunk)
            )
        )
        found.update({letter: at for letter, at in rows})
    return found


def record_redrives(session: Session, targets: Mapping[str, str], at: datetime) -> None:
    """Note each letter id in ``targets`` as re-driven to its topic at ``at`` (the newest wins)."""
    if not targets:
        return
    statement = dialect_insert(session, DeadLetterRedrive)
    statement = statement.on_conflict_do_update(
        index_elements=[DeadLetterRedrive.letter_id],
        set_={
            "redriven_at": statement.excluded.redriven_at,
            "target_topic": statement.excluded.target_topic,
        },
    )
    session.execute(
        statement,
        [
            {"letter_id": letter, "redriven_at": at, "target_topic": topic}
            for letter, topic in targets.items()
        ],
    )


# --- listing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    rows: list[dict[str, Any]]
    unreadable: list[str]


def letter_row(item: Letter, redriven: datetime | None) -> dict[str, Any]:
    letter = item.letter
    return {
        "id": item.id,
        "deadletter": item.at,
        "source_topic": letter.source_topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "source_key": letter.source_key,
        "consumer": letter.consumer,
        "time": letter.event_time.isoformat(),
        "error": letter.error,
        "payload": letter.payload,
        "redriven_at": redriven.isoformat() if redriven else None,
    }


def list_letters(bootstrap: str, sessions: sessionmaker[Session], selection: Selection) -> Listing:
    found = read_letters(bootstrap)
    chosen = select_letters(found.letters, selection)
    with sessions() as session:
        redriven = redriven_at(session, {item.id for item in chosen})
    return Listing([letter_row(item, redriven.get(item.id)) for item in chosen], found.unreadable)


def render_listing(listing: Listing) -> str:
    lines = []
    width = max((len(row["id"]) for row in listing.rows), default=0)
    for row in listing.rows:
        when = datetime.fromisoformat(row["time"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = _one_line(row["error"], ERROR_WIDTH)
        line = f"{row['id']:<{width}}  {row['consumer']:<9} {when}Z  {error}"
        if row["redriven_at"]:
            line += f"  [re-driven {row['redriven_at'][:19]}Z]"
        lines.append(line)
    redriven = sum(1 for row in listing.rows if row["redriven_at"])
    lines.append(f"{len(listing.rows)} dead letters ({redriven} re-driven)")
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- re-driving --------------------------------------------------------------------------


@dataclass(frozen=True)
class Republish:
    """A letter's original record, to send again: its topic, partition, key and bytes."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes


class Republisher(Protocol):
    def republish(self, records: Sequence[Republish]) -> list[tuple[int, int] | Exception]:
        """Send each record; where the broker acknowledged it (partition, offset), or why not."""


class KafkaRepublisher:
    """Republishes with kafka-python, idempotent and acks=all, to the letter's own partition
    (where its key went the first time) while the topic still has it."""

    def __init__(self, producer: Any, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.timeout_s = timeout_s

    def republish(self, records: Sequence[Republish]) -> list[tuple[int, int] | Exception]:
        sent: list[Any] = []
        for record in records:
            try:
                partitions = self.producer.partitions_for(record.topic) or set()
                partition = record.partition if record.partition in partitions else None
                sent.append(
                    self.producer.send(
                        record.topic, key=record.key, value=record.value, partition=partition
                    )
                )
            except Exception as exc:  # reported for this letter; the others still go
                sent.append(exc)
        with contextlib.suppress(Exception):  # each future below says how its record went
            self.producer.flush(timeout=self.timeout_s)
        results: list[tuple[int, int] | Exception] = []
        for future in sent:
            if isinstance(future, Exception):
                results.append(future)
                continue
            try:
                meta = future.get(timeout=self.timeout_s)
            except Exception as exc:
                results.append(exc)
                continue
            results.append((meta.partition, meta.offset))
        return results


def redrive_producer(bootstrap: str) -> Any:
    """The relay's kind of producer (idempotent, acks=all), for re-drives."""
    return idempotent_producer(bootstrap, "engage-redrive", max_block_ms=10_000)


Status = Literal["redriven", "would redrive", "already redriven", "refused", "not found", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What became of one letter asked for."""

    id: str
    status: Status
    detail: str = ""
    partition: int | None = None
    offset: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("redriven", "would redrive", "already redriven")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "detail": self.detail,
            "partition": self.partition,
            "offset": self.offset,
        }


def refusal(letter: DeadLetter, known_topics: Container[str]) -> str | None:
    """Why a letter cannot be re-driven at all, or None."""
    if letter.source_topic == DeadLetter.topic:
        return "its source is the dead-letter topic itself"
    if letter.source_topic not in known_topics:
        return f"source topic {letter.source_topic!r} is not in the catalogue"
    if not letter.payload:
        return "its payload is empty: nothing to re-drive"
    return None


def plan_redrive(
    letters: Iterable[Letter],
    redriven: Mapping[str, datetime],
    again: bool,
    known_topics: Container[str],
    asked: Collection[str] = (),
) -> tuple[list[Letter], list[Outcome]]:
    """The letters to send (once per id, the oldest letter of it), and the outcome of the others:
    refused, already re-driven (unless ``again``), or asked for by an id no letter has."""
    send: list[Letter] = []
    others: list[Outcome] = []
    seen: set[str] = set()
    for item in letters:
        if item.id in seen:
            continue
        seen.add(item.id)
        why = refusal(item.letter, known_topics)
        if why is not None:
            others.append(Outcome(item.id, "refused", why))
        elif item.id in redriven and not again:
            when = redriven[item.id].isoformat(timespec="seconds")
            others.append(Outcome(item.id, "already redriven", f"at {when}; --again to repeat"))
        else:
            send.append(item)
    missing = sorted(set(asked) - seen)
    others += [Outcome(i, "not found", "no letter with this id matches") for i in missing]
    return send, others


def original(item: Letter) -> Republish:
    letter = item.letter
    key = letter.source_key.encode() if letter.source_key is not None else None
    return Republish(letter.source_topic, letter.partition, key, letter.payload.encode())


def redrive(
    letters: Sequence[Letter],
    sessions: sessionmaker[Session],
    republisher: Republisher | None,
    *,
    again: bool = False,
    asked: Collection[str] = (),
    known_topics: Container[str] = CATALOGUE,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Outcome]:
    """Republish each letter's original key and bytes to its source topic; note the ones the
    broker acknowledged, after it has. No ``republisher``: a dry run, nothing sent or written."""
    with sessions() as session:
        done = redriven_at(session, {item.id for item in letters})
    send, others = plan_redrive(letters, done, again, known_topics, asked)
    if republisher is None:
        dry = [Outcome(i.id, "would redrive", f"to {i.letter.source_topic}") for i in send]
        return dry + others
    results = republisher.republish([original(item) for item in send]) if send else []
    outcomes: list[Outcome] = []
    acked: dict[str, str] = {}
    for item, result in zip(send, results, strict=True):
        if isinstance(result, Exception):
            outcomes.append(Outcome(item.id, "failed", f"{type(result).__name__}: {result}"))
            continue
        acked[item.id] = item.letter.source_topic
        partition, offset = result
        where = f"to {item.letter.source_topic} partition {partition} offset {offset}"
        outcomes.append(Outcome(item.id, "redriven", where, partition, offset))
    if acked:
        with sessions.begin() as session:
            record_redrives(session, acked, clock())
    return outcomes + others


def redrive_letters(
    bootstrap: str,
    sessions: sessionmaker[Session],
    selection: Selection,
    *,
    again: bool = False,
    dry_run: bool = False,
) -> list[Outcome]:
    """Read the dead-letter topic, choose, and re-drive (or, dry, say what would be)."""
    chosen = select_letters(read_letters(bootstrap).letters, selection)
    if dry_run:
        return redrive(chosen, sessions, None, again=again, asked=selection.ids)
    producer = redrive_producer(bootstrap)
    try:
        return redrive(
            chosen, sessions, KafkaRepublisher(producer), again=again, asked=selection.ids
        )
    finally:
        producer.close(timeout=5)


def render_outcomes(outcomes: Sequence[Outcome]) -> str:
    lines = [f"{o.status:<16} {o.id}  {o.detail}".rstrip() for o in outcomes]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()) or "no letters")
    return "\n".join(lines)
