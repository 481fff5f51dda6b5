"""Identity links, merges and "brought by" credit through the ingest API, on both databases;
random ids at first sight, supporters stored before identity links, and an erased person's
address coming back."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engage.erasure import erase
from infra.db import (
    ConsentRecord,
    Erasure,
    IdentityLink,
    LedgerEvent,
    Supporter,
    SupporterAlias,
    make_engine,
    migrate,
    session_factory,
)
from producers import ledger as ledger_module
from producers.api import IngestService
from producers.ledger import merge_event_id
from schemas.events import IdentityMerged, SupporterBrought, derived_event_id
from schemas.identity import contact_identity, legacy_supporter_id
from tests.databases import fresh_pg_schema
from tests.factories import add_supporter, id_of, ids_given_next, linked_id
from tests.integration.test_ingest_api import (
    KEY,
    TOKEN,
    WHEN,
    attended,
    click,
    consent,
    petition,
    signup,
)

JO = "jo.bloggs@example.org"
PHONE = "+447911123456"


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api, headers=headers, trust_env=False, timeout=30) as c:
        yield c


def rows(sessions: sessionmaker[Session]) -> list[LedgerEvent]:
    with sessions() as session:
        return list(session.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)))


def merged(sessions: sessionmaker[Session]) -> dict[str, IdentityMerged]:
    """identity.merged records in the ledger, by role and keyed as published."""
    found: dict[str, IdentityMerged] = {}
    for row in rows(sessions):
        if row.topic == "identity.merged":
            record = IdentityMerged.model_validate_json(row.payload)
            assert row.key == record.supporter_id
            found[f"{record.role}:{record.supporter_id}"] = record
    return found


def by_event_id(sessions: sessionmaker[Session]) -> dict[str, LedgerEvent]:
    return {str(r.event_id): r for r in rows(sessions)}


def aliases(sessions: sessionmaker[Session]) -> dict[str, tuple[str, uuid.UUID]]:
    with sessions() as session:
        return {
            a.absorbed_id: (a.survivor_id, a.event_id)
            for a in session.scalars(select(SupporterAlias))
        }


def links(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        return {link.identity: link.supporter_id for link in session.scalars(select(IdentityLink))}


def post(client: httpx.Client, *events: dict[str, Any]) -> httpx.Response:
    response = client.post("/v1/events/batch", json={"events": list(events)})
    assert response.status_code == 202, response.text
    return response


def test_an_email_only_and_a_phone_only_supporter_merge_when_an_event_links_them(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    by_email = signup(email=JO, first_name="Jo", postcode=None, area="Tower Hamlets")
    by_phone = signup(
        email=None,
        phone="07911 123456",
        first_name="Joanne",
        last_name="Bloggs",
        postcode="m1 1aa",
        area="Manchester",
        consent_email=False,
        consent_sms=True,
        event_time=(WHEN - timedelta(days=30)).isoformat(),
    )
    signed = petition(phone="07911 123456")
    post(client, by_email)
    post(client, by_phone, signed)
    email_sid = id_of(sessions, KEY, email=JO)  # two people so far: read before the merge
    phone_sid = id_of(sessions, KEY, phone=PHONE)
    assert email_sid != phone_sid
    keys = by_event_id(sessions)
    assert keys[by_email["event_id"]].key == email_sid
    assert keys[by_phone["event_id"]].key == keys[signed["event_id"]].key == phone_sid
    assert merged(sessions) == {}

    linking = attended(email=JO, phone="07911 123456", meeting_id="m-7")
    response = post(client, linking)

    assert response.json()["accepted"] == [linking["event_id"]]  # derived records not listed
    assert aliases(sessions) == {phone_sid: (email_sid, uuid.UUID(linking["event_id"]))}
    records = merged(sessions)
    assert set(records) == {f"survivor:{email_sid}", f"absorbed:{phone_sid}"}
    survivor, absorbed = records[f"survivor:{email_sid}"], records[f"absorbed:{phone_sid}"]
    for record in (survivor, absorbed):
        assert (record.survivor_id, record.absorbed_id) == (email_sid, phone_sid)
        assert record.event_time.isoformat() == linking["event_time"]
        assert record.event_id == merge_event_id(phone_sid, email_sid, record.role)
    assert absorbed.actions == []
    assert [(str(a.event_id), a.type, a.kind) for a in survivor.actions] == [
        (by_phone["event_id"], "supporter.signup", "supporter.signup"),
        (by_phone["event_id"], "supporter.signup", "sms.opted_in"),
        (signed["event_id"], "petition.signed", "petition.signed"),
    ]
    signup_action = survivor.actions[0]
    assert signup_action.event_time.isoformat() == by_phone["event_time"]
    assert (signup_action.area, signup_action.consent_email, signup_action.consent_sms) == (
        "Manchester",
        False,
        True,
    )
    assert (survivor.actions[2].consent_email, survivor.actions[2].consent_sms) == (None, None)

    # The merge is in the ledger before the event that caused it, which is the survivor's.
    ledger_rows = rows(sessions)
    order = [str(r.event_id) for r in ledger_rows]
    assert order.index(str(survivor.event_id)) < order.index(linking["event_id"])
    assert by_event_id(sessions)[linking["event_id"]].key == email_sid
    assert json.loads(by_event_id(sessions)[linking["event_id"]].payload)["supporter_id"] == (
        email_sid
    )

    # Both contacts now belong to the survivor; only keyed hashes are stored.
    assert links(sessions) == {
        contact_identity(KEY, "email", JO): email_sid,
        contact_identity(KEY, "phone", PHONE): email_sid,
    }
    assert not any(JO in i or PHONE in i or "7911" in i for i in links(sessions))
    with sessions() as session:
        consent_rows = session.scalars(select(ConsentRecord)).all()
        person = session.get(Supporter, email_sid)
    assert sorted((c.supporter_id, c.channel, c.granted) for c in consent_rows) == [
        (email_sid, "email", True),
        (email_sid, "sms", True),
    ]
    assert person is not None
    # Empty fields filled from the absorbed supporter; the survivor's own values kept.
    assert (person.first_name, person.last_name, person.postcode, person.phone) == (
        "Jo",
        "Bloggs",
        "M1 1AA",
        PHONE,
    )

    # Later: the phone alone, or the absorbed id itself, reach the survivor.
    later = petition(phone="07911 123456", petition_id="buses")
    clicked = click(phone_sid)
    post(client, later, clicked)
    keys = by_event_id(sessions)
    assert keys[later["event_id"]].key == email_sid
    assert keys[clicked["event_id"]].key == email_sid
    assert json.loads(keys[clicked["event_id"]].payload)["supporter_id"] == email_sid

    # The same linking event again is a duplicate and merges nothing twice.
    again = client.post("/v1/events", json=linking)
    assert again.json()["duplicates"] == [linking["event_id"]]
    assert len(rows(sessions)) == len(ledger_rows) + 2
    assert len(aliases(sessions)) == 1


def test_one_batch_resolves_in_order_as_separate_requests_would(
    client: httpx.Client, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ids the email and then the phone get when first seen, early in the batch.
    email_sid, phone_sid = ids_given_next(monkeypatch, 2)
    events = [
        signup(email=JO, consent_email=True),
        petition(phone="07911 123456"),
        consent(phone_sid, channel="sms", granted=True, source="form"),  # known from the line above
        attended(email=JO, phone="07911 123456"),
        petition(phone="07911 123456", petition_id="buses"),
        click(phone_sid),
    ]
    response = post(client, *events)

    assert response.json()["accepted"] == [e["event_id"] for e in events]
    keys = by_event_id(sessions)
    expected = [email_sid, phone_sid, phone_sid, email_sid, email_sid, email_sid]
    assert [keys[e["event_id"]].key for e in events] == expected
    assert links(sessions) == {
        contact_identity(KEY, "email", JO): email_sid,
        contact_identity(KEY, "phone", PHONE): email_sid,
    }
    assert aliases(sessions) == {phone_sid: (email_sid, uuid.UUID(events[3]["event_id"]))}
    survivor = merged(sessions)[f"survivor:{email_sid}"]
    assert [(str(a.event_id), a.kind) for a in survivor.actions] == [
        (events[1]["event_id"], "petition.signed"),
        (events[2]["event_id"], "sms.opted_in"),
    ]
    with sessions() as session:
        consent_rows = session.scalars(select(ConsentRecord)).all()
    assert sorted((c.supporter_id, c.channel, c.source) for c in consent_rows) == [
        (email_sid, "email", "signup"),
        (email_sid, "sms", "form"),
    ]


def test_a_supporter_merged_twice_takes_everything_merged_into_it_along(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    first, second, mobile = "first@example.org", "second@example.org", "07400 123456"
    by_phone = petition(phone=mobile)
    by_first = signup(email=first)
    link_first = attended(email=first, phone=mobile)  # s_phone merged into s_first
    by_second = signup(email=second)
    link_second = attended(email=second, phone=mobile)  # s_first merged into s_second
    post(client, by_phone)
    s_phone = id_of(sessions, KEY, phone=mobile)  # each id read when first given
    post(client, by_first)
    s_first = id_of(sessions, KEY, email=first)
    post(client, link_first)
    post(client, by_second)
    s_second = id_of(sessions, KEY, email=second)
    post(client, link_second)
    assert len({s_phone, s_first, s_second}) == 3

    assert aliases(sessions) == {
        s_phone: (s_second, uuid.UUID(link_first["event_id"])),
        s_first: (s_second, uuid.UUID(link_second["event_id"])),
    }
    assert set(links(sessions).values()) == {s_second}
    records = merged(sessions)
    assert set(records) == {
        f"survivor:{s_first}",
        f"absorbed:{s_phone}",
        f"survivor:{s_second}",
        f"absorbed:{s_first}",
    }
    carried = {(str(a.event_id), a.kind) for a in records[f"survivor:{s_second}"].actions}
    assert carried == {
        (by_phone["event_id"], "petition.signed"),
        (by_first["event_id"], "supporter.signup"),
        (by_first["event_id"], "email.opted_in"),
        (link_first["event_id"], "event.attended"),
    }
    assert by_event_id(sessions)[link_second["event_id"]].key == s_second
    later = click(s_phone)
    post(client, later)
    assert by_event_id(sessions)[later["event_id"]].key == s_second
    with sessions() as session:
        owners = {c.supporter_id for c in session.scalars(select(ConsentRecord))}
    assert owners == {s_second}


def test_an_attendance_brought_by_someone_credits_them(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    brought_new = attended(brought_by_email="  New.Friend@Example.org ", meeting_id="m-2")
    post(client, petition(phone="07911 123456"))
    bringer_by_phone = id_of(sessions, KEY, phone=PHONE)
    brought_known = attended(email="alex@example.org", brought_by_phone="07911 123456")
    themselves = attended(email="kim@example.org", brought_by_email="kim@example.org")
    response = post(client, brought_new, brought_known, themselves)

    assert response.json()["accepted"] == [
        brought_new["event_id"],
        brought_known["event_id"],
        themselves["event_id"],
    ]
    credits = {
        r.key: SupporterBrought.model_validate_json(r.payload)
        for r in rows(sessions)
        if r.topic == "supporter.brought"
    }
    sam = id_of(sessions, KEY, email="sam@example.org")
    alex = id_of(sessions, KEY, email="alex@example.org")
    kim = id_of(sessions, KEY, email="kim@example.org")
    assert len(credits) == 2 and bringer_by_phone in credits  # nobody brings themselves
    (new_friend,) = set(credits) - {bringer_by_phone}
    assert len({sam, alex, kim, new_friend, bringer_by_phone}) == 5
    credit = credits[new_friend]
    assert credit.event_id == derived_event_id(uuid.UUID(brought_new["event_id"]), "brought")
    assert (credit.brought_supporter_id, credit.meeting_id) == (sam, "m-2")
    assert credit.event_time.isoformat() == brought_new["event_time"]
    assert credits[bringer_by_phone].brought_supporter_id == alex

    # The bringer never seen before is linked and kept, so they are the same person later.
    assert links(sessions)[contact_identity(KEY, "email", "new.friend@example.org")] == new_friend
    with sessions() as session:
        person = session.get(Supporter, new_friend)
        assert person is not None
        assert person.email == "new.friend@example.org"
    joins = signup(email="new.friend@example.org")
    post(client, joins, click(new_friend))
    assert by_event_id(sessions)[joins["event_id"]].key == new_friend


def test_concurrently_linked_contacts_are_seen_and_merged_on_the_retry(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request links the phone after this one read the links, before it wrote its
    own: the insert finds the link taken, the transaction runs again and merges."""
    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    assert service.ingest([signup(email=JO)], "").accepted
    email_sid = id_of(sessions, KEY, email=JO)
    rival = petition(phone="07911 123456")
    ours = attended(email=JO, phone="07911 123456")
    save_links = ledger_module._Identities.save_links
    calls: list[str] = []
    rivals: list[str] = []

    def rival_first(self: Any) -> None:
        calls.append("save")
        if len(calls) == 1:  # the rival commits between our read and our write
            assert service.ingest([rival], "").accepted == [uuid.UUID(rival["event_id"])]
            rivals.append(id_of(sessions, KEY, phone=PHONE))  # before our retry merges it
        save_links(self)

    monkeypatch.setattr(ledger_module._Identities, "save_links", rival_first)
    result = service.ingest([ours], "")

    assert result.accepted == [uuid.UUID(ours["event_id"])]
    assert calls == ["save", "save", "save"]  # ours, the rival's inside it, ours again
    (phone_sid,) = rivals
    assert phone_sid != email_sid
    keys = by_event_id(sessions)
    assert keys[rival["event_id"]].key == phone_sid
    assert keys[ours["event_id"]].key == email_sid
    assert aliases(sessions) == {phone_sid: (email_sid, uuid.UUID(ours["event_id"]))}
    assert set(merged(sessions)) == {f"survivor:{email_sid}", f"absorbed:{phone_sid}"}
    assert set(links(sessions).values()) == {email_sid}


def test_a_concurrent_link_to_the_same_supporter_is_no_conflict(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    ours = petition(email=JO, phone=None)
    save_links = ledger_module._Identities.save_links
    calls: list[str] = []
    chosen: list[str] = []

    def rival_first(self: Any) -> None:
        calls.append("save")
        email = contact_identity(KEY, "email", JO)
        chosen.append(self.owners[email])  # the id this transaction gave the email
        with sessions.begin() as rival:  # a rival that linked the email the same way
            rival.add(IdentityLink(identity=email, supporter_id=chosen[-1]))
        save_links(self)

    monkeypatch.setattr(ledger_module._Identities, "save_links", rival_first)
    result = service.ingest([ours], "")

    assert result.accepted == [uuid.UUID(ours["event_id"])]
    assert calls == ["save"]  # no second attempt
    (email_sid,) = chosen
    assert [r.key for r in rows(sessions)] == [email_sid]
    assert links(sessions) == {contact_identity(KEY, "email", JO): email_sid}


def test_requests_racing_on_the_same_new_contacts_agree_on_one_supporter(
    api: str, sessions: sessionmaker[Session]
) -> None:
    events = [attended(email=JO, phone="07911 123456") for _ in range(8)]
    start = threading.Barrier(len(events))
    statuses: list[int] = []

    def send(event: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=api, headers=headers, trust_env=False, timeout=60) as c:
            start.wait(10)
            statuses.append(c.post("/v1/events", json=event).status_code)

    threads = [threading.Thread(target=send, args=(e,)) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert statuses == [202] * len(events)
    email_sid = id_of(sessions, KEY, email=JO)
    assert {r.key for r in rows(sessions)} == {email_sid}
    assert len(rows(sessions)) == len(events)
    assert set(links(sessions).values()) == {email_sid}
    assert len(links(sessions)) == 2
    assert aliases(sessions) == {}


def test_an_event_for_a_supporter_merged_away_meanwhile_goes_to_the_survivor(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal read its supporter just before another request merged them into someone
    else: it must not be left on the id that is gone (the survivor would keep the consent)."""
    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    texts_ok = signup(email=None, phone="07911 123456", consent_email=False, consent_sms=True)
    assert service.ingest([signup(email=JO), texts_ok], "").accepted
    email_sid = id_of(sessions, KEY, email=JO)
    phone_sid = id_of(sessions, KEY, phone=PHONE)
    assert email_sid != phone_sid
    linking = attended(email=JO, phone="07911 123456")
    stop_texts = consent(phone_sid, channel="sms", granted=False, source="sms_stop")
    save_links = ledger_module._Identities.save_links
    calls: list[str] = []

    def merge_first(self: Any) -> None:
        calls.append("save")
        if len(calls) == 1:
            assert service.ingest([linking], "").accepted == [uuid.UUID(linking["event_id"])]
        save_links(self)

    monkeypatch.setattr(ledger_module._Identities, "save_links", merge_first)
    result = service.ingest([stop_texts], "")

    assert result.accepted == [uuid.UUID(stop_texts["event_id"])]
    assert len(calls) == 3  # ours, the merge's inside it, ours again
    assert by_event_id(sessions)[stop_texts["event_id"]].key == email_sid
    with sessions() as session:
        sms = session.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.channel == "sms")
            .order_by(ConsentRecord.recorded_at)
        ).all()
    assert [(c.supporter_id, c.granted) for c in sms] == [(email_sid, True), (email_sid, False)]


# --- random ids at first sight ---------------------------------------------------------------


@contextlib.contextmanager
def another_store(database_url: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A second empty store of the test's kind (SQLite, or a PostgreSQL schema), migrated."""
    with contextlib.ExitStack() as stack:
        if database_url.startswith("sqlite"):
            url = f"sqlite:///{tmp_path / 'another.db'}"
        else:
            url = stack.enter_context(fresh_pg_schema())
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate(engine)
        yield session_factory(engine)


def test_a_new_persons_id_is_random_not_a_keyed_hash_of_their_address(
    sessions: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    """Nothing about the person gives their id back, not even their address with our key:
    the same address with the same key gets another id in another store."""
    given: list[str] = []
    with another_store(database_url, tmp_path) as elsewhere:
        for store in (sessions, elsewhere):
            service = IngestService(store, identity_key=KEY, token=TOKEN)
            event = signup(email=JO, phone="07911 123456")
            assert service.ingest([event], "").accepted == [uuid.UUID(event["event_id"])]
            sid = id_of(store, KEY, email=JO)
            assert id_of(store, KEY, phone=PHONE) == sid
            assert by_event_id(store)[event["event_id"]].key == sid
            given.append(sid)

    here, there = given
    assert here != there
    computable = {
        legacy_supporter_id(KEY, JO, None),
        legacy_supporter_id(KEY, None, PHONE),
    }
    links_made = (contact_identity(KEY, "email", JO), contact_identity(KEY, "phone", PHONE))
    for sid in given:
        assert re.fullmatch(r"sup_[0-9a-f]{32}", sid)
        assert sid not in computable
        assert not any(sid.removeprefix("sup_") in link for link in links_made)
    # Their address finds the id they were given from now on (through its link).
    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    later = petition(email=JO, phone=None, petition_id="buses")
    assert service.ingest([later], "").accepted
    assert by_event_id(sessions)[later["event_id"]].key == here


@pytest.mark.parametrize(
    ("stored", "posted", "linked"),
    [
        (
            {"email": JO},
            {"email": JO, "phone": "07911 123456"},
            {("email", JO), ("phone", PHONE)},
        ),
        ({"phone": PHONE}, {"email": None, "phone": "07911 123456"}, {("phone", PHONE)}),
    ],
    ids=["by-email", "by-phone"],
)
def test_a_supporter_stored_before_identity_links_keeps_their_id_and_gets_links(
    sessions: sessionmaker[Session],
    stored: dict[str, str],
    posted: dict[str, str | None],
    linked: set[tuple[Literal["email", "phone"], str]],
) -> None:
    """Stored under the legacy id of their address, with no link to be found by: their
    address posted again reaches them (not a new random id) and is linked to them."""
    legacy = legacy_supporter_id(KEY, stored.get("email"), stored.get("phone"))
    with sessions.begin() as session:
        add_supporter(session, legacy, consented_at=WHEN, consent=("email",), **stored)
    assert links(sessions) == {}

    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    again = petition(**posted)
    assert service.ingest([again], "").accepted == [uuid.UUID(again["event_id"])]

    assert by_event_id(sessions)[again["event_id"]].key == legacy
    assert links(sessions) == {contact_identity(KEY, kind, value): legacy for kind, value in linked}
    with sessions() as session:
        assert session.scalars(select(Supporter.supporter_id)).all() == [legacy]
        assert session.scalars(select(ConsentRecord.supporter_id)).all() == [legacy]
    # From now on the link finds them: by the address again, and by their id.
    later = petition(**posted, petition_id="buses")
    clicked = click(legacy)
    assert service.ingest([later, clicked], "").accepted
    keys = by_event_id(sessions)
    assert keys[later["event_id"]].key == keys[clicked["event_id"]].key == legacy
    assert aliases(sessions) == {}


def test_an_erased_persons_address_posted_again_gets_a_new_id(
    sessions: sessionmaker[Session],
) -> None:
    """Erasure deletes their links, so their address leads to nobody: a request by it finds
    nobody, a repeat by their old id is recognised, and their address coming back is a new
    person with a new id (the old one is not revived)."""
    service = IngestService(sessions, identity_key=KEY, token=TOKEN)
    assert service.ingest([signup(email=JO)], "").accepted
    erased = id_of(sessions, KEY, email=JO)

    first = erase(sessions, KEY, JO, "test")
    assert first is not None and not first.already_erased
    with sessions() as session:
        assert linked_id(session, KEY, email=JO) is None
    assert erase(sessions, KEY, JO, "test") is None  # the address leads to nobody now
    repeat = erase(sessions, KEY, erased, "test")
    assert repeat is not None and repeat.already_erased and repeat.rows == {}
    with sessions() as session:
        assert [a.repeat for a in session.scalars(select(Erasure).order_by(Erasure.erased_at))] == [
            False,
            True,
        ]

    back = signup(email=JO)
    assert service.ingest([back], "").accepted == [uuid.UUID(back["event_id"])]

    sid = id_of(sessions, KEY, email=JO)
    assert sid != erased
    assert by_event_id(sessions)[back["event_id"]].key == sid
    with sessions() as session:
        assert session.get(Supporter, erased) is None
        person = session.get(Supporter, sid)
        assert person is not None and person.email == JO
    refused = service.ingest([click(erased)], "")  # the old id is not revived
    assert [(r.index, [(e.field, e.reason) for e in r.errors]) for r in refused.rejected] == [
        (0, [("supporter_id", "no such supporter")])
    ]
