"""A training's sign-in sheet: each person on it, found by their email or mobile through the
identity links (a new supporter if none), gets a ``training.completed`` on the ledger.

The meeting sheet (``producers/csv_import.py``) goes through the ingest API, whose events
name people by contact details; ``training.completed`` names a supporter by id, so this import
resolves the people itself, with the ledger's own identity resolution (``producers/ledger.py``)
in one transaction per batch, as the API does: the same links, merges and contact details,
and the same rule for someone not seen before (a new supporter, their details kept in the
``supporters`` table, no consent implied). Contact details stay there: the event carries the
supporter id, the training's name and when.
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, tzinfo
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from producers.csv_import import (
    RejectedRow,
    contact_fields,
    read_sheet,
    read_text,
    rejection_reason,
)
from producers.ledger import IdentityConflict, record_for_people
from schemas.events import ContactFields, Normalising, TrainingCompleted

TRAINING_SHEET_NAMESPACE = uuid.UUID("0c4e7f2a-9b1d-4e63-8a5f-2d7c6b1e9f30")
"""event_id = uuid5(namespace, "training:day:email-or-phone"): one record per person, training
and day, whatever the sheet's order or how often it is imported."""

DATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "date": (
        "date",
        "day",
        "training date",
        "date of training",
        "date attended",
        "date completed",
        "completed",
        "completed on",
        "when",
        "date and time",
        "date time",
        "datetime",
        "timestamp",
    ),
    "time": ("time", "time in", "sign in time", "signed in at", "arrival time", "arrived"),
}
"""Header aliases of the optional date and time columns, beside the meeting sheet's."""
NOON = time(12)
"""The time given to a day without one, as the leaders page does (no shift across midnight)."""
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY_FIRST = ("%d/%m/%Y", "%d/%m/%y", "%d.%m.%Y", "%d-%m-%Y")
_CLOCK = ("%H:%M", "%H:%M:%S", "%H.%M")


class SignedIn(Normalising, ContactFields):
    """One person on a training's sheet: who (contact details, kept in the ``supporters``
    table and never on a topic) and when; ``event_id`` is their training record's id."""


@dataclass
class TrainingSheet:
    people: list[SignedIn] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the sheet line of each person, in order
    rejected: list[RejectedRow] = field(default_factory=list)
    rows: int = 0  # non-blank data rows read
    labels: dict[str, str] = field(default_factory=dict)  # the sheet's header for each column


@dataclass(frozen=True)
class Recorded:
    supporter_id: str
    new_supporter: bool  # first seen on this sheet: a supporter made for them


@dataclass
class TrainingImport:
    source: str
    training: str
    rows: int = 0
    recorded: int = 0
    duplicates: int = 0  # recorded before (same person, training and day)
    new_supporters: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    supporters: dict[int, str] = field(default_factory=dict)  # sheet line -> id, recorded now


def training_name(text: str) -> str:
    """The training's name, spaces squeezed; ValueError unless 1 to 200 characters."""
    name = " ".join(text.split())
    if not name or len(name) > 200:
        raise ValueError("a name of 1 to 200 characters, e.g. 'One-to-ones'")
    return name


def when_trained(day: str, clock: str, zone: tzinfo, now: datetime) -> datetime:
    """When a row says the training was: ``day`` an ISO date or date and time (2026-11-10,
    2026-11-10 19:00, with or without an offset) or a day first (10/11/2026, 10/11/2026
    19:00); ``clock`` a time of day (19:00) for a day without one, else noon. Read in ``zone``
    unless an offset is given; a day whose noon is still to come is ``now``. ValueError with
    "date: ..." or "time: ..." when it does not parse or is in the future."""
    day, clock = day.strip(), clock.strip()
    stamp = None if _ISO_DAY.match(day) else _iso_time(day)
    column = "date"
    if stamp is None:
        calendar, at = _calendar(day)
        if at is None and clock:
            at, column = _clock(clock), "time"
        if at is None:
            if calendar > now.astimezone(zone).date():
                raise ValueError("date: in the future")
            return min(datetime.combine(calendar, NOON, zone), now)
        stamp = datetime.combine(calendar, at)
    when = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=zone)
    if when > now:
        raise ValueError(f"{column}: in the future")
    return when


def _iso_time(text: str) -> datetime | None:
    """An ISO date and time (2026-11-10T19:00, 2026-11-10 19:00:00+00:00), else None."""
    if not text[:4].isdigit():
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _calendar(text: str) -> tuple[date, time | None]:
    """An ISO day, or a day first (10/11/2026, 10.11.26) and perhaps a time of day."""
    if _ISO_DAY.match(text):
        with contextlib.suppress(ValueError):
            return date.fromisoformat(text), None
    calendar, _, rest = text.partition(" ")
    for pattern in _DAY_FIRST:
        try:
            day = datetime.strptime(calendar, pattern).date()
        except ValueError:
            continue
        return day, (_clock(rest.strip(), "date") if rest.strip() else None)
    raise ValueError("date: not a date (e.g. 2026-11-10 or 10/11/2026)")


def _clock(text: str, column: str = "time") -> time:
    for pattern in _CLOCK:
        try:
            return datetime.strptime(text, pattern).time()
        except ValueError:
            continue
    raise ValueError(f"{column}: not a time of day (e.g. 19:00)")


def parse_training_sheet(
    lines: Iterable[str] | TextIO,
    training: str,
    *,
    zone: tzinfo,
    now: datetime,
    default_time: datetime | None = None,
) -> TrainingSheet:
    """The people of a training's sign-in sheet, each with their training record's id and
    time, and the rows refused with the column and reason.

    A row's contact details are checked by the same model as the ingest API's. Its time is
    its date (and time) column, else ``default_time``; naive times are in ``zone``. A person
    twice on the same day is kept once. Ids depend only on the training, the day and the
    person's email (else mobile), so the same sheet imported again gives the same ids.
    """
    if now.tzinfo is None or (default_time is not None and default_time.tzinfo is None):
        raise ValueError("now and default_time must be timezone-aware")
    name = training_name(training)
    sheet = read_sheet(lines, DATE_COLUMNS)
    result = TrainingSheet(rows=len(sheet.rows), labels=sheet.labels)
    if sheet.rows and "date" not in sheet.labels and default_time is None:
        result.rejected.append(
            RejectedRow(1, "header: no date column; give the training's date (--time)")
        )
        return result
    seen: dict[uuid.UUID, int] = {}
    for row in sheet.rows:
        person = _person(row.cells, name, zone, now, default_time, sheet.labels)
        if isinstance(person, str):
            result.rejected.append(RejectedRow(row.line, person))
        elif person.event_id in seen:
            earlier = seen[person.event_id]
            result.rejected.append(RejectedRow(row.line, f"same as line {earlier}; kept once"))
        else:
            seen[person.event_id] = row.line
            result.people.append(person)
            result.lines.append(row.line)
    result.rejected.extend(sheet.rejected)
    return result


def _person(
    row: dict[str, str],
    training: str,
    zone: tzinfo,
    now: datetime,
    default_time: datetime | None,
    labels: dict[str, str],
) -> SignedIn | str:
    day, clock = row.get("date", ""), row.get("time", "")
    try:
        if day:
            when = when_trained(day, clock, zone, now)
        elif default_time is None:
            return f"{labels.get('date', 'date')}: blank; give a date, or --time for the sheet"
        elif clock:
            local = default_time.astimezone(zone).date().isoformat()
            when = when_trained(local, clock, zone, now)
        else:
            when = default_time
    except ValueError as exc:
        column, _, reason = str(exc).partition(": ")
        return f"{labels.get(column, column)}: {reason}"
    fields: dict[str, Any] = {"event_time": when, **contact_fields(row)}
    try:
        person = SignedIn.model_validate(fields)
    except ValidationError as exc:
        return rejection_reason(exc, labels)
    identity = person.email or person.phone or ""
    day_there = when.astimezone(zone).date().isoformat()
    event_id = uuid.uuid5(TRAINING_SHEET_NAMESPACE, f"{training.lower()}:{day_there}:{identity}")
    return person.model_copy(update={"event_id": event_id})


def record_trainings(
    session: Session,
    people: Sequence[SignedIn],
    training: str,
    accepted_at: datetime,
    identity_key: str,
) -> list[Recorded | None]:
    """Each person's ``training.completed``, added to the ledger in the caller's transaction
    by ``producers.ledger.record_for_people`` (which resolves them as the ingest API does);
    None for a record the ledger has already. Raises IdentityConflict: run it again."""

    def completed(person: ContactFields, sid: str) -> TrainingCompleted:
        return TrainingCompleted(
            event_id=person.event_id,
            event_time=person.event_time,
            supporter_id=sid,
            training=training,
        )

    recorded = record_for_people(session, people, completed, accepted_at, identity_key)
    return [
        None if r is None else Recorded(supporter_id=r[0], new_supporter=r[1]) for r in recorded
    ]


def import_training_sheet(
    sessions: sessionmaker[Session],
    path: Path,
    training: str,
    *,
    identity_key: str,
    zone: tzinfo,
    now: datetime,
    default_time: datetime | None = None,
    batch_size: int = 500,
) -> TrainingImport:
    """Read the sheet at ``path`` and record its people's training, ``batch_size`` people a
    transaction; report what was recorded, already there, and refused (line and reason)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    name = training_name(training)
    parsed = parse_training_sheet(
        io.StringIO(read_text(path), newline=""),
        name,
        zone=zone,
        now=now,
        default_time=default_time,
    )
    report = TrainingImport(source=str(path), training=name, rows=parsed.rows)
    for offset in range(0, len(parsed.people), batch_size):
        batch = parsed.people[offset : offset + batch_size]
        done = _committed(sessions, batch, name, now, identity_key)
        for line, recorded in zip(parsed.lines[offset : offset + batch_size], done, strict=True):
            if recorded is None:
                report.duplicates += 1
                continue
            report.recorded += 1
            report.new_supporters += recorded.new_supporter
            report.supporters[line] = recorded.supporter_id
    report.rejected = sorted(parsed.rejected, key=lambda row: row.line)
    return report


def _committed(
    sessions: sessionmaker[Session],
    people: Sequence[SignedIn],
    training: str,
    now: datetime,
    identity_key: str,
) -> list[Recorded | None]:
    for attempt in range(3):
        try:
            with sessions.begin() as session:
                return record_trainings(session, people, training, now, identity_key)
        except (IntegrityError, IdentityConflict, OperationalError) as exc:
            # Another writer linked one of these people, or recorded one of these ids,
            # meanwhile (or PostgreSQL chose this transaction to fail a deadlock): look again.
            transient = not isinstance(exc, OperationalError) or getattr(
                exc.orig, "pgcode", None
            ) in {"40001", "40P01"}
            if attempt == 2 or not transient:
                raise
    raise AssertionError("unreachable")


def format_training_report(report: TrainingImport) -> str:
    """A few lines for the organiser: counts, then each refused row with its line and reason."""
    lines = [
        f"{report.source} ({report.training}): {report.rows} rows, {report.recorded} recorded"
        f" ({report.new_supporters} new supporters), {report.duplicates} already recorded,"
        f" {len(report.rejected)} not imported."
    ]
    if report.rejected:
        lines.append("Not imported:")
        lines.extend(f"  line {row.line}: {row.reason}" for row in report.rejected)
    return "\n".join(lines)
