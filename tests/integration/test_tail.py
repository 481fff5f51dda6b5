"""`engage tail` against the embedded broker: records as they arrive or from the start, to the
fetch high watermark (not where ListOffsets says the topic ends), as JSON lines or CSV, bounded
by --max, resumed by a consumer group, and stopped cleanly by Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from engage.cli import main
from infra.broker import EmbeddedBroker
from infra.topics import admin_client
from schemas.events import LadderChanged
from tests.integration.publishing import listed_end_offsets, publish_in_bursts
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def environment(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The variables `engage` reads, pointing at the test's broker (set here too, for calls
    of ``main`` in this process)."""
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENGAGE_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    return {**os.environ}


def _records(count: int, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    """``count`` records spread over partitions 0 and 1: {"n": ..., "nested": {...}}."""
    return [
        (n % 2, f"k{n}".encode(), json.dumps({"n": n, "nested": {"even": n % 2 == 0}}).encode())
        for n in range(start, start + count)
    ]


def _tail(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["tail", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.usefixtures("environment")
def test_from_the_beginning_to_the_end_prints_each_record_once_as_a_json_line(
    broker: EmbeddedBroker, tmp_topic: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = tmp_topic("jsonl", partitions=3)  # partition 2 stays empty
    publish_in_bursts(broker.bootstrap, topic, _records(40), burst=10)
    assert sum(listed_end_offsets(broker.bootstrap, topic).values()) < 40  # Tansu's quirk

    code, lines, err = _tail(capsys, topic, "--from-beginning", "--to-end")

    assert code == 0
    assert sorted(json.loads(line)["n"] for line in lines) == list(range(40))
    assert json.loads(lines[0]) == {"n": 0, "nested": {"even": True}}
    assert f"reading {topic} from the start" in err
    assert "40 records" in err


@pytest.mark.usefixtures("environment")
def test_max_stops_after_that_many_records(
    broker: EmbeddedBroker, tmp_topic: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = tmp_topic("max", partitions=2)
    publish_in_bursts(broker.bootstrap, topic, _records(30), burst=10)

    code, lines, err = _tail(capsys, topic, "--from-beginning", "--max", "7")

    assert code == 0
    assert len(lines) == 7
    assert len({json.loads(line)["n"] for line in lines}) == 7
    assert "7 records" in err


@pytest.mark.usefixtures("environment")
def test_csv_of_any_topic_has_the_first_records_fields_nested_values_as_json(
    broker: EmbeddedBroker, tmp_topic: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = tmp_topic("csv", partitions=1)
    publish_in_bursts(broker.bootstrap, topic, [(0, k, v) for _, k, v in _records(3)])

    code, lines, _ = _tail(capsys, topic, "--from-beginning", "--to-end", "--format", "csv")

    assert code == 0
    assert list(csv.reader(io.StringIO("\n".join(lines)))) == [
        ["n", "nested"],
        ["0", '{"even":true}'],
        ["1", '{"even":false}'],
        ["2", '{"even":true}'],
    ]


@pytest.mark.usefixtures("environment")
def test_csv_of_a_catalogue_topic_has_its_models_fields_as_columns(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = [
        LadderChanged(
            event_time=datetime(2025, 3, 6, tzinfo=UTC),
            supporter_id=f"sup_{uuid.uuid4().hex}",
            rung="attendee",
            previous_rung=None,
            direction="up",
            reason="Came to a meeting.",
            score=4.0,
        )
        for _ in range(3)
    ]
    publish_in_bursts(
        broker.bootstrap,
        LadderChanged.topic,
        [(0, e.key().encode(), e.model_dump_json().encode()) for e in mine],
    )

    code, lines, _ = _tail(
        capsys, LadderChanged.topic, "--from-beginning", "--to-end", "--format", "csv"
    )

    assert code == 0
    header, *rows = list(csv.reader(io.StringIO("\n".join(lines))))
    assert header == list(LadderChanged.model_fields)
    assert all(len(row) == len(header) for row in rows)
    by_supporter = {row[header.index("supporter_id")]: row for row in rows}
    for event in mine:
        row = by_supporter[event.supporter_id]
        assert row[header.index("previous_rung")] == ""
        assert row[header.index("score")] == "4.0"


@pytest.mark.usefixtures("environment")
def test_a_group_carries_on_where_it_stopped_and_commits_what_it_printed(
    broker: EmbeddedBroker, tmp_topic: Any, group_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = tmp_topic("group", partitions=2)
    publish_in_bursts(broker.bootstrap, topic, _records(20), burst=10)

    first = _tail(capsys, topic, "--group", group_id, "--from-beginning", "--max", "8")
    second = _tail(capsys, topic, "--group", group_id, "--from-beginning", "--to-end")

    assert first[0] == second[0] == 0
    printed = [json.loads(line)["n"] for line in first[1] + second[1]]
    assert len(first[1]) == 8
    assert sorted(printed) == list(range(20))  # each once, across the two runs
    admin = admin_client(broker.bootstrap)
    try:
        committed = admin.list_group_offsets(group_id)[group_id]
    finally:
        admin.close()
    assert sum(meta.offset for meta in committed.values()) == 20


@pytest.mark.usefixtures("environment")
def test_an_unknown_topic_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = _tail(capsys, f"no.such.topic.{uuid.uuid4().hex[:8]}", "--to-end")

    assert code == 2
    assert lines == []
    assert "no topic" in err


class _Lines:
    """A pipe's lines, read in a thread as they come."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> list[str]:
        self._thread.join(30)
        return self.lines


@pytest.fixture
def tail_process(environment: dict[str, str]) -> Iterator[Any]:
    """Starts `engage tail ARGS...` as a person does; killed at teardown if still running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], _Lines, _Lines]:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "engage.cli", "tail", *args],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None and process.stderr is not None
        return process, _Lines(process.stdout), _Lines(process.stderr)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("in_group", [False, True], ids=["alone", "in-a-new-group"])
def test_from_the_end_it_prints_only_what_arrives_after_it_started(
    broker: EmbeddedBroker, tmp_topic: Any, tail_process: Any, group_id: str, in_group: bool
) -> None:
    """30 records already there, in batches, so ListOffsets says the topic ends before its
    last ones: a tail that started there would print those first. A group that never read
    the topic starts at the same end."""
    topic = tmp_topic("end", partitions=2)
    publish_in_bursts(broker.bootstrap, topic, _records(30), burst=10)
    assert sum(listed_end_offsets(broker.bootstrap, topic).values()) < 30

    group = ["--group", group_id] if in_group else []
    process, out, err = tail_process(topic, "--max", "6", *group)
    wait_until("the tail to start", lambda: any("reading" in line for line in err.lines))
    publish_in_bursts(broker.bootstrap, topic, _records(6, start=100), burst=3)

    assert process.wait(60) == 0
    assert sorted(json.loads(line)["n"] for line in out.join()) == list(range(100, 106))
    assert "6 records" in err.join()[-1]


def test_ctrl_c_stops_it_cleanly(broker: EmbeddedBroker, tmp_topic: Any, tail_process: Any) -> None:
    topic = tmp_topic("ctrl-c", partitions=2)
    publish_in_bursts(broker.bootstrap, topic, _records(3))

    process, out, err = tail_process(topic, "--from-beginning")
    wait_until("the records to be printed", lambda: len(out.lines) == 3)
    process.send_signal(signal.SIGINT)

    assert process.wait(30) == 0
    assert not any("Traceback" in line for line in err.join())
    assert err.lines[-1] == "3 records"
    assert sorted(json.loads(line)["n"] for line in out.join()) == [0, 1, 2]
