"""Sign-in sheet import: a meeting's CSV (name, email, mobile, postcode) to attendance events;
the sheet reading and the reasons naming a column, which a training's sheet shares
(producers/training_sheet.py)."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from producers.client import BatchResult, IngestClient
from schemas.events import AttendedIn

# event_id = uuid5(namespace, "meeting_id:email-or-phone"): one attendance per person per meeting.
SHEET_NAMESPACE = uuid.UUID("5d1c0b7e-2f4a-4e8b-9c3d-6a7b8c9d0e1f")

# Header aliases, compared after lower-casing and squeezing spaces, "_" and "-" into one space.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("name", "full name", "fullname", "your name", "attendee", "attendee name"),
    "first_name": ("first name", "firstname", "forename", "given name"),
    "last_name": ("last name", "lastname", "surname", "family name"),
    "email": ("email", "e mail", "email address", "e mail address", "mail"),
    "phone": (
        "mobile",
        "phone",
        "mobile number",
        "phone number",
        "mobile phone",
        "telephone",
        "tel",
        "mob",
    ),
    "postcode": ("postcode", "post code", "postal code", "zip", "zip code"),
}
_ALIASES = {alias: column for column, aliases in _COLUMNS.items() for alias in aliases}
_MODEL_FIELD_TO_COLUMN = {
    "email": "email",
    "phone": "phone",
    "postcode": "postcode",
    "first_name": "name",
    "last_name": "name",
}


@dataclass(frozen=True)
class RejectedRow:
    line: int  # 1-based line of the sheet; the header is line 1
    reason: str


@dataclass
class ParseResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the sheet line of each event, in order
    rows: int = 0  # non-blank data rows read
    labels: dict[str, str] = field(default_factory=dict)  # the sheet's header for each column


@dataclass
class ImportReport:
    source: str
    meeting_id: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0  # already imported before (same person, same meeting)
    rejected: list[RejectedRow] = field(default_factory=list)


def parse_sign_in_sheet(
    lines: Iterable[str] | TextIO,
    meeting_id: str,
    event_time: datetime,
    meeting_title: str | None = None,
    area: str | None = None,
) -> ParseResult:
    """Turn a sign-in sheet into ``event.attended`` payloads, and say which rows were refused.

    Each row is validated by the ingest model itself, so a row refused here would be refused
    by the API too. Blank rows are skipped. A person on the sheet twice (same email or phone)
    is kept once, and the repeat listed as rejected. Event ids depend only on the meeting and
    the person, so importing the same sheet again gives the same ids and the API reports them
    as duplicates.
    """
    if event_time.tzinfo is None:
        raise ValueError("event_time must be timezone-aware")
    if not meeting_id.strip():
        raise ValueError("meeting_id must not be blank")
    sheet = read_sheet(lines)
    result = ParseResult(rows=len(sheet.rows), labels=sheet.labels)
    seen: dict[str, int] = {}
    for row in sheet.rows:
        outcome = _attended(row.cells, meeting_id, event_time, meeting_title, area, sheet.labels)
        if isinstance(outcome, str):
            result.rejected.append(RejectedRow(row.line, outcome))
            continue
        identity = outcome.email or outcome.phone or ""
        if identity in seen:
            result.rejected.append(
                RejectedRow(row.line, f"same person as line {seen[identity]}; kept once")
            )
            continue
        seen[identity] = row.line
        # The default role is left out: a payload says what the sheet says.
        default_role = {"role"} if outcome.role == "attendee" else None
        result.events.append(
            outcome.model_dump(mode="json", exclude_none=True, exclude=default_role)
        )
        result.lines.append(row.line)
    result.rejected.extend(sheet.rejected)
    return result


@dataclass(frozen=True)
class SheetRow:
    line: int  # 1-based line of the sheet where the row starts
    cells: dict[str, str]  # canonical column name -> the cell's text, stripped


@dataclass
class Sheet:
    rows: list[SheetRow] = field(default_factory=list)  # non-blank data rows
    labels: dict[str, str] = field(default_factory=dict)  # the sheet's header for each column
    rejected: list[RejectedRow] = field(default_factory=list)  # header refused, unreadable CSV


def read_sheet(
    lines: Iterable[str] | TextIO, extra_columns: Mapping[str, tuple[str, ...]] | None = None
) -> Sheet:
    """A sign-in sheet's rows by column (``_COLUMNS``, plus ``extra_columns``' aliases):
    comma, semicolon or tab separated, blank rows skipped. A header with neither an email nor
    a mobile column is refused (no rows); unreadable CSV stops the reading at its line."""
    text_lines = list(lines)
    aliases = dict(_ALIASES)
    for column, names in (extra_columns or {}).items():
        aliases.update(dict.fromkeys(names, column))
    sheet = Sheet()
    reader = csv.reader(text_lines, delimiter=_delimiter(text_lines))
    header: dict[str, int] | None = None
    line_no = 1
    try:
        for cells in reader:
            row_line, line_no = line_no, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header, sheet.labels = _header(cells, aliases)
                if "email" not in header and "phone" not in header:
                    sheet.rejected.append(
                        RejectedRow(row_line, "header: no email or mobile column found")
                    )
                    return sheet
                continue
            values = {
                column: cells[index].strip()
                for column, index in header.items()
                if index < len(cells)
            }
            sheet.rows.append(SheetRow(row_line, values))
    except csv.Error as exc:
        sheet.rejected.append(RejectedRow(line_no, f"unreadable CSV: {exc}"))
    return sheet


def _delimiter(lines: list[str]) -> str:
    first = next((line for line in lines if line.strip()), "")
    counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
    return max(counts, key=lambda sep: counts[sep]) if any(counts.values()) else ","


def _header(cells: list[str], aliases: Mapping[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    """Column positions by canonical name, and the sheet's own label for each column."""
    positions: dict[str, int] = {}
    labels: dict[str, str] = {}
    for index, cell in enumerate(cells):
        label = cell.strip().lstrip("\ufeff").strip()
        key = re.sub(r"[\s_\-]+", " ", label.lower()).strip(" :*")
        column = aliases.get(key)
        if column is not None and column not in positions:
            positions[column] = index
            labels[column] = label
    return positions, labels


def _attended(
    row: dict[str, str],
    meeting_id: str,
    event_time: datetime,
    meeting_title: str | None,
    area: str | None,
    labels: dict[str, str],
) -> AttendedIn | str:
    fields: dict[str, Any] = {
        "event_time": event_time,
        "meeting_id": meeting_id,
        "meeting_title": meeting_title,
        "area": area,
        **contact_fields(row),
    }
    try:
        model = AttendedIn.model_validate(fields)
    except ValidationError as exc:
        return rejection_reason(exc, labels)
    identity = model.email or model.phone or ""
    event_id = uuid.uuid5(SHEET_NAMESPACE, f"{meeting_id}:{identity}")
    return model.model_copy(update={"event_id": event_id})


def contact_fields(row: dict[str, str]) -> dict[str, str | None]:
    """Who a sheet's row names: email, phone, postcode and the names (None where blank)."""
    first_name, last_name = _split_name(row)
    return {
        "email": row.get("email") or None,
        "phone": row.get("phone") or None,
        "postcode": row.get("postcode") or None,
        "first_name": first_name,
        "last_name": last_name,
    }


def _split_name(row: dict[str, str]) -> tuple[str | None, str | None]:
    """First and last name: "Ann Smith", "Mary Ann de Souza" (first word first), "Smith, Ann"."""
    if row.get("first_name") or row.get("last_name"):
        return row.get("first_name") or None, row.get("last_name") or None
    name = " ".join(row.get("name", "").split())
    if not name:
        return None, None
    if "," in name:
        last, _, first = name.partition(",")
        return first.strip() or None, last.strip() or None
    first, _, last = name.partition(" ")
    return first, last or None


def rejection_reason(exc: ValidationError, labels: dict[str, str]) -> str:
    """A short reason naming the sheet's column: "email: ..."."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        message = _short(error["msg"])
        loc = [str(part) for part in error["loc"]]
        parts.append(_named(loc[-1] if loc else "", message, labels))
    return "; ".join(dict.fromkeys(parts))


def _named(model_field: str, message: str, labels: dict[str, str]) -> str:
    column = _MODEL_FIELD_TO_COLUMN.get(model_field)
    if column is None:
        if model_field in ("", "email", "phone") or "email or a phone" in message:
            email, phone = labels.get("email", "email"), labels.get("phone", "mobile")
            return f"{email}/{phone}: {message}"
        return f"{model_field}: {message}"
    label = labels.get(column) or labels.get("first_name" if column == "name" else column)
    return f"{label or column}: {message}"


def _short(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message.rstrip(".")


def meeting_time(text: str) -> datetime:
    """The meeting's time from an ISO-8601 date and time with a time zone; ValueError names
    what is wrong."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO date and time: {text!r}") from None
    if when.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-11-10T19:00:00+00:00")
    return when


def import_sheet(
    client: IngestClient,
    path: Path,
    meeting_id: str,
    event_time: datetime,
    meeting_title: str | None = None,
    area: str | None = None,
    *,
    batch_size: int = 500,
    progress: bool = True,
) -> ImportReport:
    """Read the sheet at ``path``, post its rows, and report what was kept and what refused."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    parsed = parse_sign_in_sheet(
        io.StringIO(read_text(path), newline=""), meeting_id, event_time, meeting_title, area
    )
    report = ImportReport(source=str(path), meeting_id=meeting_id, rows=parsed.rows)
    rejected = list(parsed.rejected)
    with Progress(
        TextColumn(f"[bold]importing {path.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        disable=not progress,
    ) as bar:
        task = bar.add_task("rows", total=len(parsed.events))
        for offset in range(0, len(parsed.events), batch_size):
            batch = parsed.events[offset : offset + batch_size]
            result = client.post_batch(batch)
            report.accepted += len(result.accepted)
            report.duplicates += len(result.duplicates)
            lines = parsed.lines[offset : offset + batch_size]
            rejected.extend(_api_rejections(result, lines, parsed.labels))
            bar.advance(task, len(batch))
    report.rejected = sorted(rejected, key=lambda row: row.line)
    return report


def read_text(path: Path) -> str:
    """The sheet's text: UTF-8 (with or without a BOM), else Windows-1252 as Excel saves it."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _api_rejections(
    result: BatchResult, lines: list[int], labels: dict[str, str]
) -> list[RejectedRow]:
    rows: list[RejectedRow] = []
    for rejection in result.rejected:
        line = lines[rejection.index] if 0 <= rejection.index < len(lines) else 0
        reasons = []
        for error in rejection.errors:
            # "events[3].email" -> "email"
            model_field = re.sub(r"^events\[\d+\]\.?", "", error.field).split(".")[-1]
            reasons.append(_named(model_field, _short(error.reason), labels))
        rows.append(RejectedRow(line, "; ".join(reasons) or "rejected by the ingest API"))
    return rows


def format_report(report: ImportReport) -> str:
    """A few lines for the organiser: counts, then each refused row with its line and reason."""
    lines = [
        f"{report.source} ({report.meeting_id}): {report.rows} rows, "
        f"{report.accepted} imported, {report.duplicates} already imported, "
        f"{len(report.rejected)} not imported."
    ]
    if report.rejected:
        lines.append("Not imported:")
        lines.extend(f"  line {row.line}: {row.reason}" for row in report.rejected)
    return "\n".join(lines)
