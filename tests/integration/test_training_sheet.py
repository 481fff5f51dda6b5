"""A training's sign-in sheet imported into the ledger, on SQLite and PostgreSQL: people found
through the identity links (a new supporter for someone not seen), one training.completed each,
no contact details on it, bad rows refused with the rest kept, a second import recording
nothing, and a leader candidate who trained reaching the leader rung in the fold."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engage import cli
from infra.db import ConsentRecord, IdentityLink, LedgerEvent, Supporter
from producers.ledger import ingest_events
from producers.training_sheet import import_training_sheet
from schemas.events import AttendedIn, Event, TrainingCompleted, event_model
from tests.unit.engine_events import T0, at, default_engine, fold

KEY = "test-identity-key"
LONDON = ZoneInfo("Europe/London")


def attend(sessions: sessionmaker[Session], *posted: AttendedIn) -> None:
    with sessions.begin() as session:
        ingest_events(session, posted, datetime.now(UTC), KEY)


def supporter_of(sessions: sessionmaker[Session], email: str) -> str:
    with sessions() as session:
        (sid,) = session.scalars(select(Supporter.supporter_id).where(Supporter.email == email))
        return sid


def trainings(sessions: sessionmaker[Session]) -> list[tuple[TrainingCompleted, str]]:
    """Each training.completed on the ledger, and its payload as stored."""
    with sessions() as session:
        rows = session.scalars(
            select(LedgerEvent)
            .where(LedgerEvent.topic == "training.completed")
            .order_by(LedgerEvent.seq)
        )
        return [(TrainingCompleted.model_validate_json(r.payload), r.payload) for r in rows]


def count(sessions: sessionmaker[Session], table: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


@pytest.fixture
def engage(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``engage ...`` in-process on the test's database: (exit code, stdout, stderr)."""
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_IDENTITY_KEY", KEY)
    monkeypatch.setenv("ENGAGE_DEFAULT_TIMEZONE", "Europe/London")
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    saved = structlog.get_config()

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    structlog.configure(**saved)


def test_a_training_sheet_records_known_and_new_people_once_and_refuses_bad_rows(
    sessions: sessionmaker[Session],
    engage: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
) -> None:
    day = (datetime.now(LONDON) - timedelta(days=7)).date()
    attend(
        sessions,
        AttendedIn(
            event_time=datetime.now(UTC) - timedelta(days=30),
            meeting_id="m-1",
            email="jo@example.org",
            first_name="Jo",
        ),
    )
    jo = supporter_of(sessions, "jo@example.org")
    soon = day + timedelta(days=10)
    sheet = tmp_path / "training.csv"
    sheet.write_text(
        "Full name,E-mail,Mobile,Date\n"
        f"Jo Bloggs,JO@Example.org,,{day:%d/%m/%Y}\n"  # known, by email
        "Priya Shah,,07400 123456,\n"  # not seen before; the day from --time
        "Bob,bob@,,\n"  # malformed email
        f"Cara,cara@example.org,,{soon.isoformat()}\n"  # a day to come
        "Dev,,,\n"  # nobody
    )
    before = count(sessions, ConsentRecord)

    code, out, err = engage(
        "import-csv", str(sheet), "--training", "One-to-ones", "--time", str(day)
    )

    assert (code, err) == (0, "")
    assert f"{sheet} (One-to-ones): 5 rows, 2 recorded (1 new supporters)" in out
    assert "0 already recorded, 3 not imported." in out
    assert "  line 4: E-mail: " in out
    assert "  line 5: Date: in the future" in out
    assert "  line 6: E-mail/Mobile: an email or a phone is required" in out
    recorded = trainings(sessions)
    (jo_event, jo_payload), (priya_event, priya_payload) = recorded
    assert (jo_event.supporter_id, jo_event.training) == (jo, "One-to-ones")
    noon = datetime.combine(day, time(12), LONDON)  # a day alone, and the --time day
    assert (jo_event.event_time, priya_event.event_time) == (noon, noon)
    with sessions() as session:
        priya = session.get(Supporter, priya_event.supporter_id)
        assert priya is not None
        assert (priya.phone, priya.first_name, priya.last_name) == (
            "+447400123456",
            "Priya",
            "Shah",
        )
        links = session.scalars(
            select(IdentityLink.supporter_id).where(IdentityLink.supporter_id == priya.supporter_id)
        ).all()
    assert len(links) == 1 and priya.supporter_id != jo
    assert count(sessions, ConsentRecord) == before  # being at a training implies no consent
    for payload in (jo_payload, priya_payload):
        for detail in ("Jo", "Bloggs", "Priya", "Shah", "7400", "@"):
            assert detail not in payload

    code, out, _ = engage("import-csv", str(sheet), "--training", "one-to-ones", "--time", str(day))

    assert code == 0
    assert "5 rows, 0 recorded (0 new supporters), 2 already recorded, 3 not imported." in out
    assert trainings(sessions) == recorded
    assert count(sessions, Supporter) == 2


def test_the_command_says_what_a_training_sheet_needs(
    engage: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    sheet = tmp_path / "training.csv"
    sheet.write_text("email\nann@example.org\n")
    with pytest.raises(SystemExit, match=r"^--training: a name of 1 to 200 characters"):
        engage("import-csv", str(sheet), "--training", " ", "--time", "2026-11-10")
    with pytest.raises(SystemExit, match=r"^--time: not a date"):
        engage("import-csv", str(sheet), "--training", "Chairing", "--time", "Tuesday")
    code, out, _ = engage("import-csv", str(sheet), "--training", "Chairing")
    assert code == 0 and "line 1: header: no date column" in out
    with pytest.raises(SystemExit, match=r"^--time: required with --meeting-id"):
        engage("import-csv", str(sheet), "--meeting-id", "m-1")


def test_a_leader_candidate_who_trained_on_the_sheet_is_a_leader(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The unit test's leader candidate (three meetings, then brought someone), now through
    the ledger: the training comes from a sheet, and the fold of Jo's log makes Jo a leader."""
    jo = {"email": "jo@example.org", "first_name": "Jo"}
    attend(
        sessions,
        *(AttendedIn(event_time=at(days), meeting_id="m-1", **jo) for days in (0, 1, 2)),
        AttendedIn(
            event_time=at(3),
            meeting_id="m-1",
            email="sam@example.org",
            brought_by_email="jo@example.org",
        ),
    )
    sid = supporter_of(sessions, "jo@example.org")
    sheet = tmp_path / "training.csv"
    sheet.write_text(f"name,email,date\nJo,jo@example.org,{at(4).date().isoformat()}\n")

    def log() -> list[Event]:
        with sessions() as session:
            rows = session.scalars(
                select(LedgerEvent).where(LedgerEvent.key == sid).order_by(LedgerEvent.seq)
            )
            return [event_model(r.topic).model_validate_json(r.payload) for r in rows]

    rungs = default_engine().playbook.rung_names
    assert rungs[fold(log()).rung] == "leader_candidate"

    report = import_training_sheet(
        sessions, sheet, "One-to-ones", identity_key=KEY, zone=UTC, now=T0 + timedelta(days=10)
    )

    assert (report.recorded, report.supporters) == (1, {2: sid})
    assert [e.topic for e in log()][-1] == "training.completed"
    assert rungs[fold(log()).rung] == "leader"
