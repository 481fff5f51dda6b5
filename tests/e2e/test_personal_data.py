"""Personal data only where it is needed: after simulated traffic through `engage up`, no topic
(every catalogue topic read to its high watermark) and no ledger payload holds anyone's email,
phone, name or full postcode; the ``supporters`` table holds them for the sender. Then a few of
the most active people are erased with `engage erase`: no table, no topic and no stored score
holds their email, phone or surname any more, and the others' are still held."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from infra.db import Base
from infra.topic_reader import read_to_end
from producers.simulator import generate_events
from schemas.catalogue import TOPICS
from schemas.events import LEGACY_CONTACT_FIELDS, normalise_postcode
from schemas.identity import normalise_email, normalise_phone
from tests.e2e.conftest import Pipeline
from tests.polling import wait_until

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Person:
    email: str
    phone: str | None
    surname: str


def _keys(value: Any) -> Iterator[str]:
    """Every key of every object in a JSON value, however deep."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def _identifying(events: list[dict[str, Any]]) -> set[str]:
    """What the posted events said that identifies a person, as it would appear in JSON."""
    normalise = {
        "email": normalise_email,
        "brought_by_email": normalise_email,
        "phone": normalise_phone,
        "brought_by_phone": normalise_phone,
        "postcode": normalise_postcode,
    }
    found: set[str] = set()
    for event in events:
        for name, normal in normalise.items():
            if event.get(name):
                found.add(str(event[name]).lower())  # as posted, and as the API keeps it
                with contextlib.suppress(ValueError):
                    found.add(normal(str(event[name])).lower())
        for name in ("first_name", "last_name"):
            if event.get(name):
                found.add(json.dumps(event[name]).lower())  # as a whole JSON string value
    return found


def _with_unique_surnames(events: list[dict[str, Any]]) -> list[Person]:
    """The people whose surname nobody else has (so finding it anywhere means finding them),
    with their email, phone (if they gave one) and surname, the most active first."""
    surnames = Counter(e["last_name"] for e in events if e.get("last_name"))
    activity = Counter(e["email"] for e in events if e.get("email"))
    people = {
        e["email"]: Person(e["email"], e.get("phone"), e["last_name"])
        for e in events
        if e["type"] == "supporter.signup" and e.get("email") and surnames[e.get("last_name")] == 1
    }
    ranked = sorted(people, key=lambda email: (-activity[email], email))
    return [people[email] for email in ranked]


def _every_row(database_url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return "\n".join(
                repr(tuple(row))
                for table in Base.metadata.sorted_tables
                for row in connection.execute(select(table)).all()
            ).lower()
    finally:
        engine.dispose()


def _erase_and_scan(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    candidates = _with_unique_surnames(events)
    erased, kept = candidates[:3], candidates[3:]
    assert len(erased) == 3 and kept
    ids = []
    for person in erased:
        ids.append(pipeline.cli("export", person.email)["supporter_id"])
        result = pipeline.cli("erase", person.email, "--by", "e2e", "--json")
        assert result["already_erased"] is False and result["rows"]["supporters"] == 1, result
    wait_until(
        "the erasures to be published and folded",
        lambda: (
            (s := pipeline.cli("status", "--json"))["ledger"]["unpublished"] == 0
            and s["consumer_lag"]["engage-stream"] == 0
            and s["topics"]["supporter.erased"] >= 3
        ),
        120,
        1.0,
    )
    rows = _every_row(pipeline.run["database_url"])
    records = list(
        read_to_end(pipeline.run["bootstrap"], [spec.name for spec in TOPICS], deadline_s=60)
    )
    topics = "\n".join((r.value or b"").decode() for r in records).lower()
    for person in erased:
        for trace in filter(None, (person.email, person.phone, person.surname)):
            assert trace.lower() not in rows, f"a table still holds {trace!r}"
            assert trace.lower() not in topics, f"a topic still holds {trace!r}"
    scores = _every_row_of(pipeline.run["database_url"], "supporter_scores")
    assert not any(sid in scores for sid in ids), "an erased person's score is still stored"
    for person in kept:
        assert person.email.lower() in rows, "erasing three people took someone else's row"


def _every_row_of(database_url: str, table: str) -> str:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return repr(connection.execute(select(Base.metadata.tables[table])).all())
    finally:
        engine.dispose()


def test_no_topic_and_no_ledger_payload_holds_contact_details(pipeline: Pipeline) -> None:
    events = generate_events(60, seed=5, start=datetime.now(UTC) - timedelta(days=29))
    for start in range(0, len(events), 200):
        response = pipeline.post(events[start : start + 200])
        assert response.status_code == 202, response.text
    wait_until(
        "the ledger to be published and the stream to catch up",
        lambda: (
            (s := pipeline.cli("status", "--json"))["ledger"]["unpublished"] == 0
            and s["consumer_lag"]["engage-stream"] == 0
            and s["topics"]["engagement.scored"] > 0
        ),
        120,
        1.0,
    )
    identifying = _identifying(events)
    assert len(identifying) > 100  # the traffic did name people

    bootstrap = pipeline.run["bootstrap"]
    records = list(read_to_end(bootstrap, [spec.name for spec in TOPICS], deadline_s=60))
    assert len(records) >= len(events)
    engine = create_engine(pipeline.run["database_url"])
    try:
        with engine.connect() as connection:
            payloads = list(connection.scalars(text("select payload from ledger")))
            stored = set(connection.scalars(text("select email from supporters")))
    finally:
        engine.dispose()
    assert len(payloads) >= len(events)
    assert {normalise_email(e["email"]) for e in events if e.get("email")} <= stored  # kept

    texts = [(r.value or b"").decode() + " " + (r.key or b"").decode() for r in records]
    for where, body in [("topic", t) for t in texts] + [("ledger", p) for p in payloads]:
        lowered = body.lower()
        leaked = sorted(value for value in identifying if value in lowered)
        assert leaked == [], f"{where} record holds {leaked[:3]}: {body[:300]}"
    for body in [r.value for r in records if r.value] + payloads:
        keys = set(_keys(json.loads(body)))
        assert not keys & set(LEGACY_CONTACT_FIELDS), body[:300]

    _erase_and_scan(pipeline, events)
