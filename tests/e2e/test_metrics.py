"""`engage up` as a user starts it: every process serves /metrics and /healthz on the port the
run file names, the counters move as events go through, and `engage status` says each process
is healthy. A stream worker killed and restarted reports its restore there."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ENGAGE, Pipeline, first_journey
from tests.polling import wait_until

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def events(day: datetime) -> list[dict[str, Any]]:
    """A signup with consent, a petition and a first meeting: two emails and a task."""
    person = {"email": "bea.khan@example.org", "phone": "07912 345678", "first_name": "Bea"}
    return first_journey(day, person)


def test_each_process_serves_metrics_and_health_during_a_run(pipeline: Pipeline) -> None:
    metrics: dict[str, str] = pipeline.run["metrics"]
    assert set(metrics) == {"relay", "stream", "consume", "analytics", "mart"}
    assert len({url for url in metrics.values()} | {pipeline.url}) == 6  # a port each

    day = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=30)
    response = pipeline.post(events(day))
    assert response.status_code == 202, response.text

    def sent() -> Samples | None:
        found = scrape(metrics["consume"])
        return found if total(found, "engage_nudges", status="sent") >= 2 else None

    consume = wait_until("two nudges sent, counted by status", sent, 90, 0.5, lambda: "")
    assert total(consume, "engage_sender_calls_total", provider="outbox", result="sent") >= 2
    for topic in ("nudge.requested", "task.created", "engagement.scored"):
        assert total(consume, "engage_consumers_records_in_total", topic=topic) >= 1, topic
    assert total(consume, "engage_consumers_stored_total", table="tasks") == 1
    assert total(consume, "engage_consumers_batch_seconds_count") > 0
    assert total(consume, "engage_assigned_partitions", role="consume") > 0

    stream = scrape(metrics["stream"])
    for topic in ("supporter.signup", "petition.signed", "event.attended"):
        assert total(stream, "engage_stream_records_in_total", topic=topic) == 1, topic
    assert total(stream, "engage_stream_records_out_total", topic="engagement.scored") >= 3
    assert total(stream, "engage_stream_records_out_total", topic="nudge.requested") >= 2
    assert total(stream, "engage_stream_batch_seconds_count") > 0
    assert total(stream, "engage_last_batch_timestamp_seconds", role="stream") > 0
    assert total(stream, "engage_stream_lag_records") == 0

    def mirrored() -> Samples | None:
        found = scrape(metrics["analytics"])
        out = total(found, "engage_analytics_records_out_total", topic="analytics.actions")
        return found if out >= 3 else None

    analytics = wait_until("the three actions on analytics.actions", mirrored, 30, 0.2)
    assert total(analytics, "engage_analytics_records_in_total", topic="supporter.signup") == 1
    assert total(analytics, "engage_analytics_batch_seconds_count") > 0

    def in_the_mart() -> Samples | None:
        found = scrape(metrics["mart"])
        return found if total(found, "engage_mart_stored_total", table="mart_events") >= 3 else None

    mart = wait_until("the three actions stored in the mart", in_the_mart, 30, 0.2)
    assert total(mart, "engage_mart_records_in_total", topic="analytics.actions") >= 3
    assert total(mart, "engage_mart_batch_seconds_count") > 0

    def statuses_published() -> Samples | None:  # the dispatcher's decisions, via the ledger
        found = scrape(metrics["relay"])
        published = total(found, "engage_relay_records_out_total", topic="message.status")
        return found if published >= 2 else None

    relay = wait_until("message.status published by the relay", statuses_published, 30, 0.2)
    assert total(relay, "engage_relay_records_out_total", topic="supporter.signup") == 1
    assert total(relay, "engage_relay_batch_seconds_count") > 0

    api = scrape(pipeline.url)
    assert total(api, "process_cpu_seconds_total") > 0  # the API's own process

    for name, url in {**metrics, "api": pipeline.url}.items():
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["status"] == "ok"

    status = subprocess.run(
        [ENGAGE, "status"], env=pipeline.env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.split("process   health\n", 1)[1].splitlines()
    assert {line.split()[0]: line.split()[1] for line in lines} == {
        "api": "healthy",
        "relay": "healthy",
        "stream": "healthy",
        "consume": "healthy",
        "analytics": "healthy",
        "mart": "healthy",
    }

    # The stream worker killed: its successor, on the same metrics port, restores the records
    # the group has committed (every input record so far) before it carries on: those after
    # the last snapshot, or all of them if none was saved yet (docs/stream-stage.md).
    folded_before = total(scrape(metrics["stream"]), "engage_stream_records_in_total")
    pid = pipeline.run["pids"]["stream"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        "the stream worker restarted", lambda: pipeline.run["pids"]["stream"] != pid, 30, 0.5
    )

    def restored() -> Samples | None:
        try:
            found = scrape(metrics["stream"])
        except httpx.HTTPError:  # not serving yet
            return None
        to_fold = total(found, "engage_stream_restore_records_to_fold")
        loaded = total(found, "engage_stream_restore_supporters_loaded")
        assigned = total(found, "engage_assigned_partitions", role="stream")
        # Assigned is not yet restored: with a history behind it, a restore either loaded a
        # snapshot or has records to fold (both gauges are still 0 just after the assignment).
        started = assigned > 0 and (to_fold > 0 or loaded > 0)
        done = started and total(found, "engage_stream_restore_records_folded") == to_fold
        return found if done else None

    found = wait_until("the restarted worker's restore", restored, 90, 0.5)
    to_fold = total(found, "engage_stream_restore_records_to_fold")
    loaded = total(found, "engage_stream_restore_supporters_loaded")
    assert folded_before >= 3
    assert to_fold == folded_before or (to_fold < folded_before and loaded > 0)
    assert httpx.get(f"{metrics['stream']}/healthz", timeout=5).status_code == 200
