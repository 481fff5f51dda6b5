"""The consumers' repository on SQLite and PostgreSQL: idempotent writes, hold-outs, the task
queue's order, one claimer, consent."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import (
    Settled,
    claim_nudge,
    claim_nudges,
    has_consent,
    list_tasks,
    pending_nudge_ids,
    pending_nudges,
    settle_claimed,
    store_nudges,
    store_tasks,
)
from infra.db import ConsentRecord, FollowUpTask, Nudge
from schemas.events import NudgeRequested, TaskCreated

SID = "sup_" + "d" * 32
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def nudge(key: str = "welcome", supporter: str = SID, **fields: object) -> NudgeRequested:
    values: dict[str, object] = {
        "event_time": T0,
        "nudge_id": f"{key}:{supporter}",
        "supporter_id": supporter,
        "channel": "email",
        "template": "welcome",
        "rule": key,
        "cause_event_id": uuid.uuid4(),
        "context": {"area": "Hackney"},
    }
    return NudgeRequested.model_validate({**values, **fields})


def task(
    supporter: str = SID, due: datetime = T0 + timedelta(hours=48), **fields: object
) -> TaskCreated:
    values: dict[str, object] = {
        "event_time": T0,
        "task_id": f"first-meeting-follow-up:{supporter}",
        "supporter_id": supporter,
        "kind": "first_meeting_follow_up",
        "reason": "Came to a first meeting",
        "due_at": due,
        "area": "Hackney",
        "rule": "first-meeting",
        "cause_event_id": uuid.uuid4(),
    }
    return TaskCreated.model_validate({**values, **fields})


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_store_nudges_is_idempotent_on_the_nudge_id(sessions: sessionmaker[Session]) -> None:
    first, other = nudge("welcome"), nudge("invite-signer", channel="sms")
    redelivered = nudge("welcome", template="something-else")  # same key, new cause

    with sessions.begin() as session:
        assert store_nudges(session, [first, other]) == 2
    with sessions.begin() as session:
        assert store_nudges(session, [redelivered, first]) == 0
    with sessions.begin() as session:
        assert store_nudges(session, []) == 0

    assert count(sessions, Nudge) == 2
    with sessions() as session:
        row = session.get(Nudge, first.nudge_id)
        assert row is not None
        assert (row.status, row.template, row.cause_event_id) == (
            "pending",
            "welcome",
            first.cause_event_id,
        )
        assert row.context == {"area": "Hackney"}
        assert row.requested_at == T0
        assert set(pending_nudge_ids(session, 10)) == {first.nudge_id, other.nudge_id}


def test_a_batch_repeating_a_nudge_stores_it_once(sessions: sessionmaker[Session]) -> None:
    first = nudge("welcome")
    with sessions.begin() as session:
        assert store_nudges(session, [first, nudge("welcome"), first]) == 1
    assert count(sessions, Nudge) == 1


def test_store_tasks_is_idempotent_on_the_task_id(sessions: sessionmaker[Session]) -> None:
    jo, sam = task(), task("sup_" + "e" * 32, due=T0 + timedelta(hours=1))

    with sessions.begin() as session:
        assert store_tasks(session, [jo, sam, jo]) == 2
    with sessions.begin() as session:
        assert store_tasks(session, [task(), sam]) == 0

    assert count(sessions, FollowUpTask) == 2
    with sessions() as session:
        listed = list_tasks(session, 10)
    assert [t["task_id"] for t in listed] == [sam.task_id, jo.task_id]  # by due time
    assert listed[1]["due_at"] == (T0 + timedelta(hours=48)).isoformat()
    assert {t["status"] for t in listed} == {"open"}
    assert {t["priority"] for t in listed} == {"normal"}  # the default


def test_a_held_out_nudge_is_recorded_but_never_pending(sessions: sessionmaker[Session]) -> None:
    held = nudge("invite-signer", channel="sms", template="invite_next_meeting", holdout=True)
    sent = nudge("welcome")

    with sessions.begin() as session:
        assert store_nudges(session, [held, sent]) == 2
    with sessions.begin() as session:  # redelivered, even claiming to be in no hold-out group
        assert store_nudges(session, [held, nudge("invite-signer", holdout=False)]) == 0

    with sessions() as session:
        row = session.get(Nudge, held.nudge_id)
        assert row is not None
        assert row.status == "held_out"
        assert row.reason is not None and "hold-out group of rule invite-signer" in row.reason
        assert (row.channel, row.template, row.requested_at) == ("sms", "invite_next_meeting", T0)
        other = session.get(Nudge, sent.nudge_id)
        assert other is not None and (other.status, other.reason) == ("pending", None)
        assert pending_nudge_ids(session, 10) == [sent.nudge_id]
        assert [n.nudge_id for n in pending_nudges(session, 10, [held.nudge_id])] == []
    with sessions.begin() as session:
        assert claim_nudges(session, [held.nudge_id, sent.nudge_id]) == {sent.nudge_id}
        assert claim_nudge(session, held.nudge_id) is None
    with sessions() as session:
        row = session.get(Nudge, held.nudge_id)
        assert row is not None and row.status == "held_out"


def test_tasks_keep_their_priority_and_held_out_ones_stay_out_of_the_queue(
    sessions: sessionmaker[Session],
) -> None:
    urgent = task(priority="high")
    held = task("sup_" + "e" * 32, priority="high", holdout=True)

    with sessions.begin() as session:
        assert store_tasks(session, [urgent, held]) == 2
    with sessions.begin() as session:
        assert store_tasks(session, [task("sup_" + "e" * 32, priority="high")]) == 0

    with sessions() as session:
        rows = {t.task_id: t for t in session.scalars(select(FollowUpTask))}
        assert (rows[urgent.task_id].status, rows[urgent.task_id].priority) == ("open", "high")
        assert (rows[held.task_id].status, rows[held.task_id].priority) == ("held_out", "high")
        assert [t["task_id"] for t in list_tasks(session, 10)] == [urgent.task_id]
        assert [t["task_id"] for t in list_tasks(session, 10, status="held_out")] == [held.task_id]
        everything = list_tasks(session, 10, status=None)
    assert {(t["task_id"], t["status"], t["priority"]) for t in everything} == {
        (urgent.task_id, "open", "high"),
        (held.task_id, "held_out", "high"),
    }


def test_the_queue_is_by_due_time_then_priority_high_first(
    sessions: sessionmaker[Session],
) -> None:
    due = T0 + timedelta(hours=24)
    specs = [  # (supporter digit, hours after ``due``, priority), stored in a scrambled order
        ("1", 0, "low"),
        ("2", 0, "high"),
        ("3", -1, "low"),  # due sooner: first, whatever its priority
        ("4", 0, "normal"),
        ("5", 1, "high"),  # due later: last, whatever its priority
        ("6", 0, "high"),
    ]
    with sessions.begin() as session:
        store_tasks(
            session,
            [task("sup_" + d * 32, due + timedelta(hours=h), priority=p) for d, h, p in specs],
        )

    with sessions() as session:
        listed = list_tasks(session, 10)
        assert [t["task_id"] for t in list_tasks(session, 3)] == [t["task_id"] for t in listed[:3]]
    assert [(t["supporter_id"][-1], t["priority"]) for t in listed] == [
        ("3", "low"),
        ("2", "high"),  # ties of due time and priority: by task id
        ("6", "high"),
        ("4", "normal"),
        ("1", "low"),
        ("5", "high"),
    ]


def test_claim_nudge_moves_pending_to_sending_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        store_nudges(session, [nudge()])
    nudge_id = f"welcome:{SID}"

    with sessions.begin() as session:
        claimed = claim_nudge(session, nudge_id)
        assert claimed is not None and claimed.status == "sending"
    with sessions.begin() as session:
        assert claim_nudge(session, nudge_id) is None
        assert claim_nudge(session, "no-such-nudge") is None
        assert pending_nudge_ids(session, 10) == []


def test_of_two_racing_claimers_exactly_one_wins(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Two connections: the first claims and holds its transaction open; the second's claim
    blocks on the row (or the SQLite write lock) until the first commits, then finds it taken."""
    with sessions.begin() as session:
        store_nudges(session, [nudge()])
    nudge_id = f"welcome:{SID}"
    results: dict[str, object] = {}

    def second_claimer() -> None:
        try:
            with sessions.begin() as session:
                results["second"] = claim_nudge(session, nudge_id)
        except Exception as exc:  # surfaced below
            results["error"] = exc

    with sessions.begin() as first:
        results["first"] = claim_nudge(first, nudge_id)
        racer = threading.Thread(target=second_claimer)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second claim should wait for the first transaction"
    racer.join(30)

    assert not racer.is_alive()
    assert "error" not in results, results.get("error")
    assert results["first"] is not None
    assert results["second"] is None
    with sessions() as session:
        row = session.get(Nudge, nudge_id)
        assert row is not None and row.status == "sending"


@pytest.mark.parametrize("claimers", [2, 8])
def test_many_threads_racing_for_one_nudge_yield_one_winner(
    sessions: sessionmaker[Session], claimers: int
) -> None:
    with sessions.begin() as session:
        store_nudges(session, [nudge()])
    nudge_id = f"welcome:{SID}"
    start = threading.Barrier(claimers)
    wins: list[bool] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            start.wait(10)
            with sessions.begin() as session:
                wins.append(claim_nudge(session, nudge_id) is not None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(wins) == [False] * (claimers - 1) + [True]


def test_batch_claims_racing_over_many_nudges_never_share_one(
    sessions: sessionmaker[Session],
) -> None:
    """One claimer takes the five oldest and holds its transaction; the other asks for all ten,
    waits, and gets exactly the other five."""
    supporters = [f"sup_{n:032x}" for n in range(10)]
    for supporter in supporters:  # one by one, so created_at orders them
        with sessions.begin() as session:
            store_nudges(session, [nudge(supporter=supporter)])
    results: dict[str, object] = {}

    def second_claimer() -> None:
        try:
            with sessions.begin() as session:
                results["second"] = claim_nudges(session, pending_nudge_ids(session, 10))
        except Exception as exc:  # surfaced below
            results["error"] = exc

    with sessions.begin() as first:
        results["first"] = claim_nudges(first, pending_nudge_ids(first, 5))
        racer = threading.Thread(target=second_claimer)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second claim should wait for the first transaction"
    racer.join(30)

    assert "error" not in results, results.get("error")
    everyone = {f"welcome:{s}" for s in supporters}
    assert results["first"] == {f"welcome:{s}" for s in supporters[:5]}
    assert results["second"] == everyone - results["first"]  # type: ignore[operator]
    with sessions() as session:
        assert pending_nudge_ids(session, 20) == []


def _consent(
    session: Session, granted: bool, at: datetime, channel: str = "email", who: str = SID
) -> None:
    session.add(
        ConsentRecord(
            supporter_id=who,
            channel=channel,
            granted=granted,
            source="test",
            recorded_at=at,
        )
    )


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], False),
        ([(True, 0)], True),
        ([(False, 0)], False),
        ([(True, 0), (False, 1)], False),
        ([(True, 0), (False, 1), (True, 2)], True),
        # inserted newest first: the time decides, not the insertion order
        ([(False, 5), (True, 1)], False),
        ([(True, 5), (False, 1)], True),
    ],
    ids=["none", "granted", "withdrawn", "then-withdrawn", "re-granted", "late-old", "late-grant"],
)
def test_has_consent_follows_the_newest_record(
    sessions: sessionmaker[Session], records: list[tuple[bool, int]], expected: bool
) -> None:
    with sessions.begin() as session:
        for granted, hours in records:
            _consent(session, granted, T0 + timedelta(hours=hours))
        # Noise that must not count: another channel, another supporter.
        _consent(session, not expected, T0 + timedelta(days=9), channel="sms")
        _consent(session, not expected, T0 + timedelta(days=9), who="sup_" + "f" * 32)

    with sessions() as session:
        assert has_consent(session, SID, "email") is expected


def test_has_consent_breaks_a_time_tie_by_the_later_record(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        _consent(session, True, T0)
        _consent(session, False, T0)
    with sessions() as session:
        assert has_consent(session, SID, "email") is False


def test_settle_claimed_settles_a_claimed_batch_in_one_statement(
    sessions: sessionmaker[Session],
) -> None:
    other = "sup_" + "e" * 32
    with sessions.begin() as session:
        store_nudges(session, [nudge(), nudge(supporter=other)])
    sent_at = T0 + timedelta(minutes=1)
    with sessions.begin() as session:
        ids = claim_nudges(session, [f"welcome:{SID}", f"welcome:{other}"])
        settle_claimed(
            session,
            [
                Settled(f"welcome:{SID}", "sent", sent_at=sent_at, recipient="r1"),
                Settled(f"welcome:{other}", "skipped", "no_consent", "x" * 600),
            ],
        )
    assert len(ids) == 2
    with sessions() as session:
        sent = session.get(Nudge, f"welcome:{SID}")
        skipped = session.get(Nudge, f"welcome:{other}")
        assert sent is not None and skipped is not None
        assert (sent.status, sent.sent_at, sent.recipient) == ("sent", sent_at, "r1")
        assert (skipped.status, skipped.reason_code) == ("skipped", "no_consent")
        assert skipped.reason == "x" * 500 and skipped.sent_at is None


def test_settle_claimed_refuses_a_batch_with_a_nudge_not_claimed(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        store_nudges(session, [nudge()])
    with pytest.raises(RuntimeError, match="no longer 'sending'"), sessions.begin() as session:
        settle_claimed(session, [Settled(f"welcome:{SID}", "sent")])
    with sessions() as session:
        assert pending_nudge_ids(session, 10) == [f"welcome:{SID}"]
