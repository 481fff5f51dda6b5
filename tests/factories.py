"""The rows and events the integration tests set up again and again: a supporter with consent,
a nudge request; and the ids the ingest gave people, read back from the store."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import ConsentRecord, IdentityLink, Supporter, SupporterAlias
from producers import ledger
from schemas.events import NudgeRequested
from schemas.identity import (
    contact_identity,
    new_supporter_id,
    normalise_email,
    normalise_phone,
)


def consent_record(
    sid: str,
    channel: str,
    recorded_at: datetime,
    *,
    granted: bool = True,
    source: str = "signup",
    wording_version: str | None = None,
) -> ConsentRecord:
    """A consent row as the signup writes it: ``channel`` granted at ``recorded_at``."""
    return ConsentRecord(
        supporter_id=sid,
        channel=channel,
        granted=granted,
        source=source,
        wording_version=wording_version,
        recorded_at=recorded_at,
    )


def add_supporter(
    session: Session,
    sid: str,
    *,
    consented_at: datetime,
    email: str | None = None,
    phone: str | None = None,
    first_name: str | None = "Jo",
    area: str | None = None,
    consent: Iterable[str] = ("email", "sms"),
    wording_version: str | None = None,
) -> None:
    """A supporter with these contact details, and a signup's consent to each channel of
    ``consent`` recorded at ``consented_at``."""
    session.add(
        Supporter(supporter_id=sid, email=email, phone=phone, first_name=first_name, area=area)
    )
    for channel in consent:
        session.add(consent_record(sid, channel, consented_at, wording_version=wording_version))


def nudge_request(
    nudge_id: str,
    sid: str,
    channel: str,
    at: datetime,
    *,
    template: str = "welcome",
    rule: str = "welcome",
    context: dict[str, str] | None = None,
    holdout: bool = False,
) -> NudgeRequested:
    """A nudge the stream worker requested at ``at`` (a welcome unless told otherwise), with a
    cause event of its own."""
    return NudgeRequested(
        event_time=at,
        nudge_id=nudge_id,
        supporter_id=sid,
        channel=channel,
        template=template,
        rule=rule,
        cause_event_id=uuid.uuid4(),
        context=context or {},
        holdout=holdout,
    )


def linked_id(
    session: Session, key: str, *, email: str | None = None, phone: str | None = None
) -> str | None:
    """The supporter id the identity link of this email or phone names, or None when it has
    no link. Ids are random, so a test learns them this way: the link of the normalised
    address (its keyed hash), never a search of stored addresses. Links move to the survivor
    of a merge, so after one this is the survivor; read an absorbed id before the merge, or
    with ``absorbed_into``."""
    if (email is None) == (phone is None):
        raise ValueError("exactly one of an email and a phone")
    if email is not None:
        identity = contact_identity(key, "email", normalise_email(email))
    else:
        assert phone is not None
        identity = contact_identity(key, "phone", normalise_phone(phone))
    link = session.get(IdentityLink, identity)
    return None if link is None else link.supporter_id


def id_of(
    sessions: sessionmaker[Session],
    key: str,
    *,
    email: str | None = None,
    phone: str | None = None,
) -> str:
    """``linked_id`` in a session of its own, for an address that must be linked by now."""
    with sessions() as session:
        sid = linked_id(session, key, email=email, phone=phone)
    assert sid is not None, f"no identity link for {email or phone}"
    return sid


def absorbed_into(session: Session, survivor: str) -> list[str]:
    """The ids merged into ``survivor`` (``supporter_aliases``), oldest merge first."""
    return list(
        session.scalars(
            select(SupporterAlias.absorbed_id)
            .where(SupporterAlias.survivor_id == survivor)
            .order_by(SupporterAlias.merged_at, SupporterAlias.absorbed_id)
        )
    )


def ids_given_next(monkeypatch: pytest.MonkeyPatch, count: int) -> list[str]:
    """The ids the next ``count`` people the ingest sees for the first time will be given, in
    order (random, drawn here; random again after them). Only for a batch that names someone by
    the id they are given earlier in the same batch, which no client can know otherwise. A
    transaction run again (a conflict) draws again: use it where nothing races."""
    ids = [new_supporter_id() for _ in range(count)]
    queue = list(ids)

    def given(rng: random.Random | None = None) -> str:
        return queue.pop(0) if queue else new_supporter_id(rng)

    monkeypatch.setattr(ledger, "new_supporter_id", given)
    return ids
