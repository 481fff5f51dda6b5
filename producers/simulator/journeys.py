"""Supporter journeys: every event of a simulated population, drawn from one seeded Random."""

from __future__ import annotations

import random
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers

from producers.simulator.population import (
    AREAS,
    DEFAULT_START,
    EMAIL_DOMAINS,
    INWARD_LETTERS,
    MOBILE_SECOND_DIGITS,
    NATIONAL_PETITIONS,
    SIGNUP_SOURCES,
    Area,
    Meeting,
    Petition,
    plan_meetings,
)

CONSENT_WORDING = "v1"

# Behaviour, as probabilities per supporter unless said otherwise. The resulting shares are
# roughly: 92% give an email (60% of them a phone too), 8% only a phone; 80% consent to email,
# 45% to SMS; 70% sign a petition; 25% RSVP; 15-17% attend; 65% of RSVPs turn up (the rest
# are marked no-shows); 5% attend 3+, a third of whom host one; a fifth of first-timers were
# brought by a friend; 2% give their email and phone on different forms until a meeting.
P_PHONE_ONLY = 0.08
P_PHONE_WITH_EMAIL = 0.60
P_CONSENT_EMAIL = 0.87  # of those who gave an email
P_CONSENT_SMS = 0.71  # of those who gave a phone
P_PETITION = 0.70
PETITION_COUNTS = ((1, 0.55), (2, 0.25), (3, 0.12), (4, 0.08))
P_SIGNUP_VIA_PETITION = 0.6  # first signature made in the same session as the signup
P_REGULAR = 0.05  # RSVPs to 3-5 meetings, attends at least 3
P_OCCASIONAL = 0.20  # RSVPs to 1 or 2 meetings
P_OCCASIONAL_TWO = 0.25
P_OCCASIONAL_TURNS_UP = 0.45  # per RSVP
P_REGULAR_NO_SHOW = 0.5  # chance a regular with 4+ RSVPs misses one of them
P_REGULAR_EXTRA_WALK_IN = 0.10
P_WALK_IN = 0.015  # of the rest: signs up on the night at a meeting
P_EMAIL_TYPED_DIFFERENTLY = 0.05  # later forms: same address, different capitals
P_REGULAR_HOSTS = 0.35  # of regulars: hosts one of their later meetings (one host a meeting)
P_BROUGHT_BY_FRIEND = 0.30  # of first attendances where someone who came before is there too
P_SPLIT_IDENTITY = 0.25  # of attendees who have both (not walk-ins): email-only signup, a
# phone-only petition, then both on the sign-in sheet, which merges the two supporter ids


@dataclass(frozen=True)
class _Person:
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    postcode: str
    area: Area


class _Journeys:
    """Builds every supporter's events; all randomness comes from one seeded ``Random``."""

    def __init__(self, seed: int, start: datetime, days: int) -> None:
        from faker import Faker  # here only: an optional extra (sim), for the names

        self.rng = random.Random(seed)
        self.fake = Faker("en_GB")
        self.fake.seed_instance(seed)
        self.start = start
        self.end = start + timedelta(days=days)
        meetings = plan_meetings(start, days)
        self.meetings = {a.name: [m for m in meetings if m.area == a.name] for a in AREAS}
        self.emails: set[str] = set()
        self.phones: set[str] = set()
        self.out: list[tuple[datetime, int, dict[str, Any]]] = []
        # Who came to each meeting (email, when they first came to any), for "brought by".
        self.attendees: dict[str, list[tuple[str, datetime]]] = {}
        self.hosted: set[str] = set()  # meetings that already have a host

    def supporter(self) -> None:
        rng = self.rng
        person = self._person()
        has_email, has_phone = person.email is not None, person.phone is not None
        consent_email = has_email and rng.random() < P_CONSENT_EMAIL
        petitions = self._petitions_for(person.area) if rng.random() < P_PETITION else []
        rsvps, attends, walk_in = self._meeting_plan(person.area)
        # Email on the signup form, phone on a petition, both on the sign-in sheet: the ingest
        # API only learns at the meeting that the two supporter ids are one person.
        split = (
            has_email
            and has_phone
            and bool(attends)
            and walk_in is None
            and rng.random() < P_SPLIT_IDENTITY
        )
        if split and not petitions:
            petitions = self._petitions_for(person.area)
        consent_sms = has_phone and not split and rng.random() < P_CONSENT_SMS
        host = self._meeting_to_host(attends)
        brought_by = self._friend_at(attends[0]) if attends else None

        if walk_in is not None:
            signed_up = walk_in.starts_at + timedelta(minutes=rng.randint(5, 40))
            source = "meeting"
        else:
            rsvp_starts = [m.starts_at for m in rsvps]
            latest = min(rsvp_starts, default=self.end) - timedelta(hours=2)
            signed_up = self._time_between(self.start, latest)
            source = rng.choice(SIGNUP_SOURCES)
        via_petition = (
            bool(petitions)
            and walk_in is None
            and not split
            and rng.random() < P_SIGNUP_VIA_PETITION
        )
        if via_petition:
            source = "petition"
        self._emit(
            signed_up,
            person,
            "supporter.signup",
            with_phone=not split,
            source=source,
            consent_email=consent_email,
            consent_sms=consent_sms,
            consent_wording=CONSENT_WORDING,
        )

        for n, petition in enumerate(petitions):
            only_phone = split and n == 0
            if n == 0 and via_petition:
                at = signed_up + timedelta(seconds=rng.randint(5, 240))
            elif only_phone:  # before the meeting that links the phone to the email
                first_meeting = attends[0].starts_at - timedelta(minutes=30)
                at = self._time_between(signed_up + timedelta(minutes=10), first_meeting)
            else:
                at = self._time_between(signed_up + timedelta(minutes=10), self.end)
            self._emit(
                at,
                person,
                "petition.signed",
                with_email=not only_phone,
                with_phone=not has_email or only_phone,
                petition_id=petition.petition_id,
                petition_title=petition.title,
            )

        for meeting in rsvps:
            lo = max(signed_up + timedelta(minutes=1), meeting.starts_at - timedelta(days=10))
            at = self._time_between(lo, meeting.starts_at - timedelta(minutes=30))
            self._emit(at, person, "event.rsvp", with_phone=not split, **_meeting_fields(meeting))
        for meeting in rsvps:
            if meeting not in attends:  # marked absent on the sign-in sheet, that night or next day
                hi = min(meeting.starts_at + timedelta(hours=26), self.end)
                at = self._time_between(meeting.starts_at + timedelta(hours=1), hi)
                fields = _meeting_fields(meeting)
                self._emit(at, person, "event.no_show", with_phone=not split, **fields)
        for n, meeting in enumerate(attends):
            extra: dict[str, Any] = {}
            if meeting is walk_in:
                at = signed_up + timedelta(seconds=rng.randint(30, 300))
            elif meeting is host:
                at = meeting.starts_at - timedelta(minutes=rng.randint(5, 25))  # opens up
                extra["role"] = "host"
            else:
                at = meeting.starts_at + timedelta(minutes=rng.randint(-10, 30))
            if n == 0 and brought_by is not None:
                extra["brought_by_email"] = brought_by
            self._emit(at, person, "event.attended", **_meeting_fields(meeting), **extra)
        if person.email is not None and attends:
            for meeting in attends:
                self.attendees.setdefault(meeting.meeting_id, []).append(
                    (person.email, attends[0].starts_at)
                )

    def _meeting_to_host(self, attends: list[Meeting]) -> Meeting | None:
        """For some regulars (3+ meetings), one of their later meetings nobody hosts yet."""
        if len(attends) < 3 or self.rng.random() >= P_REGULAR_HOSTS:
            return None
        free = [m for m in attends[1:] if m.meeting_id not in self.hosted]
        if not free:
            return None
        meeting = self.rng.choice(free)
        self.hosted.add(meeting.meeting_id)
        return meeting

    def _friend_at(self, meeting: Meeting) -> str | None:
        """Sometimes, the email of someone at ``meeting`` who had come to one before."""
        friends = [
            email
            for email, first in self.attendees.get(meeting.meeting_id, [])
            if first < meeting.starts_at
        ]
        if not friends or self.rng.random() >= P_BROUGHT_BY_FRIEND:
            return None
        return self.rng.choice(friends)

    def _meeting_plan(self, area: Area) -> tuple[list[Meeting], list[Meeting], Meeting | None]:
        """(meetings RSVPed to, meetings attended, the walk-in meeting if signed up at one)."""
        rng = self.rng
        meetings = self.meetings[area.name]
        roll = rng.random()
        if roll < P_REGULAR and len(meetings) >= 3:
            wanted = min(rng.randint(3, 5), len(meetings))
            rsvps = self._pick_meetings(meetings, wanted)
            attends = list(rsvps)
            if wanted > 3 and rng.random() < P_REGULAR_NO_SHOW:
                attends.remove(rng.choice(attends))
            others = [m for m in meetings if m not in rsvps and m.starts_at > rsvps[0].starts_at]
            if others and rng.random() < P_REGULAR_EXTRA_WALK_IN:
                attends.append(rng.choice(others))
            return rsvps, sorted(attends, key=lambda m: m.starts_at), None
        if roll < P_REGULAR + P_OCCASIONAL and meetings:
            wanted = 2 if rng.random() < P_OCCASIONAL_TWO and len(meetings) >= 2 else 1
            rsvps = self._pick_meetings(meetings, wanted)
            attends = [m for m in rsvps if rng.random() < P_OCCASIONAL_TURNS_UP]
            return rsvps, attends, None
        if meetings and rng.random() < P_WALK_IN:
            meeting = rng.choice(meetings)
            return [], [meeting], meeting
        return [], [], None

    def _pick_meetings(self, meetings: list[Meeting], count: int) -> list[Meeting]:
        """``count`` meetings, mostly close together in time (people commit for a few weeks)."""
        first = self.rng.randrange(len(meetings) - count + 1)
        window = meetings[first : first + count + self.rng.randint(0, 2)]
        return sorted(self.rng.sample(window, count), key=lambda m: m.starts_at)

    def _petitions_for(self, area: Area) -> list[Petition]:
        rng = self.rng
        counts, weights = zip(*PETITION_COUNTS, strict=True)
        wanted = rng.choices(counts, weights)[0]
        pool = [(p, 2.0) for p in area.petitions] + [(p, 1.0) for p in NATIONAL_PETITIONS]
        chosen: list[Petition] = []
        while pool and len(chosen) < wanted:
            index = rng.choices(range(len(pool)), [w for _, w in pool])[0]
            chosen.append(pool.pop(index)[0])
        return chosen

    def _person(self) -> _Person:
        rng, fake = self.rng, self.fake
        area = rng.choices(AREAS, [a.weight for a in AREAS])[0]
        first_name, last_name = fake.first_name(), fake.last_name()
        phone_only = rng.random() < P_PHONE_ONLY
        email = None if phone_only else self._email(first_name, last_name)
        phone = self._mobile() if phone_only or rng.random() < P_PHONE_WITH_EMAIL else None
        inward = f"{rng.randint(1, 9)}{rng.choice(INWARD_LETTERS)}{rng.choice(INWARD_LETTERS)}"
        postcode = f"{rng.choice(area.outward_codes)} {inward}"
        return _Person(str(first_name), str(last_name), email, phone, postcode, area)

    def _email(self, first_name: str, last_name: str) -> str:
        rng = self.rng
        first, last = _ascii_word(first_name), _ascii_word(last_name)
        style = rng.randrange(5)
        local = (
            f"{first}.{last}",
            f"{first}{last}",
            f"{first[:1]}.{last}",
            f"{first}.{last}{rng.randint(1, 99)}",
            f"{first}_{last}{rng.randint(60, 99)}",
        )[style]
        domain = rng.choice(EMAIL_DOMAINS)
        email = f"{local}@{domain}"
        while email in self.emails:
            email = f"{local}{rng.randint(1, 9999)}@{domain}"
        self.emails.add(email)
        return email

    def _mobile(self) -> str:
        """A valid UK mobile in E.164 (phonenumbers' ranges; not the 07700 900xxx drama range)."""
        rng = self.rng
        while True:
            digits = f"{rng.choice(MOBILE_SECOND_DIGITS)}{rng.randrange(10**8):08d}"
            candidate = f"+447{digits}"
            if candidate in self.phones:
                continue
            number = phonenumbers.parse(candidate, "GB")
            if phonenumbers.is_valid_number_for_region(number, "GB"):  # not Jersey, Man, ...
                self.phones.add(candidate)
                return candidate

    def _time_between(self, lo: datetime, hi: datetime) -> datetime:
        """A whole-second time in [lo, hi), preferring waking hours (07:00-23:00 UTC)."""
        if hi <= lo + timedelta(seconds=1):
            return lo
        span = int((hi - lo).total_seconds())
        at = lo
        for _ in range(6):
            at = lo + timedelta(seconds=self.rng.randrange(span))
            if 7 <= at.hour < 23:
                break
        return at

    def _emit(
        self,
        at: datetime,
        person: _Person,
        event_type: str,
        *,
        with_email: bool = True,
        with_phone: bool = True,
        **fields: Any,
    ) -> None:
        """Queue one payload. Email if known (unless ``with_email`` is False); the phone if
        known and ``with_phone``, or when it is the only contact given."""
        rng = self.rng
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        email = person.email if with_email else None
        retyped = event_type != "supporter.signup" and rng.random() < P_EMAIL_TYPED_DIFFERENTLY
        if email is not None and retyped:
            email = email[:1].upper() + email[1:]
        payload: dict[str, Any] = {
            "type": event_type,
            "event_id": str(event_id),
            "event_time": _iso(at),
            "first_name": person.first_name,
            "last_name": person.last_name,
            "postcode": person.postcode,
            "area": person.area.name,
        }
        if email is not None:
            payload["email"] = email
        if person.phone is not None and (with_phone or email is None):
            payload["phone"] = person.phone
        payload.update(fields)
        self.out.append((at, len(self.out), payload))


def _meeting_fields(meeting: Meeting) -> dict[str, Any]:
    return {
        "meeting_id": meeting.meeting_id,
        "meeting_title": meeting.title,
        "meeting_starts_at": _iso(meeting.starts_at),
    }


def _ascii_word(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum()) or "supporter"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def generate_events(
    supporters: int, seed: int = 1, start: datetime | None = None, days: int = 28
) -> list[dict[str, Any]]:
    """Ingest payloads for ``supporters`` people over ``days`` days from ``start``, by time.

    Pure and deterministic: the same arguments give the same events and event ids. Each
    supporter signs up first; petitions, RSVPs and attendance follow in causal order, and
    attendance happens at the meeting (or just after a signup on the night, for walk-ins).
    An RSVP not kept is marked ``event.no_show`` after the meeting; some regulars host a
    meeting (``role: host``); some first-timers were brought by someone who came before
    (``brought_by_email``); a few people give their email and their phone on separate forms
    until a sign-in sheet has both. Nothing needs a supporter id (no outcomes, clicks or
    consent changes).
    """
    if supporters < 0:
        raise ValueError("supporters must not be negative")
    if days < 1:
        raise ValueError("days must be at least 1")
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    journeys = _Journeys(seed, start.astimezone(UTC).replace(microsecond=0), days)
    for _ in range(supporters):
        journeys.supporter()
    journeys.out.sort(key=lambda item: (item[0], item[1]))
    return [payload for _, _, payload in journeys.out]
