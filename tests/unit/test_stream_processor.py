"""EngagementProcessor without a broker: records out, dead letters, the fold order across
co-partitioned topics, restore by replay, ticks; and the StreamWorker around it, with fakes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from schemas.catalogue import INPUT_TOPICS
from schemas.events import (
    DeadLetter,
    EngagementScored,
    Event,
    EventAttended,
    LadderChanged,
    NudgeRequested,
    PetitionSigned,
    SupporterSignup,
    TaskCreated,
)
from streams.engagement import NOT_PARSED, Engine, fold_order
from streams.playbook import load_playbook
from streams.worker import EngagementProcessor, StreamWorker, _Rebalance
from tests.unit.engine_events import default_engine

SID = "sup_" + "9" * 32
T0 = datetime(2025, 6, 1, 19, 0, tzinfo=UTC)
MODELS = {
    m.topic: m for m in (EngagementScored, LadderChanged, NudgeRequested, TaskCreated, DeadLetter)
}
SIGNUPS, PETITIONS, MEETINGS = "supporter.signup", "petition.signed", "event.attended"


@dataclass(frozen=True)
class Message:
    """The parts of an aiokafka ConsumerRecord the processor reads. ``timestamp`` is in
    milliseconds; -1 is Kafka's "no timestamp"."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1


def ms(hours: float) -> int:
    """A record timestamp ``hours`` after T0, in milliseconds."""
    return int((T0 + timedelta(hours=hours)).timestamp() * 1000)


def msg(
    offset: int, event: Event, late_hours: float = 0.0, arrived: float | None = None
) -> Message:
    """``event`` on the log, having reached it ``late_hours`` after it happened (or at
    ``arrived`` hours after T0)."""
    stamp = (
        ms(arrived)
        if arrived is not None
        else int((event.event_time + timedelta(hours=late_hours)).timestamp() * 1000)
    )
    return Message(offset, event.key().encode(), event.model_dump_json().encode(), stamp)


def signup(hours: float = 0, sid: str = SID) -> SupporterSignup:
    return SupporterSignup(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="jo@example.org",
        consent_email=True,
        consent_sms=True,
    )


def attended(hours: float = 0, sid: str = SID) -> EventAttended:
    return EventAttended(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="jo@example.org",
        meeting_id="m-1",
    )


def petition(hours: float = 0, sid: str = SID) -> PetitionSigned:
    return PetitionSigned(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="jo@example.org",
        petition_id="p-1",
    )


def processor(
    *assigned: tuple[str, int], committed: dict[tuple[str, int], int] | None = None
) -> EngagementProcessor:
    """A processor; with ``assigned``, as the rebalance listener leaves it."""
    p = EngagementProcessor(default_engine())
    if assigned or committed:
        p.reset(assigned or list(committed or {}), committed or {})
    return p


def decode(records: list[tuple[str, bytes, bytes]]) -> list[Any]:
    out = []
    for topic, key, value in records:
        parsed = MODELS[topic].model_validate_json(value)
        assert key.decode() == parsed.key()
        out.append(parsed)
    return out


def rules(records: list[tuple[str, bytes, bytes]]) -> list[str]:
    return [
        o.nudge_id if isinstance(o, NudgeRequested) else o.task_id
        for o in decode(records)
        if isinstance(o, NudgeRequested | TaskCreated)
    ]


def causes(records: list[tuple[str, bytes, bytes]]) -> list[str]:
    """The events scored, in the order they were folded."""
    return [str(o.cause_event_id) for o in decode(records) if isinstance(o, EngagementScored)]


def buffered(p: EngagementProcessor, partition: int) -> list[tuple[str, int]]:
    return [(topic, message.offset) for _, topic, message, _ in p.buffers.get(partition, [])]


def _window(cooldown_days: int, event: Event) -> int:
    return (int(event.event_time.timestamp()) - 946_684_800) // (cooldown_days * 86_400)


# --- records out ------------------------------------------------------------------------------


def test_live_events_become_records_for_the_output_topics() -> None:
    p = processor()
    joined, event = signup(-1), attended()

    p.process(SIGNUPS, 0, [msg(0, joined)])
    records = p.process(MEETINGS, 0, [msg(1, event)])

    assert [t for t, _, _ in records] == [
        "engagement.scored",
        "ladder.changed",
        "nudge.requested",
        "task.created",
    ]
    assert rules(records) == [f"first-meeting-thanks:{SID}", f"first-meeting-follow-up:{SID}"]
    assert all(o.cause_event_id == event.event_id for o in decode(records))
    assert p.folded == 2


def test_an_event_arriving_too_late_is_scored_but_fires_no_rule() -> None:
    p = processor()
    p.process(SIGNUPS, 0, [msg(0, signup(-200))])

    records = p.process(MEETINGS, 0, [msg(1, attended(), late_hours=400)])

    assert [t for t, _, _ in records] == ["engagement.scored", "ladder.changed"]


def test_a_record_without_a_timestamp_has_no_arrival_time() -> None:
    """Timestamp -1 (or 0): nothing to measure late or early by, so nothing is refused."""
    p = processor()
    far_ahead = attended(24 * 30)
    undated = Message(0, SID.encode(), far_ahead.model_dump_json().encode(), -1)

    records = p.process(MEETINGS, 0, [undated])

    assert [type(o) for o in decode(records)] == [EngagementScored, LadderChanged, TaskCreated]


# --- dead letters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"{not json", "ValidationError"),
        (b"", "ValidationError"),
        (None, "Error"),
        (json.dumps({"event_time": T0.isoformat(), "email": "x@y.org"}).encode(), "meeting_id"),
        (signup().model_dump_json().encode(), "type"),
    ],
    ids=["not-json", "empty", "tombstone", "missing-fields", "wrong-topic"],
)
def test_a_bad_value_becomes_a_dead_letter_in_its_place_and_its_neighbours_go_on(
    value: bytes | None, error: str
) -> None:
    p = processor()
    before, after = attended(-24), attended(0)
    bad = Message(41, b"k-bad", value, ms(-12))

    records = p.process(MEETINGS, 3, [msg(40, before), bad, msg(42, after)])

    outputs = decode(records)
    assert [type(o) for o in outputs] == [
        EngagementScored,
        LadderChanged,
        TaskCreated,
        DeadLetter,
        EngagementScored,
    ]
    letter = outputs[3]
    assert (letter.source_topic, letter.partition, letter.offset, letter.source_key) == (
        MEETINGS,
        3,
        41,
        "k-bad",
    )
    assert error in letter.error
    assert letter.payload == (value or b"").decode()
    assert letter.consumer == "stream"
    assert causes(records) == [str(before.event_id), str(after.event_id)]
    assert p.done == {(MEETINGS, 3): 43}


def test_a_bad_value_is_dead_lettered_in_arrival_order_across_topics() -> None:
    """Given topic by topic, the dead letter still comes out where its record arrived."""
    p = processor()
    first, last = signup(-2), attended(0)
    p.add(SIGNUPS, 0, [msg(0, first)])
    p.add(MEETINGS, 0, [msg(0, last)])
    p.add(PETITIONS, 0, [Message(0, b"k-bad", b"junk", ms(-1))])

    records = p.release(0)

    assert [type(o) for o in decode(records)][:3] == [EngagementScored, NudgeRequested, DeadLetter]
    assert causes(records) == [str(first.event_id), str(last.event_id)]
    assert p.done == {(SIGNUPS, 0): 1, (PETITIONS, 0): 1, (MEETINGS, 0): 1}


def test_a_bad_value_that_waits_is_dead_lettered_only_when_released() -> None:
    p = processor((MEETINGS, 0), (PETITIONS, 0))
    p.add(MEETINGS, 0, [Message(5, b"k-bad", b"junk", ms(2))])

    assert p.release(0, caught_up={(MEETINGS, 0)}) == []  # petition.signed: nothing seen yet
    assert buffered(p, 0) == [(MEETINGS, 5)]
    (letter,) = decode(p.release(0, caught_up={(MEETINGS, 0), (PETITIONS, 0)}))

    assert isinstance(letter, DeadLetter) and letter.offset == 5


def test_an_event_dated_far_after_its_arrival_is_dead_lettered_with_the_reason() -> None:
    p = processor()
    future = attended(48)
    arrived = Message(7, future.key().encode(), future.model_dump_json().encode(), ms(0))

    records = p.process(MEETINGS, 1, [arrived, msg(8, attended(1))])

    letter, *rest = decode(records)
    assert isinstance(letter, DeadLetter)
    assert (letter.source_topic, letter.partition, letter.offset) == (MEETINGS, 1, 7)
    assert letter.error == (
        "FutureEvent: event_time is 48.0 h after the event arrived (tolerance 24 h)"
    )
    assert letter.payload == future.model_dump_json()
    scored = rest[0]
    assert isinstance(scored, EngagementScored)
    assert (scored.rung, scored.previous_rung) == ("attendee", None)  # the first that counted


MEETING_FIELDS = {"event_time": T0.isoformat(), "supporter_id": SID, "email": "jo@example.org"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json jo@example.org", "ValidationError: record: json_invalid"),
        (json.dumps(MEETING_FIELDS).encode(), "ValidationError: meeting_id: missing"),
        (
            json.dumps({**MEETING_FIELDS, "meeting_id": "m", "area": 5}).encode(),
            "ValidationError: area: string_type",
        ),
        (
            json.dumps({**MEETING_FIELDS, "meeting_id": "m", "jo@example.org": 1}).encode(),
            "ValidationError: unexpected field: extra_forbidden",
        ),
    ],
    ids=["not-json", "missing-field", "bad-field", "extra-field"],
)
def test_a_dead_letter_is_logged_with_where_the_record_was_and_why_quoting_no_input(
    value: bytes, reason: str
) -> None:
    p = processor()

    with capture_logs(processors=[merge_contextvars]) as logs:
        (letter,) = decode(p.process(MEETINGS, 3, [Message(41, b"k-bad", value, ms(0))]))

    assert isinstance(letter, DeadLetter) and letter.offset == 41
    assert logs == [
        {
            "event": "stream.dead_letter",
            "log_level": "warning",
            "topic": MEETINGS,
            "partition": 3,
            "offset": 41,
            "reason": reason,
        }
    ]
    assert "example.org" not in repr(logs).lower()  # the input's email is nowhere in the log


def test_a_refused_event_is_logged_with_its_event_and_supporter_ids() -> None:
    p = processor()
    future = attended(48)
    arrived = Message(7, SID.encode(), future.model_dump_json().encode(), ms(0))

    with capture_logs(processors=[merge_contextvars]) as logs:
        (letter,) = decode(p.process(MEETINGS, 1, [arrived]))

    assert isinstance(letter, DeadLetter)
    (line,) = logs
    assert {k: v for k, v in line.items() if k != "reason"} == {
        "event": "stream.dead_letter",
        "log_level": "warning",
        "topic": MEETINGS,
        "partition": 1,
        "offset": 7,
        "event_id": str(future.event_id),
        "supporter_id": SID,
    }
    assert line["reason"].startswith("FutureEvent: event_time is 48.0 h after the event arrived")


@pytest.mark.parametrize(
    ("when", "stamp"),
    [
        (datetime(1999, 12, 31, 23, 59, tzinfo=UTC), ms(0)),
        (datetime(1970, 1, 1, tzinfo=UTC), -1),
        (datetime(2200, 1, 1, tzinfo=UTC), -1),  # no arrival time: not refused as "future"
    ],
    ids=["before-2000", "long-before", "after-2136"],
)
def test_an_event_dated_outside_the_times_the_state_keeps_is_dead_lettered(
    when: datetime, stamp: int
) -> None:
    p = processor()
    event, later = attended().model_copy(update={"event_time": when}), attended()
    outside = Message(3, SID.encode(), event.model_dump_json().encode(), stamp)

    records = p.process(MEETINGS, 0, [outside, msg(4, later)])

    letter = decode(records)[0]
    assert isinstance(letter, DeadLetter) and letter.offset == 3
    assert letter.error.startswith(f"RefusedEvent: event_time {when.isoformat()} is outside")
    assert causes(records) == [str(later.event_id)]  # its neighbour is folded


class BrokenRule:
    """The default playbook with a bug in deciding rules: a KeyError, as a new rule reading a
    field that is not there would raise. A wrapper, not a subclass: the compiled Engine (mypyc,
    streams/compiled.py) cannot be subclassed by interpreted code."""

    def __init__(self) -> None:
        self.engine = Engine(load_playbook())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def apply(self, state: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        self.engine.apply(state, event, *args, **kwargs)  # folded; its rules are decided...
        raise KeyError("meeting_title")  # ...by a rule with a bug


@pytest.mark.parametrize("committed", [0, 8], ids=["live", "replayed"])
def test_a_bug_in_the_fold_is_raised_naming_the_record_and_is_not_dead_lettered(
    committed: int,
) -> None:
    p = EngagementProcessor(cast(Engine, BrokenRule()))
    p.reset([(SIGNUPS, 2)], {(SIGNUPS, 2): committed})
    joined = signup()  # consenting: the welcome rule is decided

    with capture_logs(processors=[merge_contextvars]) as logs, pytest.raises(KeyError) as raised:
        p.process(SIGNUPS, 2, [msg(7, joined)])

    assert raised.value.__notes__ == [
        f"while folding {SIGNUPS} partition 2 offset 7 (event_id {joined.event_id})"
    ]
    assert logs == [
        {
            "event": "stream.fold_failed",
            "log_level": "error",
            "error": "KeyError",
            "live": committed <= 7,
            "topic": SIGNUPS,
            "partition": 2,
            "offset": 7,
            "event_id": str(joined.event_id),
            "supporter_id": SID,
        }
    ]


# --- the fold order ---------------------------------------------------------------------------


def test_fold_order_is_arrival_then_event_time_then_topic_then_offset() -> None:
    keys = [
        fold_order(2000, 0, MEETINGS, 0),
        fold_order(1000, 900, SIGNUPS, 9),
        fold_order(1000, 500, MEETINGS, 3),
        fold_order(1000, 500, SIGNUPS, 7),
        fold_order(1000, 500, SIGNUPS, 6),
        fold_order(1000, NOT_PARSED, MEETINGS, 8),
    ]

    assert sorted(keys) == [keys[5], keys[4], keys[3], keys[2], keys[1], keys[0]]
    assert INPUT_TOPICS.index(SIGNUPS) < INPUT_TOPICS.index(MEETINGS)


CONSENT_THEN_MEETING = {
    "signup arrived first": (msg(0, signup(-1)), msg(0, attended())),
    # Posted together (the same arrival millisecond): the earlier event first.
    "posted together": (msg(0, signup(-1), arrived=1), msg(0, attended(), arrived=1)),
    # The same moment too: the topic's rank decides, supporter.signup before event.attended.
    "the same moment": (msg(0, signup(0), arrived=1), msg(0, attended(0), arrived=1)),
}


@pytest.mark.parametrize("topics_in", [[SIGNUPS, MEETINGS], [MEETINGS, SIGNUPS]], ids=str)
@pytest.mark.parametrize("pair", CONSENT_THEN_MEETING.values(), ids=CONSENT_THEN_MEETING.keys())
def test_a_signup_and_a_meeting_fold_in_fold_order_whichever_topic_is_given_first(
    topics_in: list[str], pair: tuple[Message, Message]
) -> None:
    """The signup carries the email consent the first-meeting thanks needs."""
    given = dict(zip([SIGNUPS, MEETINGS], pair, strict=True))
    p = processor((SIGNUPS, 0), (MEETINGS, 0))
    first, second = topics_in

    assert p.process(first, 0, [given[first]], caught_up={(first, 0)}) == []  # the other: unseen
    records = p.process(second, 0, [given[second]], caught_up={(SIGNUPS, 0), (MEETINGS, 0)})

    assert rules(records) == [
        f"welcome:{SID}",
        f"first-meeting-thanks:{SID}",
        f"first-meeting-follow-up:{SID}",
    ]


@pytest.mark.parametrize("topics_in", [[SIGNUPS, MEETINGS], [MEETINGS, SIGNUPS]], ids=str)
def test_added_together_and_released_the_order_given_does_not_matter(
    topics_in: list[str],
) -> None:
    given = {SIGNUPS: msg(0, signup(-1)), MEETINGS: msg(0, attended())}
    p = processor()
    for topic in topics_in:
        p.add(topic, 0, [given[topic]])

    released = p.release_all(None)

    assert {partition for partition, _ in released} == {0}
    assert f"first-meeting-thanks:{SID}" in rules([record for _, record in released])


def test_a_meeting_that_arrived_before_the_signup_gets_no_thanks_whatever_the_topic_order() -> None:
    """Arrival decides, not the order the topics are read in: the meeting was folded before
    any consent had arrived, so the thanks is suppressed, the follow-up task fires."""
    p = processor()
    p.add(SIGNUPS, 0, [msg(0, signup(-1), arrived=2)])
    p.add(MEETINGS, 0, [msg(0, attended(), arrived=1)])

    records = p.release(0)

    assert rules(records) == [f"first-meeting-follow-up:{SID}", f"welcome:{SID}"]


def test_a_record_waits_while_a_co_partitioned_topic_partition_behind_has_only_older_records() -> (
    None
):
    p = processor((MEETINGS, 0), (PETITIONS, 0))
    meeting = attended(2)
    early, middle, late = petition(0), petition(1), petition(3)
    meetings_done = {(MEETINGS, 0)}

    p.add(PETITIONS, 0, [msg(0, early)])
    p.add(MEETINGS, 0, [msg(0, meeting)])
    # petition.signed is behind and has seen only T0: it may still bring a record before 2 h.
    assert p.release(0, meetings_done) == []
    assert buffered(p, 0) == [(PETITIONS, 0), (MEETINGS, 0)]
    assert p.done == {(PETITIONS, 0): 0, (MEETINGS, 0): 0}

    p.add(PETITIONS, 0, [msg(1, middle)])
    released = p.release(0, meetings_done)  # everything before 1 h can go
    assert causes(released) == [str(early.event_id)]
    assert buffered(p, 0) == [(PETITIONS, 1), (MEETINGS, 0)]
    assert p.done == {(PETITIONS, 0): 1, (MEETINGS, 0): 0}

    p.add(PETITIONS, 0, [msg(2, late)])
    released = p.release(0, meetings_done)
    assert causes(released) == [str(middle.event_id), str(meeting.event_id)]
    assert buffered(p, 0) == [(PETITIONS, 2)]
    assert p.done == {(PETITIONS, 0): 2, (MEETINGS, 0): 1}

    released = p.release(0, {(MEETINGS, 0), (PETITIONS, 0)})  # caught up: nothing can come
    assert causes(released) == [str(late.event_id)]
    assert buffered(p, 0) == []
    assert p.done == {(PETITIONS, 0): 3, (MEETINGS, 0): 1}
    assert p.folded == 4


def test_a_topic_partition_behind_that_has_seen_nothing_holds_back_the_partition() -> None:
    p = processor((MEETINGS, 0), (PETITIONS, 0), (SIGNUPS, 0))
    p.add(MEETINGS, 0, [msg(0, attended(-48)), msg(1, attended())])

    assert p.release(0, {(MEETINGS, 0), (PETITIONS, 0)}) == []
    assert len(p.release(0, {(MEETINGS, 0), (PETITIONS, 0), (SIGNUPS, 0)})) > 0
    assert p.done == {(MEETINGS, 0): 2}


def test_a_record_of_the_same_millisecond_as_the_frontier_waits() -> None:
    """A record that arrived in the very millisecond a lagging topic-partition has reached
    may still be preceded by one from it (by event time, or topic rank)."""
    p = processor((MEETINGS, 0), (SIGNUPS, 0))
    p.add(SIGNUPS, 0, [msg(0, signup(-5), arrived=1)])
    p.add(MEETINGS, 0, [msg(0, attended(), arrived=1)])

    assert p.release(0, {(MEETINGS, 0)}) == []
    assert len(buffered(p, 0)) == 2


def test_a_topic_partition_behind_holds_back_only_its_own_partition_number() -> None:
    p = processor((SIGNUPS, 0), (PETITIONS, 0), (SIGNUPS, 1), (PETITIONS, 1))
    other = "sup_" + "8" * 32
    p.add(SIGNUPS, 0, [msg(0, signup(-1))])
    p.add(SIGNUPS, 1, [msg(0, signup(-1, sid=other))])
    p.add(PETITIONS, 1, [msg(0, petition(sid=other))])
    all_but_petitions_0 = {(SIGNUPS, 0), (SIGNUPS, 1), (PETITIONS, 1)}

    released = p.release_all(all_but_petitions_0)

    assert {partition for partition, _ in released} == {1}
    assert rules([record for _, record in released]) == [
        f"welcome:{other}",
        f"invite-signer:{other}:{_window(30, petition())}",
    ]
    assert buffered(p, 0) == [(SIGNUPS, 0)]  # petition.signed 0 has brought nothing yet
    assert p.done[(SIGNUPS, 1)] == p.done[(PETITIONS, 1)] == 1


def test_done_is_the_lowest_offset_still_buffered_else_the_next_to_fetch() -> None:
    p = processor((MEETINGS, 0), (PETITIONS, 0))
    p.add(MEETINGS, 0, [msg(10, attended(0)), msg(11, attended(30)), msg(12, attended(60))])
    p.add(PETITIONS, 0, [msg(20, petition(25))])

    p.release(0, {(MEETINGS, 0)})  # petition.signed behind at 25 h: only the first meeting

    assert buffered(p, 0) == [(PETITIONS, 20), (MEETINGS, 11), (MEETINGS, 12)]
    assert p.done == {(MEETINGS, 0): 11, (PETITIONS, 0): 20}
    p.release(0)
    assert p.done == {(MEETINGS, 0): 13, (PETITIONS, 0): 21}


# --- restore by replay ------------------------------------------------------------------------


def test_replay_up_to_the_committed_offset_restores_state_without_emitting() -> None:
    p = processor(committed={(MEETINGS, 0): 1})
    first, second = attended(), attended(48)

    records = p.process(MEETINGS, 0, [msg(0, first), msg(1, second)])

    outputs = decode(records)
    assert [type(o) for o in outputs] == [EngagementScored]  # no second first-meeting task
    assert outputs[0].cause_event_id == second.event_id
    assert (outputs[0].previous_rung, outputs[0].rung) == ("attendee", "attendee")


def test_a_future_event_before_the_restore_point_is_not_dead_lettered_again() -> None:
    p = processor(committed={(MEETINGS, 0): 1})
    future = attended(48)
    arrived = Message(0, None, future.model_dump_json().encode(), ms(0))

    assert p.process(MEETINGS, 0, [arrived]) == []


def test_a_redelivered_event_after_the_restore_point_causes_nothing() -> None:
    p = processor(committed={(MEETINGS, 0): 1})
    event = attended()

    assert p.process(MEETINGS, 0, [msg(0, event), msg(1, event)]) == []


def test_a_bad_value_before_the_restore_point_is_not_dead_lettered_again() -> None:
    p = processor(committed={(MEETINGS, 0): 1})

    assert p.process(MEETINGS, 0, [Message(0, None, b"junk", ms(0))]) == []
    assert p.done == {(MEETINGS, 0): 1}
    assert not p.restoring(0)


def test_co_partitioned_state_is_shared_across_input_topics() -> None:
    """State is per partition number, so a petition on petition.signed partition 2 sees the
    meeting replayed from event.attended partition 2."""
    p = processor(committed={(MEETINGS, 2): 1, (PETITIONS, 2): 0})

    assert p.process(MEETINGS, 2, [msg(0, attended())]) == []
    records = p.process(PETITIONS, 2, [msg(0, petition(5))])

    assert rules(records) == []  # attended before: no SMS invite
    assert [type(o) for o in decode(records)] == [EngagementScored]


def test_replayed_and_live_records_fold_together_in_fold_order() -> None:
    """A live petition given before the replayed meeting that arrived earlier: the meeting is
    folded first (silently), so the petition sends no invite to someone who came."""
    p = processor(committed={(MEETINGS, 0): 2, (PETITIONS, 0): 0, (SIGNUPS, 0): 1})
    p.add(PETITIONS, 0, [msg(0, petition(5))])
    p.add(SIGNUPS, 0, [msg(0, signup(-1))])
    assert p.restoring(0)
    p.add(MEETINGS, 0, [msg(0, attended()), msg(1, attended(3))])

    records = p.release(0, {(MEETINGS, 0), (PETITIONS, 0), (SIGNUPS, 0)})

    assert rules(records) == []  # no invite, and no repeated welcome or first-meeting outputs
    assert [type(o) for o in decode(records)] == [EngagementScored]
    assert p.done == {(MEETINGS, 0): 2, (PETITIONS, 0): 1, (SIGNUPS, 0): 1}
    assert not p.restoring(0)


def test_a_partition_restores_only_once_its_replayed_records_are_released() -> None:
    p = processor(committed={(MEETINGS, 0): 1, (PETITIONS, 0): 0})
    p.add(MEETINGS, 0, [msg(0, attended())])

    assert p.release(0, set()) == []  # petition.signed has brought nothing yet
    assert p.restoring(0)
    p.release(0, {(MEETINGS, 0), (PETITIONS, 0)})
    assert not p.restoring(0)


def test_reset_forgets_the_previous_assignment() -> None:
    p = processor()
    p.process(SIGNUPS, 0, [msg(0, signup(-1))])
    p.process(MEETINGS, 0, [msg(0, attended())])
    p.add(PETITIONS, 0, [msg(0, petition(-1))])
    p.reset([(MEETINGS, 0)], {})
    assert (p.states, p.buffers, p.done) == ({}, {}, {})

    p.process(SIGNUPS, 0, [msg(0, signup(-1))])
    records = p.process(PETITIONS, 0, [msg(0, petition(1))])

    assert rules(records) == [f"invite-signer:{SID}:{_window(30, petition(1))}"]


# --- the timer --------------------------------------------------------------------------------


def regular_records(partition: int) -> dict[TopicPartition, list[Message]]:
    """A consenting signup, then three meetings on three days: a regular."""
    return {
        TopicPartition(SIGNUPS, partition): [msg(0, signup(-30 * 24))],
        TopicPartition(MEETINGS, partition): [msg(i, attended(24 * i)) for i in range(3)],
    }


def feed(p: EngagementProcessor, batches: dict[TopicPartition, list[Message]]) -> None:
    for tp, messages in batches.items():
        p.process(tp.topic, tp.partition, messages)


def test_tick_asks_each_restored_partition_what_time_has_caused() -> None:
    p = processor()
    feed(p, regular_records(1))
    quiet_60_days = (T0 + timedelta(days=62)).timestamp()

    ticked = p.tick(quiet_60_days)

    assert [partition for partition, _ in ticked] == [1, 1]
    records = [record for _, record in ticked]
    assert [t for t, _, _ in records] == ["nudge.requested", "task.created"]
    assert all(key == SID.encode() for _, key, _ in records)
    assert [o.rule for o in decode(records)] == [
        "re-engage-lapsing-regular",
        "check-in-lapsing-regular",
    ]
    assert p.tick(quiet_60_days + 60) == []


def test_tick_leaves_a_partition_being_replayed_alone() -> None:
    p = processor(committed={(MEETINGS, 1): 4})
    feed(p, regular_records(1))  # three of the four meetings to replay

    assert p.tick((T0 + timedelta(days=62)).timestamp()) == []


# --- the worker around it, with fake Kafka clients --------------------------------------------


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, key: bytes, value: bytes, timestamp: int | None) -> object:
        self.records.append((key, value))
        return object()  # metadata: there was room

    def close(self) -> None:
        pass


class FakeProducer:
    """The AIOKafkaProducer calls the worker makes: ``send`` and ``create_batch``/``send_batch``,
    each a coroutine returning the future of the acknowledgement (here already acked)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.partitions: list[int | None] = []

    @staticmethod
    def _acked() -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        self.partitions.append(partition)
        return self._acked()

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, partition: int
    ) -> asyncio.Future[None]:
        for key, value in batch.records:
            self.sent.append((topic, key, value))
            self.partitions.append(partition)
        return self._acked()


class FakeConsumer:
    """AIOKafkaConsumer's assignment, positions, high watermarks, committed offsets and
    commits. Unless told otherwise, every topic-partition seen is assigned and read to its end
    (its high watermark is its position)."""

    def __init__(self, assigned: set[TopicPartition] | None = None) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.assigned = assigned
        self.positions: dict[TopicPartition, int] = {}
        self.highwaters: dict[TopicPartition, int | None] = {}
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.sought: list[TopicPartition] = []
        self.paused: set[TopicPartition] = set()

    def fetched(self, batches: dict[TopicPartition, list[Message]]) -> None:
        for tp, messages in batches.items():
            if messages:
                self.positions[tp] = messages[-1].offset + 1

    def assignment(self) -> set[TopicPartition]:
        if self.assigned is not None:
            return self.assigned
        return set(self.positions) | set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp, self.positions.get(tp))

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.sought.extend(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append(tp)
        self.positions[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused = set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused = set()


def fake_worker(
    assigned: set[TopicPartition] | None = None, clock: float = 0.0
) -> tuple[StreamWorker, FakeProducer, FakeConsumer]:
    worker = StreamWorker("unused:9092", default_engine(), clock=lambda: clock)
    producer, consumer = FakeProducer(), FakeConsumer(assigned)
    worker.producer, worker.consumer = producer, consumer
    return worker, producer, consumer


async def handle(worker: StreamWorker, batches: dict[TopicPartition, list[Message]]) -> None:
    """One pass of the worker's loop body (after a getmany that returned ``batches``), then
    wait for its outputs and commit to settle."""
    worker.consumer.fetched(batches)
    await worker._handle(batches)
    await worker.settle()


@pytest.mark.parametrize(("co_partitioned", "partition"), [(True, 1), (False, None)])
def test_the_worker_publishes_then_commits_past_each_batch(
    co_partitioned: bool, partition: int | None
) -> None:
    worker, producer, consumer = fake_worker()
    worker.co_partitioned = co_partitioned
    batches = {TopicPartition(MEETINGS, 1): [msg(7, attended()), msg(8, attended(48))]}

    asyncio.run(handle(worker, batches))

    assert [t for t, _, _ in producer.sent].count("engagement.scored") == 2
    assert set(producer.partitions) == {partition}  # co-partitioned: the input's
    assert consumer.commits == [{TopicPartition(MEETINGS, 1): 9}]
    assert worker.processed == 2


def test_the_worker_publishes_what_its_clock_says_time_has_caused() -> None:
    worker, producer, _ = fake_worker(clock=(T0 + timedelta(days=62)).timestamp())
    worker.co_partitioned = True
    asyncio.run(handle(worker, regular_records(1)))
    sent_before = len(producer.sent)

    asyncio.run(worker._tick())

    ticked = producer.sent[sent_before:]
    assert [t for t, _, _ in ticked] == ["nudge.requested", "task.created"]
    assert set(producer.partitions[sent_before:]) == {1}


def test_caught_up_is_every_assigned_topic_partition_handed_over_to_its_high_watermark() -> None:
    read, behind, unknown = (TopicPartition(MEETINGS, 0), TopicPartition(SIGNUPS, 0),
                             TopicPartition(PETITIONS, 0))  # fmt: skip
    prefetched, empty = TopicPartition("event.rsvp", 0), TopicPartition("consent.changed", 0)
    worker, _, consumer = fake_worker(assigned={read, behind, unknown, prefetched, empty})
    worker.processor.add(MEETINGS, 0, [msg(i, attended(i)) for i in range(5)])
    worker.processor.add(SIGNUPS, 0, [msg(0, signup()), msg(1, signup(1))])
    # aiokafka's position counts records it has fetched ahead and not yet returned: the
    # records handed over say what has arrived.
    consumer.positions.update({read: 5, behind: 2, prefetched: 4})
    consumer.highwaters.update({read: 5, behind: 3, unknown: None, prefetched: 4, empty: 0})

    assert asyncio.run(worker._caught_up()) == {(MEETINGS, 0), ("consent.changed", 0)}


def test_the_worker_holds_records_until_the_co_partitioned_topics_catch_up() -> None:
    meetings, signups = TopicPartition(MEETINGS, 0), TopicPartition(SIGNUPS, 0)
    worker, producer, consumer = fake_worker(assigned={meetings, signups})
    worker.co_partitioned = True
    worker.processor.reset([(MEETINGS, 0), (SIGNUPS, 0)], {})
    consumer.highwaters[signups] = 1  # the signup is on the log, not fetched yet

    asyncio.run(handle(worker, {meetings: [msg(0, attended())]}))
    assert producer.sent == []
    assert consumer.commits == [{meetings: 0}]  # not past the meeting that waits

    asyncio.run(handle(worker, {signups: [msg(0, signup(-1))]}))  # it arrived first

    assert rules(producer.sent) == [
        f"welcome:{SID}",
        f"first-meeting-thanks:{SID}",
        f"first-meeting-follow-up:{SID}",
    ]
    assert consumer.commits[-1] == {meetings: 1, signups: 1}
    assert worker.processed == 2


def test_the_worker_releases_waiting_records_without_a_new_batch() -> None:
    """The loop calls _handle with an empty batch while records wait, so they go as soon as
    the lagging topic-partition is known to have nothing more."""
    meetings, signups = TopicPartition(MEETINGS, 0), TopicPartition(SIGNUPS, 0)
    worker, producer, consumer = fake_worker(assigned={meetings, signups})
    worker.processor.reset([(MEETINGS, 0), (SIGNUPS, 0)], {})
    consumer.highwaters[signups] = None

    asyncio.run(handle(worker, {meetings: [msg(0, attended())]}))
    assert producer.sent == []
    consumer.highwaters[signups] = 0  # a fetch answered: the topic-partition is empty
    asyncio.run(handle(worker, {}))

    assert rules(producer.sent) == [f"first-meeting-follow-up:{SID}"]
    assert consumer.commits[-1] == {meetings: 1}


def test_offsets_of_partitions_lost_in_a_rebalance_are_not_committed() -> None:
    kept, lost = TopicPartition(MEETINGS, 0), TopicPartition(MEETINGS, 1)
    worker, _, consumer = fake_worker(assigned={kept})
    batches = {kept: [msg(3, attended())], lost: [msg(5, attended(2))]}

    asyncio.run(handle(worker, batches))

    assert consumer.commits == [{kept: 4}]


def test_an_assignment_replays_each_partition_from_the_start_up_to_the_commit() -> None:
    meetings, petitions = TopicPartition(MEETINGS, 0), TopicPartition(PETITIONS, 0)
    worker, producer, consumer = fake_worker()
    consumer.committed_offsets = {meetings: 1}

    async def assign_then_handle() -> None:
        await _Rebalance(worker).on_partitions_assigned({meetings, petitions})
        await handle(worker, {meetings: [msg(0, attended())], petitions: [msg(0, petition(5))]})

    asyncio.run(assign_then_handle())

    assert set(consumer.sought) == {meetings, petitions}
    assert worker.processor.restore_until == {(MEETINGS, 0): 1}
    assert [t for t, _, _ in producer.sent] == ["engagement.scored"]  # the petition's only
    assert rules(producer.sent) == []  # attended before: no invite
    assert consumer.commits == [{meetings: 1, petitions: 1}]


def test_a_bug_in_the_fold_stops_the_worker_before_it_publishes_or_commits_anything() -> None:
    worker, producer, consumer = fake_worker()
    worker.processor = EngagementProcessor(cast(Engine, BrokenRule()))
    batches = {
        TopicPartition(MEETINGS, 0): [Message(0, b"k-bad", b"junk", ms(-2))],  # bad input too
        TopicPartition(SIGNUPS, 0): [msg(0, signup())],
    }

    with pytest.raises(KeyError):
        asyncio.run(handle(worker, batches))

    assert producer.sent == []  # not even the junk's dead letter: the batch is not published
    assert consumer.commits == []


def test_a_broker_error_settling_on_revocation_is_logged_with_its_traceback() -> None:
    worker, _, _ = fake_worker()

    async def unacked() -> None:
        raise KafkaTimeoutError()

    async def revoke() -> None:
        worker._settling = asyncio.create_task(unacked())
        await _Rebalance(worker).on_partitions_revoked(set())

    with capture_logs() as logs:
        asyncio.run(revoke())

    assert [(e["event"], e.get("exc_info")) for e in logs] == [
        ("stream.commit_failed", True),
        ("stream.revoked", None),
    ]
    assert worker.failed is None


def test_a_bug_settling_on_revocation_is_kept_for_the_worker_loop_to_raise() -> None:
    worker, _, _ = fake_worker()

    async def broken() -> None:
        raise KeyError("offsets")

    async def revoke() -> None:
        worker._settling = asyncio.create_task(broken())
        await _Rebalance(worker).on_partitions_revoked(set())

    asyncio.run(revoke())

    assert isinstance(worker.failed, KeyError)
