"""A worker's metrics port: /healthz answers 503 with the reason when the health rule says so
(on an explicit clock), and a real stream worker reports its records, lag and restore there;
its group's lag is read from the fetch high watermarks and the committed offsets. The
dispatcher counts sender calls by provider and result; nudges are counted by status."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from consumers.messages import SendError
from consumers.metrics import refresh_nudges
from consumers.rendering import TemplateBook
from infra.broker import EmbeddedBroker
from infra.metrics import Liveness, MetricsServer, serve_metrics
from infra.topic_reader import group_lags
from streams.worker import SUBSCRIBED
from tests.integration.test_dispatch import INVITE, WELCOME, RecordingSender, dispatcher, seed
from tests.integration.test_stream_worker import (
    Producer,
    RunningWorker,
    attended,
    petition,
    signup,
    wait_committed,
)
from tests.polling import wait_until

STALE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics scrape, by name and labels."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


@pytest.fixture
def served() -> Iterator[tuple[Liveness, Clock, str]]:
    clock = Clock()
    liveness = Liveness("test-health", STALE_S, clock)
    server = serve_metrics("127.0.0.1", 0, liveness.verdict)
    try:
        yield liveness, clock, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def test_healthz_answers_503_with_the_reason_for_a_stale_batch_while_there_is_lag(
    served: tuple[Liveness, Clock, str],
) -> None:
    liveness, clock, url = served
    liveness.polled(assigned=2, lag=0)
    liveness.batch()
    answer = httpx.get(f"{url}/healthz", timeout=5)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"

    liveness.polled(assigned=2, lag=40)
    clock.now += STALE_S + 2
    liveness.polled(assigned=2, lag=40)
    answer = httpx.get(f"{url}/healthz", timeout=5)
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unhealthy",
        "reason": "no batch for 32 s while lag is 40",
        "role": "test-health",
        "assigned": 2,
        "lag": 40,
        "last_batch_age_s": 32,
    }
    found = samples(url)
    assert found[("engage_healthy", (("role", "test-health"),))] == 0
    assert found[("engage_lag_records", (("role", "test-health"),))] == 40
    assert httpx.get(f"{url}/nothing", timeout=5).status_code == 404

    liveness.batch()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert samples(url)[("engage_healthy", (("role", "test-health"),))] == 1


def test_a_port_in_use_is_refused_at_start(served: tuple[Liveness, Clock, str]) -> None:
    liveness, _, url = served
    with pytest.raises(OSError):
        MetricsServer("127.0.0.1", int(url.rsplit(":", 1)[1]), liveness.verdict)


def test_a_stream_worker_reports_records_lag_and_restore_on_its_metrics_port(
    broker: EmbeddedBroker, group_id: str
) -> None:
    producer = Producer(broker.bootstrap)
    try:
        for n in range(3):
            sid = f"sup_{uuid.uuid4().hex}"
            for event in (signup(sid, n), petition(sid, n + 1), attended(sid, n + 2)):
                producer.event(event)
    finally:
        producer.close()

    first = RunningWorker(broker.bootstrap, group_id)
    server = serve_metrics("127.0.0.1", 0, first.worker.liveness.verdict)
    url = f"http://127.0.0.1:{server.port}"
    try:
        wait_committed(broker.bootstrap, group_id, producer.last)

        lag_sample = (
            "engage_stream_lag_records",
            (("partition", "0"), ("topic", "event.attended")),
        )

        def caught_up() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            # No lag, measured on every partition: a partition's lag is known once the worker
            # has fetched from it (the fetch's high watermark), which can trail the assignment.
            liveness = first.worker.liveness
            if not liveness.assigned or liveness.lag != 0:
                return None
            found = samples(url)
            return found if lag_sample in found else None

        found = wait_until("the worker to report no lag", caught_up, 60, 0.1)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        for topic in ("supporter.signup", "petition.signed", "event.attended"):
            assert total(found, "engage_stream_records_in_total", topic=topic) >= 3
        assert total(found, "engage_stream_records_out_total", topic="engagement.scored") >= 9
        assert total(found, "engage_stream_batch_seconds_count") > 0
        assert total(found, "engage_assigned_partitions", role="stream") > 0
        assert found[lag_sample] == 0
    finally:
        first.stop()
        server.close()

    # Everything is committed: the group has no lag, and its committed offsets count every record.
    lag = group_lags(broker.bootstrap, {group_id: SUBSCRIBED})[group_id]
    assert lag.lag == 0
    assert lag.committed >= sum(last + 1 for last in producer.last.values())

    # A new member of the group restores the state up to the committed offsets.
    second = RunningWorker(broker.bootstrap, group_id)
    server = serve_metrics("127.0.0.1", 0, second.worker.liveness.verdict)
    url = f"http://127.0.0.1:{server.port}"
    try:

        def restored() -> tuple[float, float] | None:
            found = samples(url)
            to_fold = total(found, "engage_stream_restore_records_to_fold")
            folded = total(found, "engage_stream_restore_records_folded")
            return (to_fold, folded) if to_fold > 0 and folded == to_fold else None

        to_fold, _ = wait_until("the restore to finish", restored, 60, 0.2)
        assert to_fold == lag.committed
    finally:
        second.stop()
        server.close()


def sender_calls(provider: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "engage_sender_calls_total", {"provider": provider, "result": result}
    )
    return value or 0.0


def test_sender_calls_are_counted_by_provider_and_result_and_nudges_by_status(
    sessions: sessionmaker[Session],
) -> None:
    seed(sessions)
    provider = f"fake-{uuid.uuid4().hex[:8]}"  # counters are per process: a provider of its own
    email = RecordingSender(provider)
    sms = RecordingSender(provider, error=SendError("429 Too Many Requests", retryable=True))
    assert refresh_nudges(sessions) == {
        "pending": 2,
        "held": 0,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "ambiguous": 0,
        "skipped": 0,
    }

    stage = dispatcher(sessions, TemplateBook(), email=email, sms=sms)
    assert stage.dispatch(WELCOME) == "sent"
    assert stage.dispatch(INVITE) == "pending"  # a retry later
    assert sender_calls(provider, "sent") == 1
    assert sender_calls(provider, "retryable") == 1
    assert sender_calls(provider, "refused") == 0
    counts = refresh_nudges(sessions)
    assert (counts["sent"], counts["pending"]) == (1, 1)
    assert REGISTRY.get_sample_value("engage_nudges", {"status": "sent"}) == 1


def test_a_message_written_to_the_local_outbox_counts_as_the_outbox_sending_it(
    sessions: sessionmaker[Session],
) -> None:
    seed(sessions)
    before = sender_calls("outbox", "sent")
    stage = dispatcher(sessions, TemplateBook())  # no provider: the local outbox
    assert stage.dispatch_pending() == 2
    assert sender_calls("outbox", "sent") == before + 2
