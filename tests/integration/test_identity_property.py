"""Random sequences of signups, sign-in sheet imports (which merge a person's email and phone)
and erasures, on both databases, checked after every step against a model of who is who:

- two addresses lead to the same supporter exactly when the model says they are one person,
  and an address the model has not linked (or whose person was erased) leads to nobody;
- no table holds an erased address that was not given again since, and no id once erased is
  ever given to anyone, or found, again;
- every erased address stays suppressed, on its channel, even after it signs up again;
- erasing by an id erased before is recognised; by an address nobody is linked to, finds
  nobody.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engage.erasure import erase
from infra.consent import suppressed
from infra.db import IdentityLink, Supporter, survivor_of
from producers.csv_import import parse_sign_in_sheet
from producers.ledger import ingest_events
from schemas.events import IngestEvent
from schemas.identity import contact_identity

KEY = "property-key"
PEOPLE = 3
WHEN = datetime(2026, 11, 2, 18, 30, tzinfo=UTC)
_INGEST: TypeAdapter[Any] = TypeAdapter(list[IngestEvent])
_EXAMPLE = itertools.count()

Address = tuple[str, int]  # ("email" | "phone", index)

addresses = st.tuples(st.sampled_from(["email", "phone"]), st.integers(0, PEOPLE - 1))
signup_step = st.tuples(
    st.just("signup"),
    st.one_of(st.none(), st.integers(0, PEOPLE - 1)),
    st.one_of(st.none(), st.integers(0, PEOPLE - 1)),
).filter(lambda step: step[1] is not None or step[2] is not None)
import_step = st.tuples(
    st.just("import"),
    st.lists(st.tuples(st.integers(0, PEOPLE - 1), st.integers(0, PEOPLE - 1)), max_size=3),
)
erase_step = st.tuples(st.sampled_from(["erase", "erase-by-id"]), addresses)
steps = st.lists(st.one_of(signup_step, import_step, erase_step), min_size=1, max_size=10)


@dataclass
class Model:
    """Who is who, as the rules say: each linked address belongs to a person (a number); an
    email and a phone of two people given together merge the phone's person into the email's."""

    owner: dict[Address, int] = field(default_factory=dict)
    people: itertools.count[int] = field(default_factory=itertools.count)
    erased: set[Address] = field(default_factory=set)

    def link(self, email: int | None, phone: int | None) -> None:
        given = [a for a in (("email", email), ("phone", phone)) if a[1] is not None]
        owners = [self.owner[a] for a in given if a in self.owner]
        person = owners[0] if owners else next(self.people)
        for other in owners[1:]:
            for address, owner in self.owner.items():
                if owner == other:
                    self.owner[address] = person
        for address in given:
            self.owner.setdefault(address, person)  # type: ignore[arg-type]

    def erase(self, address: Address) -> bool:
        if address not in self.owner:
            return False
        person = self.owner[address]
        gone = {a for a, owner in self.owner.items() if owner == person}
        self.erased |= gone
        for a in gone:
            del self.owner[a]
        return True


@dataclass
class Store:
    """The database under test, driven as the API, the sign-in sheet import and `engage erase`
    drive it, with addresses of this example only."""

    sessions: sessionmaker[Session]
    tag: str
    number: int
    clock: itertools.count[int] = field(default_factory=itertools.count)
    erased_ids: set[str] = field(default_factory=set)

    def email(self, index: int) -> str:
        return f"person{index}.{self.tag}@example.org"

    def phone(self, index: int) -> str:
        return f"+447911{self.number % 10_000:04d}{index:02d}"

    def address(self, address: Address) -> str:
        kind, index = address
        return self.email(index) if kind == "email" else self.phone(index)

    def now(self) -> datetime:
        return WHEN + timedelta(minutes=next(self.clock))

    def ingest(self, payloads: list[dict[str, Any]]) -> None:
        with self.sessions.begin() as session:
            result = ingest_events(session, _INGEST.validate_python(payloads), self.now(), KEY)
        assert len(result.accepted) == len(payloads), result

    def signup(self, email: int | None, phone: int | None) -> None:
        payload: dict[str, Any] = {
            "type": "supporter.signup",
            "event_id": str(uuid.uuid4()),
            "event_time": self.now().isoformat(),
            "first_name": "Robin",
            "consent_email": True,
            "consent_sms": True,
        }
        if email is not None:
            payload["email"] = self.email(email)
        if phone is not None:
            payload["phone"] = self.phone(phone)
        self.ingest([payload])

    def import_sheet(self, rows: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Import a sign-in sheet of these (email, phone) rows; the rows it kept (a person on
        the sheet twice, by email or phone, is kept once)."""
        sheet = ["name,email,mobile"] + [
            f"Robin Person{e},{self.email(e)},{self.phone(p)}" for e, p in rows
        ]
        parsed = parse_sign_in_sheet(sheet, f"meeting-{uuid.uuid4()}", self.now())
        if parsed.events:
            self.ingest(parsed.events)
        emails = {self.email(i): i for i in range(PEOPLE)}
        phones = {self.phone(i): i for i in range(PEOPLE)}
        return [(emails[e["email"]], phones[e["phone"]]) for e in parsed.events]

    def linked(self, address: Address) -> str | None:
        kind, _ = address
        identity = contact_identity(KEY, kind, self.address(address))  # type: ignore[arg-type]
        with self.sessions() as session:
            link = session.get(IdentityLink, identity)
            return survivor_of(session, link.supporter_id) if link is not None else None


def check(store: Store, model: Model) -> None:
    owners = {a: store.linked(a) for a in itertools.product(("email", "phone"), range(PEOPLE))}
    for a, b in itertools.combinations(owners, 2):
        if a in model.owner and b in model.owner:
            same = model.owner[a] == model.owner[b]
            assert (owners[a] == owners[b]) == same, (a, b, owners, model.owner)
    for address, sid in owners.items():
        assert (sid is not None) == (address in model.owner), (address, sid, model.owner)
        assert sid not in store.erased_ids, (address, "an erased id came back")
    with store.sessions() as session:
        rows = session.scalars(select(Supporter).where(Supporter.email.like(f"%.{store.tag}@%")))
        held = {r.email for r in rows} | set(
            session.scalars(
                select(Supporter.phone).where(
                    Supporter.phone.in_([store.phone(i) for i in range(PEOPLE)])
                )
            )
        )
        erased_ids_held = session.scalars(
            select(Supporter.supporter_id).where(Supporter.supporter_id.in_(store.erased_ids))
        ).all()
        stopped = suppressed(
            session,
            KEY,
            [("email" if a[0] == "email" else "sms", store.address(a)) for a in model.erased],
        )
    for address in model.erased - model.owner.keys():  # erased, not given again since
        assert store.address(address) not in held, (address, "an erased address is still held")
    assert erased_ids_held == []
    assert len(stopped) == len(model.erased), (stopped, model.erased)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(plan=steps)
def test_who_is_who_survives_any_sequence_of_signups_imports_and_erasures(
    sessions: sessionmaker[Session], plan: list[tuple[Any, ...]]
) -> None:
    number = next(_EXAMPLE)
    store, model = Store(sessions, f"x{number}{uuid.uuid4().hex[:8]}", number), Model()
    for step in plan:
        match step:
            case ("signup", email, phone):
                store.signup(email, phone)
                model.link(email, phone)
            case ("import", rows):
                for email, phone in store.import_sheet(rows):
                    model.link(email, phone)
            case ("erase", address):
                sid = store.linked(address)
                found = erase(sessions, KEY, store.address(address), "property", store.now())
                assert (found is not None) == model.erase(address), (step, found)
                if found is not None and sid is not None:
                    assert not found.already_erased
                    store.erased_ids.add(sid)
            case ("erase-by-id", address):
                sid = store.linked(address)
                if sid is None:
                    continue
                result = erase(sessions, KEY, sid, "property", store.now())
                assert result is not None and not result.already_erased
                assert model.erase(address)
                store.erased_ids.add(sid)
                again = erase(sessions, KEY, sid, "property", store.now())
                assert again is not None and again.already_erased
        check(store, model)
