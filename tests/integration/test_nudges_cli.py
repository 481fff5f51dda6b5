"""`engage nudges`: every decision with its reason, and a person settling ambiguous sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from engage import cli
from infra.db import LedgerEvent, Nudge
from tests.integration.test_dispatch import INVITE, WELCOME, nudge_row, seed


@pytest.fixture
def engage(
    database_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Any]:
    """``engage ...`` in-process on the test's database: (exit code, stdout)."""
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    saved = structlog.get_config()

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        return code, capsys.readouterr().out

    yield run
    structlog.configure(**saved)


def test_nudges_lists_decisions_and_settles_ambiguous_ones(
    sessions: sessionmaker[Session], engage: Any
) -> None:
    seed(sessions)
    with sessions.begin() as session:
        session.execute(
            update(Nudge)
            .where(Nudge.nudge_id == WELCOME)
            .values(status="ambiguous", reason_code="no_answer", reason="read timed out")
        )
        session.execute(
            update(Nudge)
            .where(Nudge.nudge_id == INVITE)
            .values(status="skipped", reason_code="cap_day", reason="the cap is 1 a day")
        )

    code, out = engage("nudges", "--status", "skipped,ambiguous", "--json")
    rows = {r["nudge_id"]: r for r in json.loads(out)}
    assert code == 0
    assert (rows[WELCOME]["status"], rows[WELCOME]["reason_code"]) == ("ambiguous", "no_answer")
    assert (rows[INVITE]["status"], rows[INVITE]["reason"]) == ("skipped", "the cap is 1 a day")

    code, out = engage("nudges", "--status", "skipped")
    assert code == 0
    assert out.splitlines() == [
        f"skipped    sms   {INVITE}  cap_day: the cap is 1 a day",
        "1 nudges",
    ]

    # Only an ambiguous (or failed) nudge can be settled by hand.
    code, out = engage("nudges", "mark-sent", INVITE)
    assert code == 1 and "is skipped; mark-sent needs ambiguous" in out
    assert engage("nudges", "give-up", "no-such-nudge") == (1, "no nudge no-such-nudge\n")

    code, out = engage("nudges", "mark-sent", WELCOME)
    assert code == 0 and out.startswith("ok")
    row = nudge_row(sessions, WELCOME)
    assert (row.status, row.reason_code) == ("sent", "operator_confirmed")
    assert row.sent_at is not None
    with sessions() as session:
        payloads = session.scalars(
            select(LedgerEvent.payload).where(LedgerEvent.topic == "message.status")
        )
        events = [json.loads(p) for p in payloads]
    assert [(e["nudge_id"], e["status"], e["reason_code"]) for e in events] == [
        (WELCOME, "sent", "operator_confirmed")
    ]
    # Settled: a second decision is refused.
    assert engage("nudges", "resend", WELCOME)[0] == 1


def test_resend_puts_an_ambiguous_nudge_back_in_the_queue(
    sessions: sessionmaker[Session], engage: Any
) -> None:
    seed(sessions)
    with sessions.begin() as session:
        session.execute(update(Nudge).where(Nudge.nudge_id == WELCOME).values(status="ambiguous"))
    assert engage("nudges", "resend", WELCOME)[0] == 0
    row = nudge_row(sessions, WELCOME)
    assert (row.status, row.reason_code) == ("pending", "operator_resend")
