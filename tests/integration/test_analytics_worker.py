"""The analytics worker against the embedded broker: real records in, the analytics.* topics
read back, a malformed record dead-lettered, and nothing of an erased supporter after the
erasure. The catalogue's topics are shared with other tests: this one looks only at its own
supporters' pseudonyms and its own bad record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import TopicPartition

from infra.broker import EmbeddedBroker
from infra.kafka import ConsumerSettings, ledger_producer
from infra.topic_reader import read_to_end
from infra.topics import admin_client
from schemas.catalogue import ANALYTICS_TOPICS
from schemas.events import (
    EngagementScored,
    Event,
    EventAttended,
    MessageStatus,
    NudgeRequested,
    PetitionSigned,
    SupporterErased,
    SupporterSignup,
    TaskCreated,
)
from streams.analytics import AnalyticsKey, pseudonym
from streams.analytics_worker import AnalyticsWorker
from tests.integration.running import Running
from tests.polling import wait_until

KEY = AnalyticsKey("integration-analytics-key", "k7")
WHEN = datetime(2025, 3, 6, 19, 0, tzinfo=UTC)
SHORT_JOIN = ConsumerSettings(session_timeout_ms=6_000)


class Published:
    """Records sent one at a time and acknowledged, with the last offset per partition."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = ledger_producer(bootstrap)
        self.last: dict[TopicPartition, int] = {}

    def send(self, topic: str, key: str, value: bytes) -> Any:
        meta = self.producer.send(topic, key=key.encode(), value=value).get(30)
        tp = TopicPartition(meta.topic, meta.partition)
        self.last[tp] = max(self.last.get(tp, -1), meta.offset)
        return meta

    def event(self, event: Event) -> Any:
        return self.send(event.topic, event.key(), event.model_dump_json().encode())


@pytest.fixture
def published(broker: EmbeddedBroker) -> Iterator[Published]:
    p = Published(broker.bootstrap)
    yield p
    p.producer.close(timeout=5)


def wait_committed(bootstrap: str, group_id: str, produced: dict[TopicPartition, int]) -> None:
    """Until the group has committed past every record produced: the worker commits only once
    what it published for them is acknowledged, so it is all on the analytics topics."""
    admin = admin_client(bootstrap)
    try:

        def caught_up() -> bool:
            committed = admin.list_group_offsets(group_id).get(group_id, {})
            return all(tp in committed and committed[tp].offset > o for tp, o in produced.items())

        wait_until(f"group {group_id} to commit", caught_up, 60, 0.1)
    finally:
        admin.close()


def read_back(bootstrap: str, people: set[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every analytics record of ``people``, by topic, as (record key, value)."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {t: [] for t in ANALYTICS_TOPICS}
    for record in read_to_end(bootstrap, ANALYTICS_TOPICS):
        value = json.loads(record.value)
        if value["person"] in people:
            found[record.topic].append((record.key.decode(), value))
    return found


def test_the_worker_mirrors_real_records_dead_letters_bad_ones_and_respects_erasure(
    broker: EmbeddedBroker, published: Published, group_id: str
) -> None:
    bootstrap = broker.bootstrap
    a, b = f"sup_{uuid.uuid4().hex}", f"sup_{uuid.uuid4().hex}"
    person_a, person_b = pseudonym(KEY, a), pseudonym(KEY, b)
    cause = uuid.uuid4()
    signup = SupporterSignup(
        event_time=WHEN, supporter_id=a, district="E8", area="Hackney", consent_email=True
    )
    attended = EventAttended(
        event_time=WHEN + timedelta(hours=1), supporter_id=a, meeting_id="m-1", district="E8"
    )
    sources: list[Event] = [
        signup,
        attended,
        EngagementScored(
            event_time=attended.event_time,
            supporter_id=a,
            score=3.5,
            rung="attendee",
            previous_rung="joined",
            cause_event_id=attended.event_id,
            half_life_days=90,
        ),
        NudgeRequested(
            event_time=attended.event_time,
            nudge_id=f"thanks:{a}",
            supporter_id=a,
            channel="email",
            template="thanks",
            rule="thanks",
            cause_event_id=cause,
            holdout=True,
        ),
        TaskCreated(
            event_time=attended.event_time,
            task_id=f"call:{a}",
            supporter_id=a,
            kind="call",
            reason="first meeting",
            due_at=attended.event_time + timedelta(days=2),
            rule="call",
            cause_event_id=cause,
        ),
        MessageStatus(
            event_time=attended.event_time,
            nudge_id=f"thanks:{a}",
            supporter_id=a,
            channel="email",
            rule="thanks",
            status="held",
            reason_code="quiet_hours",
        ),
        PetitionSigned(event_time=WHEN, supporter_id=b, petition_id="p-1"),
        SupporterErased(event_time=WHEN + timedelta(hours=2), supporter_id=b),
    ]
    for event in sources:
        published.event(event)
    bad = published.send("petition.signed", a, json.dumps({"supporter_id": a}).encode())

    worker = AnalyticsWorker(bootstrap, KEY, group_id=group_id, consumer_settings=SHORT_JOIN)
    running = Running(worker)
    try:
        wait_committed(bootstrap, group_id, published.last)
        # An erasure while it runs: once it is processed, a later action of theirs is dropped.
        published.event(SupporterErased(event_time=WHEN + timedelta(days=1), supporter_id=a))
        wait_committed(bootstrap, group_id, published.last)
        later = PetitionSigned(event_time=WHEN + timedelta(days=2), supporter_id=a, petition_id="x")
        published.event(later)
        wait_committed(bootstrap, group_id, published.last)
    finally:
        running.stop()

    found = read_back(bootstrap, {person_a, person_b})
    actions = {v["event_id"]: v for _, v in found["analytics.actions"]}
    assert set(actions) == {str(signup.event_id), str(attended.event_id)}  # not b's, not later
    assert actions[str(signup.event_id)]["district"] == "E8"
    assert actions[str(attended.event_id)]["meeting_id"] == "m-1"
    assert all(key == v["person"] and v["key_id"] == "k7" for key, v in found["analytics.actions"])
    (nudge,) = (v for _, v in found["analytics.nudges"])
    assert (nudge["nudge_id"], nudge["holdout"]) == (f"thanks:{person_a}", True)
    (task,) = (v for _, v in found["analytics.tasks"])
    assert (task["task_id"], task["holdout"]) == (f"call:{person_a}", False)
    (message,) = (v for _, v in found["analytics.messages"])
    assert (message["status"], message["reason_code"]) == ("held", "quiet_hours")
    (score,) = (v for _, v in found["analytics.scores"])
    assert (score["rung"], score["cause_event_id"]) == ("attendee", str(attended.event_id))
    assert sorted(v["person"] for _, v in found["analytics.erased"]) == sorted([person_a, person_b])
    wire = json.dumps(found)
    assert a not in wire and b not in wire

    letters = [
        json.loads(r.value)
        for r in read_to_end(bootstrap, ["deadletter"])
        if json.loads(r.value)["consumer"] == "analytics"
    ]
    (letter,) = [x for x in letters if (x["partition"], x["offset"]) == (bad.partition, bad.offset)]
    assert letter["source_topic"] == "petition.signed"
    assert "event_time" in letter["error"]
    assert letter["payload"] == json.dumps({"supporter_id": a})
