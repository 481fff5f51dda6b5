"""The analyst's example (examples/analyst_consumer.py, confluent-kafka) against the embedded
broker: it replays a topic from the start in its own group, reads every record although
ListOffsets says the topic ends earlier, and validates each against the schema the app serves."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.broker import EmbeddedBroker
from schemas.events import AnalyticsScore
from tests.integration.publishing import listed_end_offsets, publish_in_bursts

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analyst_consumer.py"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the app serves the schemas, whatever its database."""
    return f"sqlite:///{tmp_path / 'engage.db'}"


def _scored(n: int) -> AnalyticsScore:
    return AnalyticsScore(
        event_id=uuid.uuid4(),
        event_time=datetime(2025, 3, 6, tzinfo=UTC) + timedelta(minutes=n),
        person=f"p_{n:032x}",
        key_id="k1",
        score=1.5 * n,
        rung="supporter",
        cause_event_id=uuid.uuid4(),
    )


def _run(api: str, bootstrap: str, topic: str, group: str, out: Path) -> tuple[int, Any]:
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            bootstrap,
            "--api",
            api,
            "--topic",
            topic,
            "--schema-url",
            f"{api}/schemas/analytics.scores.json",
            "--group",
            group,
            "--out",
            str(out),
            "--stall-s",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_the_example_reads_every_record_to_the_fetch_high_watermark_and_validates_each(
    api: str, broker: EmbeddedBroker, tmp_topic: Any, group_id: str, tmp_path: Path
) -> None:
    """60 scores published to partitions 0 and 1 in bursts of 10 (batches of several records),
    one record that is not a valid score, partition 2 left empty. ListOffsets(latest) says the
    topic is shorter; the example reads all 61 records, names the invalid one, writes the 60
    valid ones, and a second run in the same group replays them all again."""
    topic = tmp_topic("scored", partitions=3)
    scores = [_scored(n) for n in range(60)]
    records = [
        (n % 2, s.key().encode(), s.model_dump_json().encode()) for n, s in enumerate(scores)
    ]
    bad = {**json.loads(scores[0].model_dump_json()), "score": "high"}
    records.append((1, b"p_bad", json.dumps(bad).encode()))
    publish_in_bursts(broker.bootstrap, topic, records, burst=10)
    listed = listed_end_offsets(broker.bootstrap, topic)
    assert sum(listed.values()) < len(records)  # the broker's ListOffsets quirk is there

    for run in (1, 2):
        out = tmp_path / f"run{run}.jsonl"
        code, summary = _run(api, broker.bootstrap, topic, group_id, out)

        assert code == 1  # one record was invalid
        assert (summary["read"], summary["valid"], summary["invalid"]) == (61, 60, 1)
        assert summary["end_offsets"] == {"0": 30, "1": 31, "2": 0}
        assert summary["cached_high_watermarks"] == summary["end_offsets"]
        (error,) = summary["errors"]
        assert (error["partition"], error["offset"]) == (1, 30)
        assert "high" in error["error"]
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["event_id"] for r in written) == sorted(str(s.event_id) for s in scores)


def test_on_a_topic_with_no_records_yet_the_example_reads_nothing_and_succeeds(
    api: str, broker: EmbeddedBroker, tmp_topic: Any, group_id: str, tmp_path: Path
) -> None:
    topic = tmp_topic("empty", partitions=2)

    code, summary = _run(api, broker.bootstrap, topic, group_id, tmp_path / "none.jsonl")

    assert code == 0
    assert (summary["read"], summary["invalid"]) == (0, 0)
    assert summary["end_offsets"] == {"0": 0, "1": 0}
    assert (tmp_path / "none.jsonl").read_text() == ""
