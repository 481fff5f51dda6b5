"""`engage simulate`: the same --seed and --start post the same events; the start is printed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import pytest
import structlog

import producers.client
from engage import cli
from producers.simulator import generate_events

START = "2026-01-05T09:15:00+00:00"  # a Monday morning, not midnight


class RecordingAPI:
    """Accepts every posted event and keeps it, in the order it was posted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        self.events.extend(events)
        ids = [e["event_id"] for e in events]
        return httpx.Response(202, json={"accepted": ids, "duplicates": [], "rejected": []})


@dataclass
class Run:
    code: int
    summary: dict[str, Any]  # the JSON line on stdout
    err: str
    events: list[dict[str, Any]]  # as posted


class Engage(Protocol):
    def __call__(self, *args: str) -> Run: ...


@pytest.fixture
def simulate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Engage]:
    """``engage simulate --url ... ARGS`` in-process, posting to a RecordingAPI."""
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_API_TOKEN", "test-token")
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    api = RecordingAPI()

    class RecordedClient(producers.client.IngestClient):
        def __init__(self, api_url: str, token: str, **kwargs: Any) -> None:
            super().__init__(api_url, token, transport=httpx.MockTransport(api), **kwargs)

    monkeypatch.setattr(producers.client, "IngestClient", RecordedClient)
    saved = structlog.get_config()

    def run(*args: str) -> Run:
        api.events = []
        code = cli.main(["simulate", "--url", "http://ingest.test", *args])
        out = capsys.readouterr()
        return Run(code, json.loads(out.out), out.err, api.events)

    yield run
    structlog.configure(**saved)


def test_the_same_seed_and_start_post_the_same_events_and_another_seed_others(
    simulate: Engage,
) -> None:
    first = simulate("--supporters", "60", "--seed", "5", "--start", START, "--batch", "50")
    assert first.code == 0 and first.events
    # The same instant written another way; and "now" no longer goes into the events.
    again = simulate("--supporters", "60", "--seed", "5", "--start", "2026-01-05T10:15:00+01:00")
    assert again.events == first.events  # every field of every event, in order
    start = datetime.fromisoformat(START)
    assert first.events == generate_events(60, seed=5, start=start, days=28)
    times = [datetime.fromisoformat(e["event_time"]) for e in first.events]
    assert start <= min(times) and max(times) < start + timedelta(days=28)
    assert first.summary["accepted"] == len(first.events)

    other = simulate("--supporters", "60", "--seed", "6", "--start", START)
    assert other.events != first.events
    assert {e["event_id"] for e in other.events}.isdisjoint(e["event_id"] for e in first.events)


def test_the_start_is_printed_and_passing_it_back_repeats_the_run(simulate: Engage) -> None:
    before = datetime.now(UTC)
    first = simulate("--supporters", "40", "--seed", "3", "--days", "7")
    printed = first.summary["start"]
    assert (first.summary["seed"], printed) == (3, datetime.fromisoformat(printed).isoformat())
    assert f"--seed 3 --start {printed}" in first.err  # printed before the run, to stderr
    start = datetime.fromisoformat(printed)
    assert start.utcoffset() == timedelta(0) and start.microsecond == 0
    assert before - timedelta(days=7, seconds=1) <= start <= datetime.now(UTC) - timedelta(days=7)

    again = simulate("--supporters", "40", "--seed", "3", "--days", "7", "--start", printed)
    assert again.summary["start"] == printed
    assert again.events == first.events


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T09:15:00+00:00", datetime(2026, 1, 5, 9, 15, tzinfo=UTC)),
        ("2026-01-05T09:15:00Z", datetime(2026, 1, 5, 9, 15, tzinfo=UTC)),
        ("2026-01-05T10:15:00+01:00", datetime(2026, 1, 5, 9, 15, tzinfo=UTC)),
    ],
)
def test_the_start_option_takes_an_iso_datetime_with_a_time_zone(
    text: str, expected: datetime
) -> None:
    args = cli.build_parser().parse_args(["simulate", "--seed", "4", "--start", text])
    assert (args.seed, args.start) == (4, expected)
    assert args.start.tzinfo is not None
    assert cli.build_parser().parse_args(["simulate"]).start is None  # then: --days before now


@pytest.mark.parametrize(
    ("text", "message"),
    [("2026-01-05T09:15:00", "give a time zone"), ("last monday", "not an ISO-8601")],
)
def test_a_start_without_a_time_zone_or_not_a_datetime_is_refused(
    text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["simulate", "--start", text])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
