"""The whole pipeline started as a user starts it: events in over HTTP, nudges and tasks out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.simulator import generate_events
from tests.e2e.conftest import ENGAGE, Pipeline, alive, first_journey
from tests.polling import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "pipeline", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_events_posted_over_http_become_nudges_and_a_task(pipeline: Pipeline) -> None:
    # Recent, so no rule finds the events stale (the default playbook's stale_after_hours).
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=30)
    person = {"email": "Ann.Jones@Example.org", "phone": "07911 123456", "first_name": "Ann"}
    events = first_journey(day, person)
    response = pipeline.post(events)
    assert response.status_code == 202, response.text
    assert len(response.json()["accepted"]) == 3

    def outbox() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = pipeline.cli("outbox", "--json")
        return rows if len(rows) >= 2 else None

    rows = wait_until("the welcome and thank-you emails in the outbox", outbox, 90, 0.5)
    emails = [r for r in rows if r["channel"] == "email"]
    subjects = {r["subject"] for r in emails}
    assert {r["to"] for r in emails} == {"ann.jones@example.org"}
    assert any("Welcome" in s for s in subjects)
    assert any("Thanks" in s or "Thank" in s for s in subjects)

    tasks = wait_until("the follow-up task", lambda: pipeline.cli("tasks", "--json"), 60, 0.5)
    assert len(tasks) == 1
    assert tasks[0]["kind"] == "first_meeting_follow_up"
    assert tasks[0]["supporter_id"].startswith("sup_")
    due = datetime.fromisoformat(tasks[0]["due_at"])
    assert due == day + timedelta(days=1, hours=48)

    # The attended event came in the same batch, so whether the SMS invite fired depends on
    # which topic the worker read first; the welcome and thank-you must exist exactly once.
    assert len(emails) == 2
    assert {r["to"] for r in rows if r["channel"] == "sms"} <= {"+447911123456"}


def test_sigterm_stops_everything_within_ten_seconds(pipeline: Pipeline) -> None:
    pids = pipeline.run["pids"]
    assert set(pids) == {"api", "relay", "stream", "consume", "analytics", "mart", "broker"}
    took = pipeline.stop(signal.SIGTERM)
    assert took < 10
    left = [role for role, pid in pids.items() if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    assert not (pipeline.home / "run.json").exists()


def test_nothing_accepted_is_lost_when_each_process_is_killed(pipeline: Pipeline) -> None:
    events = generate_events(150, seed=11, start=datetime.now(UTC) - timedelta(days=28))
    chunks = [events[i : i + 60] for i in range(0, len(events), 60)]
    victims = ["stream", "consume", "relay", "api", "broker", "stream"]
    accepted = 0
    for index, chunk in enumerate(chunks):
        response = wait_until("the API to answer", lambda c=chunk: _try_post(pipeline, c), 60, 0.5)
        assert response.status_code == 202, response.text
        accepted += len(response.json()["accepted"])
        if index < len(victims):
            role = victims[index]
            pid = pipeline.run["pids"][role]
            os.kill(pid, signal.SIGKILL)
            wait_until(
                f"{role} restart", lambda r=role, p=pid: pipeline.run["pids"][r] != p, 30, 0.5
            )
    assert accepted == len(events)

    def settled() -> dict[str, Any] | None:
        status: dict[str, Any] = pipeline.cli("status", "--json")
        done = (
            status["ledger"]["unpublished"] == 0
            and status["nudges"].get("pending", 0) == 0
            and status["consumer_lag"]
            == {"engage-stream": 0, "engage-consumers": 0, "engage-analytics": 0, "engage-mart": 0}
        )
        return status if done else None

    try:
        status = wait_until("the pipeline to catch up after the kills", settled, 180, interval_s=2)
    except AssertionError:
        print(pipeline.cli("status", "--json"))
        raise
    # What the playbook decides for the whole ledger, folded again from the start, is exactly
    # what the consumers hold after six kills: nothing lost, nothing twice, the same scores.
    replay = subprocess.run(
        [ENGAGE, "replay"], env=pipeline.env, capture_output=True, timeout=120, check=False
    )
    report = json.loads(replay.stdout)
    assert replay.returncode == 0, report
    assert report["refused"] == 0
    assert report["nudges_new"] == 0 and report["tasks_new"] == 0
    assert report["scores_different_or_missing"] == 0 and report["scores_identical"] > 0
    assert sum(status["nudges"].values()) == report["nudges_decided"]
    assert status["tasks"] == report["tasks_decided"] > 0
    from sqlalchemy import create_engine, text

    outbox = {row["nudge_id"] for row in pipeline.cli("outbox", "--json", "--limit", "100000")}
    engine = create_engine(pipeline.run["database_url"])
    with engine.connect() as connection:
        sent = set(connection.scalars(text("select nudge_id from nudges where status = 'sent'")))
    engine.dispose()
    assert sent and outbox == sent  # every nudge marked sent was written once, nothing else


def _try_post(pipeline: Pipeline, chunk: list[dict[str, Any]]) -> Any:
    import httpx

    try:
        return pipeline.post(chunk)
    except (httpx.HTTPError, OSError, KeyError, ValueError):
        return None


def test_a_sign_in_sheet_imported_with_the_cli_becomes_follow_up_tasks(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # A meeting two days ago: the default playbook calls a first-timer from a sheet that
    # comes in up to two weeks late (stale_after_hours), the task due 48 h after it.
    meeting = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    sheet = tmp_path / "hackney-nov.csv"
    sheet.write_text(
        "Name,Email,Mobile,Postcode\n"
        "Ann Jones,ann.jones@example.org,07911 123456,E8 1AA\n"
        "Bo Smith,,07912 345678,N16 7AB\n"
        "No Contact,,,E8 2BB\n"
        "Cy Patel,not-an-email,,E9 5CD\n"
    )
    args = [
        "import-csv",
        str(sheet),
        "--meeting-id",
        "hackney-nov",
        "--area",
        "Hackney",
        "--title",
        "Hackney monthly",
        "--time",
        meeting.isoformat(),
    ]
    run = subprocess.run(
        [ENGAGE, *args], env=pipeline.env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "2 imported" in run.stdout
    assert "line 4:" in run.stdout and "line 5:" in run.stdout  # the refused rows, with reasons
    assert "email" in run.stdout.split("line 5:")[1]

    tasks = wait_until(
        "a follow-up task per attendee",
        lambda: len(pipeline.cli("tasks", "--json")) == 2 and pipeline.cli("tasks", "--json"),
        60,
        0.5,
    )
    assert {t["area"] for t in tasks} == {"Hackney"}
    assert {t["due_at"] for t in tasks} == {(meeting + timedelta(hours=48)).isoformat()}

    again = subprocess.run(
        [ENGAGE, *args], env=pipeline.env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "2 already imported" in again.stdout
