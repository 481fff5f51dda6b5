"""The organisers' follow-up queue on SQLite and PostgreSQL, on a clock the tests move: routing
by postcode district (re-routed when a group's areas change; the national queue for districts
nobody owns), claims that expire, escalation to a group's leads, one open task per supporter and
kind, each outcome's effect on the task, the log, consent and the suppression list, and that
another group's task is not found."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

import infra.db
from consumers.erasure import forget_outputs
from consumers.organising import directory
from consumers.organising.queue import QueueItem
from consumers.organising.rules import Acting, Conflict, NotFound, Refused
from consumers.organising.service import FollowUps
from consumers.repository import has_consent, store_scores, store_tasks
from engage import cli
from engage.wiring import engine_for
from infra.consent import suppressed
from infra.db import (
    FollowUpTask,
    LedgerEvent,
    Supporter,
    SupporterAlias,
    TaskEvent,
    make_engine,
    session_factory,
)
from producers.ledger import record_events
from schemas.events import EngagementScored, TaskCreated, TaskOutcome, event_model
from streams.engagement import SupporterState
from tests.factories import consent_record

KEY = "test-identity-key"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLAIM = timedelta(minutes=30)
QUEUE = FollowUps(claim_for=CLAIM, identity_key=KEY, append=record_events)
JO, SAM, ALEX, KIM = (f"sup_{n:032x}" for n in (1, 2, 3, 4))
JO_PHONE = "+447911123001"
PHONES = {JO: JO_PHONE, SAM: "+447911123002", ALEX: "+447911123003", KIM: None}


def task(sid: str, kind: str = "first_meeting_follow_up", **fields: object) -> TaskCreated:
    values: dict[str, object] = {
        "event_time": T0,
        "task_id": f"{kind}:{sid}",
        "supporter_id": sid,
        "kind": kind,
        "reason": "Came to a first meeting: call to thank them",
        "due_at": T0 + timedelta(hours=48),
        "area": "Hackney",
        "rule": "first-meeting-follow-up",
        "cause_event_id": uuid.uuid4(),
    }
    return TaskCreated.model_validate({**values, **fields})


@pytest.fixture
def hackney(sessions: sessionmaker[Session]) -> None:
    """Hackney owns E8 and E9 (Asha leads, Ben organises); Lambeth owns SW9 (Cat leads);
    Ada is an admin in no group. Jo lives in E8, Sam in SW9, Alex in N1 (nobody's), Kim has
    no postcode. Each has a task; Jo and Sam consented to email and SMS at signup."""
    with sessions.begin() as session:
        directory.add_group(session, "hackney", "Hackney", ["e8", "E9"], T0)
        directory.add_group(session, "lambeth", "Lambeth", ["SW9"], T0)
        directory.add_organiser(session, "asha", "Asha", ["hackney"], T0, leads=["hackney"])
        directory.add_organiser(session, "ben", "Ben", ["hackney"], T0)
        directory.add_organiser(session, "cat", "Cat", [], T0, leads=["lambeth"])
        directory.add_organiser(session, "ada", "Ada", [], T0, is_admin=True)
        for sid, postcode in ((JO, "E8 1AA"), (SAM, "SW9 8XY"), (ALEX, "N1 9GU"), (KIM, None)):
            session.add(
                Supporter(
                    supporter_id=sid,
                    email=f"{sid[-1]}@example.org",
                    phone=PHONES[sid],
                    first_name=f"Person {sid[-1]}",
                    postcode=postcode,
                )
            )
        for sid in (JO, SAM):
            session.add(consent_record(sid, "email", T0 - timedelta(days=30)))
            session.add(consent_record(sid, "sms", T0 - timedelta(days=30)))
        session.flush()
        assert store_tasks(session, [task(JO), task(SAM), task(ALEX), task(KIM)], T0) == 4


def who(sessions: sessionmaker[Session], organiser_id: str) -> Acting:
    with sessions() as session:
        return QUEUE.organiser(session, organiser_id)


def queue_ids(
    sessions: sessionmaker[Session], organiser_id: str, now: datetime, national: bool = False
) -> list[str]:
    with sessions.begin() as session:
        view = QUEUE.queue(session, who(sessions, organiser_id), now, national=national)
    return [item.task_id for item in view.items]


def history(sessions: sessionmaker[Session], task_id: str) -> list[tuple[str, str, datetime]]:
    with sessions() as session:
        rows = session.scalars(
            select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
        )
        return [(r.action, r.by, r.at) for r in rows]


def stored(sessions: sessionmaker[Session], task_id: str) -> FollowUpTask:
    with sessions() as session:
        row = session.get(FollowUpTask, task_id)
        assert row is not None
        return row


def ledger(sessions: sessionmaker[Session], topic: str) -> list[dict[str, object]]:
    with sessions() as session:
        rows = session.scalars(
            select(LedgerEvent).where(LedgerEvent.topic == topic).order_by(LedgerEvent.seq)
        )
        return [event_model(topic).model_validate_json(r.payload).model_dump() for r in rows]


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_a_task_goes_to_the_group_owning_its_district(sessions: sessionmaker[Session]) -> None:
    assert queue_ids(sessions, "asha", T0) == [f"first_meeting_follow_up:{JO}"]
    assert queue_ids(sessions, "ben", T0) == [f"first_meeting_follow_up:{JO}"]
    assert queue_ids(sessions, "cat", T0) == [f"first_meeting_follow_up:{SAM}"]
    with sessions.begin() as session:
        view = QUEUE.queue(session, who(sessions, "asha"), T0)
    (item,) = view.items
    assert (item.group_id, item.district, item.first_name) == ("hackney", "E8", "Person 1")
    assert item.phone is None  # only on a task the organiser has claimed
    assert [(g.group_id, g.districts) for g in view.groups] == [("hackney", ["E8", "E9"])]


OPERATIONS: dict[str, Callable[[Session, Acting, str], object]] = {
    "claim": lambda s, w, t: QUEUE.claim(s, w, t, T0),
    "show": lambda s, w, t: QUEUE.task(s, w, t, T0),
    "release": lambda s, w, t: QUEUE.release(s, w, t, T0),
    "done": lambda s, w, t: QUEUE.record_outcome(s, w, t, "reached_not_now", T0),
}


@pytest.mark.usefixtures("hackney")
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("task_id", [f"first_meeting_follow_up:{JO}", "no-such-task"])
def test_another_groups_task_is_not_found_like_a_task_that_does_not_exist(
    sessions: sessionmaker[Session], operation: str, task_id: str
) -> None:
    cat = who(sessions, "cat")  # Lambeth's lead; Jo's task is Hackney's
    with sessions.begin() as session, pytest.raises(NotFound) as missing:
        OPERATIONS[operation](session, cat, task_id)
    assert str(missing.value) == f"no task {task_id!r}"
    assert stored(sessions, f"first_meeting_follow_up:{JO}").status == "open"
    assert history(sessions, f"first_meeting_follow_up:{JO}")[1:] == []
    with sessions.begin() as session, pytest.raises(NotFound):
        QUEUE.leaders(session, cat, "hackney")


@pytest.mark.usefixtures("hackney")
def test_changing_a_groups_areas_reroutes_its_open_tasks(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(ValueError, match=r"E8 \(hackney\)"):
        directory.set_areas(session, "lambeth", ["SW9", "E8"], T0)

    with sessions.begin() as session:
        view = directory.change_areas(session, "lambeth", T0, add=["e8"], move=True)
    assert view.districts == ["E8", "SW9"]

    assert queue_ids(sessions, "cat", T0) == [
        f"first_meeting_follow_up:{JO}",
        f"first_meeting_follow_up:{SAM}",
    ]
    assert queue_ids(sessions, "asha", T0) == []
    with sessions.begin() as session:
        directory.set_areas(session, "hackney", [], T0)
        empty = QUEUE.queue(session, who(sessions, "asha"), T0)
    assert empty.empty_because is not None and "no areas" in empty.empty_because


@pytest.mark.usefixtures("hackney")
def test_a_district_nobody_owns_goes_to_the_national_queue_visibly(
    sessions: sessionmaker[Session],
) -> None:
    national = [f"first_meeting_follow_up:{ALEX}", f"first_meeting_follow_up:{KIM}"]
    assert sorted(queue_ids(sessions, "ada", T0, national=True)) == national
    assert queue_ids(sessions, "ada", T0) == []  # an admin in no group has no own queue
    with sessions.begin() as session, pytest.raises(Refused):
        QUEUE.queue(session, who(sessions, "asha"), T0, national=True)
    with sessions() as session:
        summary = directory.national_summary(session)
        groups = {g.group_id: g.open_tasks for g in directory.list_groups(session)}
    assert summary.open_tasks == 2 and summary.districts == {"-": 1, "N1": 1}
    assert groups == {"hackney": 1, "lambeth": 1}

    with sessions.begin() as session:  # a group takes N1 on: Alex's task leaves the national queue
        directory.change_areas(session, "hackney", T0, add=["N1"])
    assert queue_ids(sessions, "ada", T0, national=True) == [f"first_meeting_follow_up:{KIM}"]
    assert f"first_meeting_follow_up:{ALEX}" in queue_ids(sessions, "ben", T0)


# --- claims and escalation ---------------------------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_a_claim_expires_and_the_task_is_open_again(sessions: sessionmaker[Session]) -> None:
    asha, ben = who(sessions, "asha"), who(sessions, "ben")
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        claimed = QUEUE.claim(session, asha, jo_task, T0)
    assert (claimed.item.status, claimed.item.claimed_by) == ("claimed", "asha")
    assert claimed.item.claimed_until == T0 + CLAIM
    assert claimed.item.phone == PHONES[JO]  # the claimer sees the phone

    later = T0 + timedelta(minutes=10)
    with sessions.begin() as session, pytest.raises(Conflict, match="claimed by asha"):
        QUEUE.claim(session, ben, jo_task, later)
    with sessions.begin() as session:
        bens = QUEUE.queue(session, ben, later)
    assert (bens.items, bens.claimed_by_others) == ([], 1)
    assert bens.empty_because is not None and "everything is claimed" in bens.empty_because

    expired = T0 + CLAIM + timedelta(seconds=1)
    assert queue_ids(sessions, "ben", expired) == [jo_task]
    with sessions.begin() as session:
        QUEUE.claim(session, ben, jo_task, expired)
    assert history(sessions, jo_task)[1:] == [
        ("claimed", "asha", T0),
        ("claim_expired", "system", T0 + CLAIM),
        ("claimed", "ben", expired),
    ]
    with sessions.begin() as session:  # the claimer gives it back
        released = QUEUE.release(session, ben, jo_task, expired)
    assert (released.item.status, released.item.claimed_by) == ("open", None)


@pytest.mark.usefixtures("hackney")
def test_overdue_tasks_escalate_to_the_groups_leads(sessions: sessionmaker[Session]) -> None:
    asha, cat, ada = who(sessions, "asha"), who(sessions, "cat"), who(sessions, "ada")
    due = T0 + timedelta(hours=48)
    with sessions.begin() as session:
        assert QUEUE.escalations(session, asha, due - timedelta(minutes=1)) == []
        QUEUE.claim(session, asha, f"first_meeting_follow_up:{JO}", due - timedelta(minutes=5))
    with sessions.begin() as session:
        overdue = QUEUE.escalations(session, asha, due + timedelta(minutes=10))  # still claimed
        lambeth = QUEUE.escalations(session, cat, due + timedelta(hours=1))
        national = QUEUE.escalations(session, ada, due + timedelta(hours=1))
        with pytest.raises(Refused):
            QUEUE.escalations(session, who(sessions, "ben"), due + timedelta(hours=1))
    assert [(i.task_id, i.overdue, i.claimed_by) for i in overdue] == [
        (f"first_meeting_follow_up:{JO}", True, "asha")
    ]
    assert [i.task_id for i in lambeth] == [f"first_meeting_follow_up:{SAM}"]
    assert sorted(i.task_id for i in national) == [
        f"first_meeting_follow_up:{ALEX}",
        f"first_meeting_follow_up:{KIM}",
    ]
    with sessions.begin() as session:  # the queue puts overdue first
        store_tasks(session, [task(JO, "check_in", due_at=due + timedelta(hours=5))], T0)
        store_tasks(session, [task(JO, "one_to_one", due_at=due - timedelta(hours=1))], T0)
        order = QUEUE.queue(session, asha, due + timedelta(hours=2))  # Asha's claim expired
    assert [(i.kind, i.overdue) for i in order.items] == [
        ("one_to_one", True),
        ("first_meeting_follow_up", True),
        ("check_in", False),
    ]


# --- one open task per supporter and kind -----------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_a_second_trigger_updates_the_open_task_and_a_replay_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    first = task(JO, "check_in", task_id=f"check-in:{JO}:1", priority="normal")
    second = task(
        JO,
        "check_in",
        task_id=f"check-in:{JO}:2",
        reason="Not seen for 60 days again",
        due_at=T0 + timedelta(days=9),
        priority="high",
    )
    with sessions.begin() as session:
        assert store_tasks(session, [first], T0) == 1
    with sessions.begin() as session:
        assert store_tasks(session, [second], T0 + timedelta(days=2)) == 1
    with sessions.begin() as session:
        assert store_tasks(session, [second, first], T0 + timedelta(days=3)) == 0  # replayed

    kept, superseded = stored(sessions, first.task_id), stored(sessions, second.task_id)
    assert (kept.status, kept.reason, kept.priority) == ("open", second.reason, "high")
    assert kept.due_at == first.due_at  # the earlier due time stays
    assert superseded.status == "cancelled"
    assert superseded.status_reason == f"superseded: updated {first.task_id}"
    assert [a for a, _, _ in history(sessions, first.task_id)] == ["created", "retriggered"]
    check_ins = [i for i in _items(sessions, "asha", T0) if i.kind == "check_in"]
    assert [i.task_id for i in check_ins] == [first.task_id]

    with sessions.begin() as session:  # once it is done, a new trigger opens a new task
        QUEUE.record_outcome(session, who(sessions, "asha"), first.task_id, "reached_not_now", T0)
        third = task(JO, "check_in", task_id=f"check-in:{JO}:3")
        assert store_tasks(session, [third], T0) == 1
    assert stored(sessions, third.task_id).status == "open"


def _items(sessions: sessionmaker[Session], organiser_id: str, now: datetime) -> list[QueueItem]:
    with sessions.begin() as session:
        return list(QUEUE.queue(session, who(sessions, organiser_id), now).items)


# --- outcomes ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_a_commitment_completes_the_task_and_feeds_the_score(
    sessions: sessionmaker[Session],
) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        QUEUE.claim(session, who(sessions, "asha"), jo_task, T0)
        result = QUEUE.record_outcome(
            session,
            who(sessions, "asha"),
            jo_task,
            "reached_committed",
            T0,
            commitment="host",
            note="Will host the March meeting",
        )
    assert (result.status, result.reopened) == ("done", False)
    row = stored(sessions, jo_task)
    assert (row.status, row.outcome, row.attempts) == ("done", "reached_committed", 1)
    assert row.claimed_by is None
    (outcome,) = ledger(sessions, "task.outcome")
    assert (outcome["outcome"], outcome["commitment"], outcome["notes"]) == (
        "reached_committed",
        "host",
        None,  # the note stays in the task's history, off the log
    )
    with sessions() as session:
        (line,) = session.scalars(select(TaskEvent).where(TaskEvent.action == "outcome"))
    assert (line.by, line.note, line.detail["commitment"]) == (
        "asha",
        "Will host the March meeting",
        "host",
    )
    scored = engine_for().apply(SupporterState(), TaskOutcome.model_validate(outcome))[0]
    assert isinstance(scored, EngagementScored) and scored.score == 8.0  # commitment.host
    with sessions.begin() as session, pytest.raises(Conflict, match="is done"):
        QUEUE.record_outcome(session, who(sessions, "asha"), jo_task, "no_answer", T0)


@pytest.mark.usefixtures("hackney")
def test_no_answer_reopens_the_task_once_a_day_later(sessions: sessionmaker[Session]) -> None:
    asha = who(sessions, "asha")
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        QUEUE.claim(session, asha, jo_task, T0)
        first = QUEUE.record_outcome(session, asha, jo_task, "no_answer", T0)
    assert (first.status, first.reopened, first.due_at) == ("open", True, T0 + timedelta(days=1))
    row = stored(sessions, jo_task)
    assert (row.status, row.claimed_by, row.attempts) == ("open", None, 1)

    again = T0 + timedelta(days=1, hours=1)
    with sessions.begin() as session:
        second = QUEUE.record_outcome(session, asha, jo_task, "no_answer", again)
    assert (second.status, second.reopened) == ("done", False)
    outcomes = ledger(sessions, "task.outcome")
    assert [o["outcome"] for o in outcomes] == ["no_answer", "no_answer"]
    assert len({o["event_id"] for o in outcomes}) == 2
    assert ledger(sessions, "consent.changed") == []


@pytest.mark.usefixtures("hackney")
def test_wrong_number_stops_texts_to_that_phone(sessions: sessionmaker[Session]) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        result = QUEUE.record_outcome(session, who(sessions, "asha"), jo_task, "wrong_number", T0)
    assert (result.status, result.suppressed) == ("done", ["sms"])
    with sessions() as session:
        assert suppressed(session, KEY, [("sms", JO_PHONE)]) == {("sms", JO_PHONE)}
        assert suppressed(session, KEY, [("email", "1@example.org")]) == set()
        assert has_consent(session, JO, "email") and has_consent(session, JO, "sms")
    assert ledger(sessions, "consent.changed") == []


@pytest.mark.usefixtures("hackney")
def test_do_not_contact_withdraws_consent_and_suppresses_before_it_returns(
    sessions: sessionmaker[Session],
) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        store_tasks(session, [task(JO, "one_to_one")], T0)
    with sessions.begin() as session:
        result = QUEUE.record_outcome(session, who(sessions, "asha"), jo_task, "do_not_contact", T0)
        # Within the same transaction, before anything is committed: everything has happened.
        assert not has_consent(session, JO, "email") and not has_consent(session, JO, "sms")
        wanted = [("email", "1@example.org"), ("sms", JO_PHONE)]
        assert suppressed(session, KEY, wanted) == set(wanted)
    assert result.cancelled_tasks == [f"one_to_one:{JO}"]
    assert sorted(result.suppressed) == ["email", "sms"]
    changes = ledger(sessions, "consent.changed")
    assert {(c["channel"], c["granted"], c["source"]) for c in changes} == {
        ("email", False, "organiser"),
        ("sms", False, "organiser"),
    }
    assert [o["outcome"] for o in ledger(sessions, "task.outcome")] == ["do_not_contact"]
    assert stored(sessions, f"one_to_one:{JO}").status == "cancelled"
    with sessions.begin() as session:  # a later trigger for them is cancelled from the start
        assert store_tasks(session, [task(JO, "check_in")], T0 + timedelta(days=60)) == 1
    later = stored(sessions, f"check_in:{JO}")
    assert (later.status, later.status_reason) == (
        "cancelled",
        "the supporter opted out of contact on every channel",
    )


@pytest.mark.usefixtures("hackney")
@pytest.mark.parametrize(
    ("outcome", "commitment", "note", "words"),
    [
        ("reached_committed", None, None, "commitment: one of"),
        ("reached_not_now", "host", None, "only with reached_committed"),
        ("reached_not_now", None, "x" * 281, "at most 280"),
        ("positive", None, None, "outcome: one of"),  # version 1's words: not for organisers
    ],
)
def test_an_invalid_outcome_changes_nothing(
    sessions: sessionmaker[Session],
    outcome: Any,
    commitment: Any,
    note: str | None,
    words: str,
) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    asha = who(sessions, "asha")
    with sessions.begin() as session, pytest.raises(ValueError, match=words):
        QUEUE.record_outcome(session, asha, jo_task, outcome, T0, commitment=commitment, note=note)
    assert stored(sessions, jo_task).status == "open"
    assert ledger(sessions, "task.outcome") == []


@pytest.mark.usefixtures("hackney")
def test_an_outcome_on_a_task_someone_else_claimed_is_a_conflict(
    sessions: sessionmaker[Session],
) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        QUEUE.claim(session, who(sessions, "ben"), jo_task, T0)
    with sessions.begin() as session, pytest.raises(Conflict, match="claimed by ben"):
        QUEUE.record_outcome(session, who(sessions, "asha"), jo_task, "reached_not_now", T0)
    with sessions.begin() as session:  # a lead may take it back to the queue
        QUEUE.release(session, who(sessions, "asha"), jo_task, T0)
    assert history(sessions, jo_task)[-1] == ("released", "asha", T0)


# --- cancellations ----------------------------------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_tasks_of_a_merged_or_erased_supporter_are_cancelled(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        session.add(SupporterAlias(absorbed_id=JO, survivor_id=SAM, event_id=uuid.uuid4()))
    assert queue_ids(sessions, "asha", T0) == []
    jo = stored(sessions, f"first_meeting_follow_up:{JO}")
    assert (jo.status, jo.status_reason) == ("cancelled", f"the supporter was merged into {SAM}")

    sam_task = f"first_meeting_follow_up:{SAM}"
    with sessions.begin() as session:
        QUEUE.claim(session, who(sessions, "cat"), sam_task, T0)
        QUEUE.record_outcome(session, who(sessions, "cat"), sam_task, "no_answer", T0, note="hi")
        QUEUE.claim(session, who(sessions, "cat"), sam_task, T0)
        rows = forget_outputs(session, [SAM], T0)
    assert (rows["tasks"], rows["task_events.note"]) == (1, 1)
    assert stored(sessions, sam_task).status == "cancelled"
    assert history(sessions, sam_task)[-1] == ("cancelled", "erasure", T0)
    with sessions() as session:
        notes = session.scalars(select(TaskEvent.note).where(TaskEvent.task_id == sam_task))
        assert set(notes) == {None}


@pytest.mark.usefixtures("hackney")
def test_a_disabled_organiser_can_do_nothing_and_their_claims_go_back(
    sessions: sessionmaker[Session],
) -> None:
    jo_task = f"first_meeting_follow_up:{JO}"
    with sessions.begin() as session:
        QUEUE.claim(session, who(sessions, "ben"), jo_task, T0)
        view = directory.disable_organiser(session, "ben", T0)
    assert view.disabled
    assert stored(sessions, jo_task).status == "open"
    with sessions() as session, pytest.raises(Refused):
        QUEUE.organiser(session, "ben")
    with sessions() as session, pytest.raises(NotFound):
        QUEUE.organiser(session, "nobody")


# --- leaders and trainings --------------------------------------------------------------------


@pytest.mark.usefixtures("hackney")
def test_a_group_sees_its_leader_candidates_and_leaders(sessions: sessionmaker[Session]) -> None:
    def score(sid: str, rung: str, points: float) -> EngagementScored:
        return EngagementScored(
            event_time=T0,
            supporter_id=sid,
            score=points,
            rung=rung,
            cause_event_id=uuid.uuid4(),
            half_life_days=90,
        )

    with sessions.begin() as session:
        session.add(Supporter(supporter_id=f"sup_{9:032x}", postcode="E9 5LN", first_name="Bo"))
        store_scores(
            session,
            [
                score(JO, "leader_candidate", 30),
                score(f"sup_{9:032x}", "leader", 55),
                score(SAM, "leader_candidate", 40),  # Lambeth's
                score(ALEX, "regular", 20),
            ],
        )
    with sessions() as session:
        found = QUEUE.leaders(session, who(sessions, "asha"), "hackney")
    assert [(c.first_name, c.district) for c in found.candidates] == [("Person 1", "E8")]
    assert [(c.first_name, c.district, c.rung) for c in found.leaders] == [("Bo", "E9", "leader")]


@pytest.mark.usefixtures("hackney")
def test_a_training_goes_onto_the_log_once(sessions: sessionmaker[Session]) -> None:
    asha = who(sessions, "asha")
    at = T0 - timedelta(days=1)
    with sessions.begin() as session:
        first = QUEUE.record_training(session, asha, JO, "One-to-ones", at, T0)
        again = QUEUE.record_training(session, asha, JO, "One-to-ones", at, T0)
        with pytest.raises(NotFound):  # Sam is Lambeth's
            QUEUE.record_training(session, asha, SAM, "One-to-ones", at, T0)
        with pytest.raises(ValueError, match="future"):
            QUEUE.record_training(session, asha, JO, "Chairing", T0 + timedelta(days=1), T0)
    assert (first.new, again.new, first.event_id == again.event_id) == (True, False, True)
    (event,) = ledger(sessions, "training.completed")
    assert (event["supporter_id"], event["training"], event["event_time"]) == (
        JO,
        "One-to-ones",
        at,
    )


# --- the migration ----------------------------------------------------------------------------


def test_the_migration_routes_existing_tasks_and_keeps_one_open_per_kind(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(Path(infra.db.__file__).parent / "migrations"))
    sqlite = engine.dialect.name == "sqlite"

    def at(moment: datetime) -> datetime:  # SQLite keeps naive UTC; PostgreSQL a zone
        return moment.replace(tzinfo=None) if sqlite else moment

    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0006_organisers-1")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO supporters (supporter_id, postcode, created_at, updated_at)"
                    " VALUES (:sid, 'E8 1AA', :at, :at)"
                ),
                {"sid": JO, "at": at(T0)},
            )
            for n, due in ((1, T0 + timedelta(days=2)), (2, T0 + timedelta(days=1))):
                connection.execute(
                    text(
                        "INSERT INTO tasks (task_id, supporter_id, kind, reason, due_at, rule,"
                        " cause_event_id, status, created_at, priority) VALUES (:id, :sid,"
                        " 'check_in', 'r', :due, 'check-in', :cause, 'open', :at, 'normal')"
                    ),
                    {
                        "id": f"check-in:{JO}:{n}",
                        "sid": JO,
                        "due": at(due),
                        "cause": uuid.uuid4().hex,
                        "at": at(T0),
                    },
                )
        infra.db.migrate(engine)
        sessions = session_factory(engine)
        first, second = stored(sessions, f"check-in:{JO}:1"), stored(sessions, f"check-in:{JO}:2")
        assert (first.district, second.district) == ("E8", "E8")
        assert (first.status, second.status) == ("cancelled", "open")  # the one due first stays
    finally:
        engine.dispose()


# --- the commands -------------------------------------------------------------------------------


@pytest.fixture
def engage(
    database_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``engage ...`` in-process on the test's database: (exit code, stdout, stderr)."""
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_IDENTITY_KEY", KEY)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    saved = structlog.get_config()

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    structlog.configure(**saved)


def test_an_admin_and_an_organiser_work_the_queue_from_the_terminal(
    sessions: sessionmaker[Session], engage: Callable[..., tuple[int, str, str]]
) -> None:
    assert engage("groups", "add", "hackney", "--name", "Hackney", "--areas", "e8,E9")[0] == 0
    code, _, err = engage("groups", "add", "lambeth", "--name", "Lambeth", "--areas", "E8")
    assert (code, err.strip()) == (
        2,
        "invalid: owned by another group: E8 (hackney); give --move to take them",
    )
    assert engage("groups", "add", "lambeth", "--name", "Lambeth", "--areas", "SW9")[0] == 0
    assert engage("organisers", "add", "asha", "--name", "Asha", "--lead", "hackney")[0] == 0
    with sessions.begin() as session:
        session.add(Supporter(supporter_id=JO, first_name="Jo", phone=JO_PHONE, postcode="E8 1AA"))
        session.flush()
        store_tasks(session, [task(JO, due_at=datetime.now(UTC) + timedelta(hours=2))])
    jo_task = f"first_meeting_follow_up:{JO}"

    code, out, _ = engage("queue", "list", "--organiser", "asha", "--json")
    assert code == 0 and [i["task_id"] for i in json.loads(out)["items"]] == [jo_task]
    assert engage("queue", "claim", jo_task, "--organiser", "asha")[0] == 0
    code, out, _ = engage(
        "queue",
        "done",
        jo_task,
        "--organiser",
        "asha",
        "--outcome",
        "reached_committed",
        "--commitment",
        "meeting",
        "--json",
    )
    assert code == 0 and json.loads(out)["status"] == "done"
    code, _, err = engage("queue", "claim", jo_task, "--organiser", "asha")
    assert (code, err.strip()) == (1, f"conflict: task {jo_task} is done")
    code, out, _ = engage("groups", "list", "--json")
    listed = json.loads(out)
    assert [(g["group_id"], g["leads"], g["open_tasks"]) for g in listed["groups"]] == [
        ("hackney", ["asha"], 0),
        ("lambeth", [], 0),
    ]
    assert engage("organisers", "disable", "asha")[0] == 0
    code, _, err = engage("queue", "list", "--organiser", "asha")
    assert (code, err.strip()) == (1, "refused: organiser 'asha' is disabled")
