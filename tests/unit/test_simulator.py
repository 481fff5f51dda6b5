"""The traffic simulator: deterministic, valid, realistic and causally ordered per supporter."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faker.generator
import httpx
import phonenumbers
import pytest
from faker import Faker
from pydantic import TypeAdapter, ValidationError

from producers.client import IngestClient
from producers.simulator import AREAS, DEFAULT_START, generate_events, plan_meetings, simulate
from schemas.events import IngestEvent, SignupIn

INGEST: TypeAdapter[Any] = TypeAdapter(IngestEvent)
SUPPORTERS = 2000


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return generate_events(SUPPORTERS, seed=42)


@pytest.fixture(scope="module")
def journeys(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Validated events grouped by person: by normalised email, else by phone, where a phone
    given beside an email anywhere belongs to that email (as the ingest API links them)."""
    models = [INGEST.validate_python(payload) for payload in events]
    email_of_phone = {m.phone: m.email for m in models if m.email and m.phone}
    by_person: dict[str, list[Any]] = defaultdict(list)
    for model in models:
        by_person[model.email or email_of_phone.get(model.phone, model.phone)].append(model)
    return by_person


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_same_seed_same_events_other_seed_other_events() -> None:
    first = generate_events(200, seed=7)
    assert generate_events(200, seed=7) == first
    other = generate_events(200, seed=8)
    assert {e["event_id"] for e in other}.isdisjoint(e["event_id"] for e in first)
    assert other != first


ODD_START = datetime(2026, 5, 11, 14, 37, 21, tzinfo=UTC)  # not midnight, not DEFAULT_START


def test_same_seed_and_start_same_events_whatever_the_global_random_state() -> None:
    """The events are a function of (seed, start, counts) alone: the random module's and
    Faker's shared generators, seeded or used in between, change nothing."""
    first = generate_events(150, seed=11, start=ODD_START, days=10)
    saved = random.getstate(), faker.generator.random.getstate()
    try:
        random.seed(999)
        Faker.seed(999)
        Faker("en_GB").name()
        random.random()
        again = generate_events(150, seed=11, start=ODD_START, days=10)
    finally:
        random.setstate(saved[0])
        faker.generator.random.setstate(saved[1])
    assert again == first  # every field of every event, in order
    other = generate_events(150, seed=12, start=ODD_START, days=10)
    assert other != first
    assert {e["event_id"] for e in other}.isdisjoint(e["event_id"] for e in first)


def test_same_seed_and_start_same_events_in_another_process_and_hash_seed() -> None:
    """Nothing depends on set or dict order of strings (PYTHONHASHSEED) or on the process."""
    code = (
        "import json, sys; from datetime import datetime;"
        "from producers.simulator import generate_events;"
        "start = datetime.fromisoformat(sys.argv[1]);"
        "print(json.dumps(generate_events(100, seed=4, start=start, days=10)))"
    )
    here = generate_events(100, seed=4, start=ODD_START, days=10)
    for hash_seed in ("0", "1", "4242"):
        done = subprocess.run(
            [sys.executable, "-c", code, ODD_START.isoformat()],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(done.stdout) == here, f"PYTHONHASHSEED={hash_seed}"


def test_every_kind_the_simulator_makes_is_there_and_none_that_needs_an_id(
    events: list[dict[str, Any]],
) -> None:
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == {
        "supporter.signup",
        "petition.signed",
        "event.rsvp",
        "event.attended",
        "event.no_show",
    }
    assert any(e.get("role") == "host" for e in events)
    assert any("brought_by_email" in e for e in events)
    assert not any("supporter_id" in e for e in events)


def test_every_payload_is_a_valid_json_ready_ingest_event(events: list[dict[str, Any]]) -> None:
    assert json.loads(json.dumps(events)) == events
    for payload in events:
        try:
            INGEST.validate_python(payload)
        except ValidationError as exc:  # pragma: no cover - shows the bad payload
            pytest.fail(f"{payload}: {exc}")


def test_event_ids_are_unique_uuid4_and_events_sorted(events: list[dict[str, Any]]) -> None:
    ids = [uuid.UUID(e["event_id"]) for e in events]
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4}
    times = [_at(e["event_time"]) for e in events]
    assert times == sorted(times)
    assert times[0] >= DEFAULT_START
    assert times[-1] < DEFAULT_START + timedelta(days=28)


def test_one_signup_per_supporter(journeys: dict[str, list[Any]]) -> None:
    assert len(journeys) == SUPPORTERS
    assert all(sum(isinstance(m, SignupIn) for m in v) == 1 for v in journeys.values())


def test_ratios_are_realistic(events: list[dict[str, Any]], journeys: dict[str, list[Any]]) -> None:
    signups = [m for v in journeys.values() for m in v if isinstance(m, SignupIn)]

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags)

    def count(journey: list[Any], event_type: str) -> int:
        return sum(m.type == event_type for m in journey)

    people = list(journeys.values())
    assert 0.85 <= share([s.email is not None for s in signups]) <= 0.97
    assert 0.02 <= share([s.email is None for s in signups]) <= 0.15  # phone only
    assert 0.72 <= share([s.consent_email for s in signups]) <= 0.88
    assert 0.37 <= share([s.consent_sms for s in signups]) <= 0.53
    assert {s.consent_wording for s in signups} == {"v1"}
    assert not any(s.consent_sms and s.phone is None for s in signups)
    assert 0.62 <= share([count(p, "petition.signed") >= 1 for p in people]) <= 0.78
    assert 0.15 <= share([count(p, "petition.signed") >= 2 for p in people]) <= 0.45
    assert 0.20 <= share([count(p, "event.rsvp") >= 1 for p in people]) <= 0.30
    assert 0.11 <= share([count(p, "event.attended") >= 1 for p in people]) <= 0.20
    assert 0.03 <= share([count(p, "event.attended") >= 3 for p in people]) <= 0.07

    rsvps = {(k, m.meeting_id) for k, v in journeys.items() for m in v if m.type == "event.rsvp"}
    came = {(k, m.meeting_id) for k, v in journeys.items() for m in v if m.type == "event.attended"}
    assert 0.55 <= len(rsvps & came) / len(rsvps) <= 0.75
    walk_ins = len(came - rsvps)
    assert 0 < walk_ins <= 0.2 * len(came)
    assert len({e["area"] for e in events}) == len(AREAS)


def test_every_rsvp_not_kept_is_marked_a_no_show_after_the_meeting(
    journeys: dict[str, list[Any]],
) -> None:
    def meetings(journey: list[Any], event_type: str) -> set[str]:
        return {m.meeting_id for m in journey if m.type == event_type}

    no_shows = 0
    for journey in journeys.values():
        missed = meetings(journey, "event.rsvp") - meetings(journey, "event.attended")
        marked = [m for m in journey if m.type == "event.no_show"]
        assert sorted(m.meeting_id for m in marked) == sorted(missed)
        for m in marked:
            assert m.meeting_starts_at is not None and m.meeting_title
            assert timedelta(hours=1) <= m.event_time - m.meeting_starts_at <= timedelta(hours=26)
        no_shows += len(marked)
    rsvps = sum(m.type == "event.rsvp" for j in journeys.values() for m in j)
    assert 0.25 <= no_shows / rsvps <= 0.45


def test_some_regulars_host_one_meeting_each_and_no_meeting_has_two_hosts(
    journeys: dict[str, list[Any]],
) -> None:
    hosted: list[str] = []
    regulars = hosts = 0
    for journey in journeys.values():
        attended = [m for m in journey if m.type == "event.attended"]
        ran = [m for m in attended if m.role == "host"]
        regulars += len(attended) >= 3
        hosts += bool(ran)
        if ran:
            assert len(ran) == 1 and len(attended) >= 3, "only regulars host, once"
            assert ran[0] is not attended[0], "nobody hosts their first meeting"
            # Opens up before the start, after their RSVP.
            assert ran[0].meeting_starts_at - ran[0].event_time <= timedelta(minutes=25)
            assert ran[0].event_time < ran[0].meeting_starts_at
        hosted.extend(m.meeting_id for m in ran)
    assert len(hosted) == len(set(hosted))
    assert 0.15 <= hosts / regulars <= 0.45


def test_some_first_timers_were_brought_by_someone_who_came_before(
    journeys: dict[str, list[Any]],
) -> None:
    first_came: dict[str, datetime] = {}
    at_meeting: dict[str, set[str]] = defaultdict(set)
    for person, journey in journeys.items():
        attended = [m for m in journey if m.type == "event.attended"]
        if attended:
            first_came[person] = attended[0].meeting_starts_at
        for m in attended:
            at_meeting[m.meeting_id].add(person)
    brought = 0
    for person, journey in journeys.items():
        attended = [m for m in journey if m.type == "event.attended"]
        for n, m in enumerate(attended):
            if m.brought_by_email is None:
                continue
            assert n == 0, "brought to their first meeting only"
            bringer = m.brought_by_email
            assert bringer != person and bringer in journeys
            assert bringer in at_meeting[m.meeting_id], "the friend came too"
            assert first_came[bringer] < m.meeting_starts_at, "and had come before"
            assert m.brought_by_phone is None
            brought += 1
    assert 0.08 <= brought / len(first_came) <= 0.35


def test_a_few_give_email_and_phone_on_separate_forms_until_a_sign_in_sheet(
    journeys: dict[str, list[Any]],
) -> None:
    """Email-only signup, a phone-only petition, then both at a meeting: the ingest API keys
    the petition by the phone's supporter id and merges the two ids at the meeting."""
    split = 0
    for journey in journeys.values():
        signup = journey[0]
        phone_only = [m for m in journey if m.email is None and m.phone is not None]
        if signup.email is None or not phone_only:
            continue
        split += 1
        assert signup.phone is None and not signup.consent_sms
        assert [m.type for m in phone_only] == ["petition.signed"]
        linked = next(m for m in journey if m.email and m.phone)
        assert linked.type == "event.attended"
        assert signup.event_time < phone_only[0].event_time < linked.event_time
        assert not any(m.email and m.phone for m in journey[: journey.index(linked)])
    assert 0.01 <= split / len(journeys) <= 0.04


def test_each_journey_is_causally_ordered(journeys: dict[str, list[Any]]) -> None:
    for journey in journeys.values():
        times = [m.event_time for m in journey]
        assert times == sorted(times)
        assert journey[0].type == "supporter.signup"
        assert all(t > journey[0].event_time for t in times[1:])
        rsvped = {m.meeting_id: m.event_time for m in journey if m.type == "event.rsvp"}
        for m in journey:
            if m.type in ("event.rsvp", "event.attended", "event.no_show"):
                assert m.meeting_starts_at is not None
            if m.type == "event.rsvp":
                assert m.event_time < m.meeting_starts_at
            if m.type == "event.attended":
                assert abs(m.event_time - m.meeting_starts_at) <= timedelta(hours=1)
                if m.meeting_id in rsvped:
                    assert rsvped[m.meeting_id] < m.event_time
        attended = [m.meeting_id for m in journey if m.type == "event.attended"]
        assert len(attended) == len(set(attended))


def test_contacts_are_unique_valid_uk_ones(journeys: dict[str, list[Any]]) -> None:
    signups = [m for v in journeys.values() for m in v if isinstance(m, SignupIn)]
    emails = [s.email for s in signups if s.email]
    phones = [s.phone for s in signups if s.phone]
    assert len(set(emails)) == len(emails)
    assert len(set(phones)) == len(phones)
    for phone in phones:
        assert phone.startswith("+447")
        number = phonenumbers.parse(phone)
        assert phonenumbers.is_valid_number(number)
        assert phonenumbers.region_code_for_number(number) == "GB"
        assert not phone.startswith("+447700900")
    outward = {a.name: a.outward_codes for a in AREAS}
    for s in signups:
        assert s.postcode is not None and s.area is not None
        assert s.postcode.split(" ")[0] in outward[s.area]


def test_meetings_fall_in_the_window_with_unique_ids() -> None:
    meetings = plan_meetings(DEFAULT_START, 28)
    assert len({m.meeting_id for m in meetings}) == len(meetings)
    assert all(DEFAULT_START < m.starts_at < DEFAULT_START + timedelta(days=28) for m in meetings)
    assert {m.area for m in meetings} == {a.name for a in AREAS}


@pytest.mark.parametrize("days", [1, 3, 7])
def test_short_windows_still_give_valid_ordered_events(days: int) -> None:
    start = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    events = generate_events(300, seed=3, start=start, days=days)
    assert sum(e["type"] == "supporter.signup" for e in events) == 300
    for payload in events:
        INGEST.validate_python(payload)
        assert start <= _at(payload["event_time"]) < start + timedelta(days=days)


def test_edge_arguments() -> None:
    assert generate_events(0) == []
    with pytest.raises(ValueError, match="timezone"):
        generate_events(1, start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="days"):
        generate_events(1, days=0)


class FakeIngestAPI:
    """Just enough of the ingest API: validates with the ingest models, remembers event ids."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.batches: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        self.batches.append(len(events))
        result: dict[str, list[Any]] = {"accepted": [], "duplicates": [], "rejected": []}
        for index, payload in enumerate(events):
            try:
                INGEST.validate_python(payload)
            except ValidationError:
                result["rejected"].append(
                    {"index": index, "errors": [{"field": f"events[{index}]", "reason": "bad"}]}
                )
                continue
            bucket = "duplicates" if payload["event_id"] in self.seen else "accepted"
            self.seen.add(payload["event_id"])
            result[bucket].append(payload["event_id"])
        return httpx.Response(422 if result["rejected"] else 202, json=result)


def test_simulate_posts_in_batches_and_a_rerun_is_all_duplicates() -> None:
    api = FakeIngestAPI()
    with IngestClient("http://ingest.test", "t", transport=httpx.MockTransport(api)) as client:
        first = simulate(client, supporters=150, seed=9, batch_size=100, progress=False)
        again = simulate(client, supporters=150, seed=9, batch_size=100, progress=False)
    total = len(generate_events(150, seed=9))
    assert (first.sent, first.accepted, first.duplicates, first.rejected) == (total, total, 0, 0)
    assert (again.sent, again.accepted, again.duplicates) == (total, 0, total)
    assert first.by_type["supporter.signup"].sent == 150
    assert sum(c.accepted for c in first.by_type.values()) == total
    assert Counter(api.batches[: len(api.batches) // 2]) == Counter(
        [100] * (total // 100) + ([total % 100] if total % 100 else [])
    )


def test_simulate_paces_to_the_rate() -> None:
    api = FakeIngestAPI()
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with IngestClient("http://ingest.test", "t", transport=httpx.MockTransport(api)) as client:
        report = simulate(
            client, 50, seed=2, batch_size=20, rate=10.0, progress=False,
            clock=lambda: now[0], sleep=sleep,
        )  # fmt: skip
    batches = -(-report.sent // 20)
    assert len(sleeps) == batches - 1
    assert now[0] == pytest.approx((batches - 1) * 20 / 10.0)
