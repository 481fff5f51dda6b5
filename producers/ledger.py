"""The ingest ledger: events, contacts, consent and identity links, committed in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from infra.consent import consent_record
from infra.db import (
    ConsentRecord,
    IdentityLink,
    LedgerEvent,
    Supporter,
    SupporterAlias,
    insert_ignoring_duplicates,
)
from infra.outbox import ledger_row
from schemas.actions import action_kinds
from schemas.events import (
    INGEST_TO_TOPIC,
    INPUT_EVENT_TYPES,
    AttendedIn,
    ByIdFields,
    ConsentChanged,
    ContactFields,
    Event,
    IdentityMerged,
    MergedAction,
    SupporterBrought,
    SupporterErased,
    SupporterSignup,
    derived_event_id,
)
from schemas.identity import contact_identity, legacy_supporter_id, new_supporter_id

_CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "postcode", "area", "timezone")
_MERGE_NAMESPACE = uuid.UUID("a6de178c-0dd6-41eb-a03a-eeb57f3af7ad")
LEDGER_CHANNEL = "engage_ledger"
"""The PostgreSQL channel a transaction that adds ledger events NOTIFYs (delivered when it
commits), and the relay LISTENs on (producers/relay.py); SQLite has none, the relay polls."""


def notify_relay(session: Session) -> None:
    """Wake the relay when the caller's transaction commits (on PostgreSQL; a no-op else)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {LEDGER_CHANNEL}"))


def merge_event_id(
    absorbed: str, survivor: str, role: Literal["survivor", "absorbed"]
) -> uuid.UUID:
    """The id of one of a merge's two identity.merged records, the same on every replay."""
    return uuid.uuid5(_MERGE_NAMESPACE, f"{absorbed}:{survivor}:{role}")


class IdentityConflict(Exception):
    """Another transaction linked one of these emails or phones to another supporter
    meanwhile; running the transaction again sees its link and resolves (or merges) by it."""


@dataclass
class Ingested:
    """What became of posted events: ids accepted and repeated, and the positions of
    by-id events naming no supporter (not even one merged into another)."""

    accepted: list[uuid.UUID] = field(default_factory=list)
    duplicates: list[uuid.UUID] = field(default_factory=list)
    unknown_supporter: list[int] = field(default_factory=list)


def record_events(
    session: Session,
    events: Sequence[Event],
    accepted_at: datetime,
    contacts: Sequence[ContactFields | None] | None = None,
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Add events not seen before to the ledger; return (accepted ids, duplicate ids).

    The events already carry their supporter ids. ``contacts``, if given, lines up with
    ``events``: the contact details that came with each (kept in the supporter's row, never
    in the ledger). The caller owns the transaction: the API answers 202 only after it commits.
    """
    ledger = _Ledger(session, accepted_at)
    ledger.load_seen([e.event_id for e in events])
    accepted: list[uuid.UUID] = []
    duplicates: list[uuid.UUID] = []
    given = list(contacts) if contacts is not None else [None] * len(events)
    if len(given) != len(events):
        raise ValueError(f"{len(given)} contacts for {len(events)} events")
    for event, contact in zip(events, given, strict=True):
        (accepted if ledger.append(event, contact) else duplicates).append(event.event_id)
    return accepted, duplicates


def ingest_events(
    session: Session, posted: Sequence[Event], accepted_at: datetime, identity_key: str
) -> Ingested:
    """Resolve who each posted ingest event (schemas.events ``*In``) is about, in order, and
    add it to the ledger as its topic event, with the merges and credits it causes.

    An event with an email or phone is keyed by the supporter those are linked to, and links
    what was not linked yet; an email and a phone of two supporters merge them (the email's
    owner survives). A by-id event (outcome, click, consent) is keyed by its supporter, or by
    the one that supporter was merged into. An attendance "brought by" someone else credits
    them with a supporter.brought event. Raises IdentityConflict when a concurrent
    transaction linked one of the new emails or phones to someone else: run it again.
    """
    ledger = _Ledger(session, accepted_at)
    ledger.load_seen([e.event_id for e in posted])
    people = _Identities(session, identity_key, ledger)
    people.load(posted)
    result = Ingested()
    for position, item in enumerate(posted):
        if item.event_id in ledger.seen:
            result.duplicates.append(item.event_id)
            continue
        if isinstance(item, ByIdFields):
            sid = people.known(item.supporter_id)
            if sid is None:
                result.unknown_supporter.append(position)
                continue
        elif isinstance(item, ContactFields):
            sid = people.resolve(item.email, item.phone, item)
        else:
            raise TypeError(f"not an ingest event: {type(item).__name__}")
        event = INGEST_TO_TOPIC[type(item)].model_validate(
            {**item.model_dump(), "supporter_id": sid}
        )
        ledger.append(event, item if isinstance(item, ContactFields) else None)
        result.accepted.append(event.event_id)
        if isinstance(item, AttendedIn):
            people.credit_bringer(item, sid)
    people.save_links()
    people.confirm_unmerged()
    return result


def record_for_people(
    session: Session,
    people: Sequence[ContactFields],
    event_for: Callable[[ContactFields, str], Event],
    accepted_at: datetime,
    identity_key: str,
) -> list[tuple[str, bool] | None]:
    """For people known by contact details (a sign-in sheet), events that name them by id:
    resolve each person to their supporter id (linking, merging and keeping contact details
    as ``ingest_events`` does; a new supporter for someone not seen) and add
    ``event_for(person, supporter_id)`` to the ledger, in the caller's transaction. Each
    person's ``event_id`` is their event's. Returns (supporter id, new supporter) per person,
    None for one whose event the ledger has already. Raises IdentityConflict as
    ``ingest_events`` does: run it again."""
    ledger = _Ledger(session, accepted_at)
    ledger.load_seen([person.event_id for person in people])
    identities = _Identities(session, identity_key, ledger)
    identities.load(person for person in people if person.event_id not in ledger.seen)
    done: list[tuple[str, bool] | None] = []
    for person in people:
        if person.event_id in ledger.seen:
            done.append(None)
            continue
        sid = identities.resolve(person.email, person.phone, person)
        new = ledger.supporter(sid) is None
        ledger.append(event_for(person, sid), person)
        done.append((sid, new))
    identities.save_links()
    identities.confirm_unmerged()
    return done


class _Ledger:
    """Writes events, contact details and consent within the caller's transaction, in order."""

    def __init__(self, session: Session, accepted_at: datetime) -> None:
        self.session = session
        self.accepted_at = accepted_at
        self.seen: set[uuid.UUID] = set()
        self.supporters: dict[str, Supporter | None] = {}
        # Per (supporter, field): the event time of the value this transaction wrote, so the
        # newest event of a batch wins whatever the batch's order.
        self.written_at: dict[tuple[str, str], datetime] = {}
        self.notified = False

    def load_seen(self, ids: Collection[uuid.UUID]) -> None:
        if ids:
            found = select(LedgerEvent.event_id).where(LedgerEvent.event_id.in_(list(ids)))
            self.seen.update(self.session.scalars(found))

    def load_supporters(self, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self.supporters]
        if not wanted:
            return
        for row in self.session.scalars(
            select(Supporter).where(Supporter.supporter_id.in_(wanted))
        ):
            self.supporters[row.supporter_id] = row
        for sid in wanted:
            self.supporters.setdefault(sid, None)

    def supporter(self, sid: str) -> Supporter | None:
        if sid not in self.supporters:
            self.supporters[sid] = self.session.get(Supporter, sid)
        return self.supporters[sid]

    def supporter_row(self, sid: str) -> Supporter:
        row = self.supporter(sid)
        if row is None:
            row = Supporter(supporter_id=sid)
            self.session.add(row)
            self.supporters[sid] = row
        return row

    def append(self, event: Event, contacts: ContactFields | None = None) -> bool:
        """Add an event not seen before (False if it was), and its consent; the contact
        details posted with it (``contacts``, the ingest event) go to the supporter's row, not
        to the ledger or a topic."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        self.session.add(ledger_row(event, self.accepted_at))
        if not self.notified:
            notify_relay(self.session)
            self.notified = True
        if contacts is not None:
            self._update_contacts(event.key(), contacts)
        self._record_consent(event)
        return True

    def fill_contacts(self, sid: str, fields: dict[str, str | None]) -> None:
        """Fill the supporter's empty contact fields (their row is made if there is none)."""
        row = self.supporter_row(sid)
        for name, value in fields.items():
            if value and not getattr(row, name):
                setattr(row, name, value)

    def _update_contacts(self, sid: str, event: ContactFields) -> None:
        """Keep the newest non-empty contact details per supporter (by event time)."""
        row = self.supporter_row(sid)
        for name in _CONTACT_FIELDS:
            value = getattr(event, name, None)
            if not value:
                continue
            newest = self.written_at.get((sid, name))
            if newest is None or newest <= event.event_time:
                setattr(row, name, value)
                self.written_at[sid, name] = event.event_time

    def _record_consent(self, event: Event) -> None:
        """A signup that ticked a box grants that channel (an unticked box withdraws nothing);
        a consent.changed grants or withdraws as it says.

        The record is stamped with the event's time, but never later than its arrival: a
        form whose clock runs ahead must not outrank an unsubscribe that comes after it.
        """
        recorded_at = min(event.event_time, self.accepted_at)
        if isinstance(event, SupporterSignup):
            for channel, granted in (("email", event.consent_email), ("sms", event.consent_sms)):
                if granted:
                    self.session.add(
                        ConsentRecord(
                            supporter_id=event.supporter_id,
                            channel=channel,
                            granted=True,
                            source=event.source or "signup",
                            wording_version=event.consent_wording,
                            recorded_at=recorded_at,
                            event_id=event.event_id,
                        )
                    )
        elif isinstance(event, ConsentChanged):
            self.session.add(consent_record(event, self.accepted_at))


class _Identities:
    """Who an email or a phone belongs to, as this transaction sees it, and merges.

    Links are read up front for the whole batch, kept up to date here as events link and
    merge, and the new ones inserted at the end (``save_links``).
    """

    def __init__(self, session: Session, key: str, ledger: _Ledger) -> None:
        self.session = session
        self.key = key
        self.ledger = ledger
        self.owners: dict[str, str] = {}  # identity -> supporter id
        self.new: set[str] = set()  # identities linked by this transaction
        self.aliases: dict[str, str] = {}  # absorbed id -> survivor id
        self.used: set[str] = set()  # ids events were keyed by
        self._hashes: dict[tuple[str, str], str] = {}

    def identity(self, kind: Literal["email", "phone"], value: str) -> str:
        found = self._hashes.get((kind, value))
        if found is None:
            found = self._hashes[kind, value] = contact_identity(self.key, kind, value)
        return found

    def identities(self, email: str | None, phone: str | None) -> list[str]:
        return [
            *([self.identity("email", email)] if email else []),
            *([self.identity("phone", phone)] if phone else []),
        ]

    def load(self, posted: Iterable[Event]) -> None:
        """Read the links, aliases and supporters a batch of ingest events can touch."""
        wanted: set[str] = set()
        ids: set[str] = set()
        for item in posted:
            contacts: list[tuple[str | None, str | None]] = []
            if isinstance(item, ContactFields):
                contacts.append((item.email, item.phone))
            if isinstance(item, AttendedIn):
                contacts.append((item.brought_by_email, item.brought_by_phone))
            if isinstance(item, ByIdFields):
                ids.add(item.supporter_id)
            for email, phone in contacts:
                if email or phone:
                    wanted.update(self.identities(email, phone))
                    ids.update(self.legacy_ids(email, phone))
        if wanted:
            links = select(IdentityLink.identity, IdentityLink.supporter_id).where(
                IdentityLink.identity.in_(wanted)
            )
            self.owners.update(self.session.execute(links).all())
        ids.update(self.owners.values())
        if ids:
            aliases = select(SupporterAlias.absorbed_id, SupporterAlias.survivor_id).where(
                SupporterAlias.absorbed_id.in_(ids)
            )
            self.aliases.update(self.session.execute(aliases).all())
        self.ledger.load_supporters(self.current(i) for i in ids)

    def current(self, sid: str) -> str:
        return self.aliases.get(sid, sid)

    def known(self, sid: str) -> str | None:
        """The supporter a by-id event is about, or None if no such supporter."""
        if sid in self.aliases:
            found: str | None = self.aliases[sid]
        else:
            found = sid if self.ledger.supporter(sid) is not None else None
        if found is not None:
            self.used.add(found)
        return found

    def resolve(self, email: str | None, phone: str | None, cause: Event) -> str:
        """The supporter an email and/or phone belong to, linking the ones not linked yet.

        None linked: a new random id (``first_sight``). One: theirs. Two supporters: the
        phone's owner is merged into the email's (``cause`` linked them).
        """
        by_email = self.identity("email", email) if email else None
        by_phone = self.identity("phone", phone) if phone else None
        email_owner = self.current(self.owners[by_email]) if by_email in self.owners else None
        phone_owner = self.current(self.owners[by_phone]) if by_phone in self.owners else None
        if email_owner and phone_owner and email_owner != phone_owner:
            self._merge(email_owner, phone_owner, cause)
        sid = email_owner or phone_owner or self.first_sight(email, phone)
        for identity in (by_email, by_phone):
            if identity is not None and identity not in self.owners:
                self.owners[identity] = sid
                self.new.add(identity)
        self.used.add(sid)
        return sid

    def first_sight(self, email: str | None, phone: str | None) -> str:
        """The id of someone none of whose addresses is linked: a new random one, unless a
        supporter was stored under the legacy id of these addresses before identity links
        existed (they get their links now, and keep their id)."""
        for legacy in self.legacy_ids(email, phone):
            if self.ledger.supporter(self.current(legacy)) is not None:
                return self.current(legacy)
        sid = new_supporter_id()
        self.ledger.supporters[sid] = None  # known to have no row: no query for it
        return sid

    def legacy_ids(self, email: str | None, phone: str | None) -> list[str]:
        """The ids these addresses would have had before ids became random, the email's
        first."""
        return [
            *([legacy_supporter_id(self.key, email, None)] if email else []),
            *([legacy_supporter_id(self.key, None, phone)] if phone else []),
        ]

    def credit_bringer(self, attended: AttendedIn, attendee: str) -> None:
        """Credit whoever an attendance says brought the attendee (nobody brings themselves)."""
        email, phone = attended.brought_by_email, attended.brought_by_phone
        if not email and not phone:
            return
        bringer = self.resolve(email, phone, attended)
        self.ledger.fill_contacts(bringer, {"email": email, "phone": phone})
        attendee = self.current(attendee)
        if bringer == attendee:
            return
        self.ledger.append(
            SupporterBrought(
                event_id=derived_event_id(attended.event_id, "brought"),
                event_time=attended.event_time,
                supporter_id=bringer,
                brought_supporter_id=attendee,
                meeting_id=attended.meeting_id,
            )
        )

    def save_links(self) -> None:
        """Insert this transaction's new links; IdentityConflict if another transaction linked
        one of them to someone else meanwhile (the same supporter is fine)."""
        if not self.new:
            return
        rows = [
            {"identity": i, "supporter_id": self.owners[i], "created_at": self.ledger.accepted_at}
            for i in sorted(self.new)  # one order for every transaction: no deadlocks
        ]
        if insert_ignoring_duplicates(self.session, IdentityLink, rows) == len(rows):
            return
        linked = select(IdentityLink.identity, IdentityLink.supporter_id).where(
            IdentityLink.identity.in_(self.new)
        )
        if any(self.owners[i] != owner for i, owner in self.session.execute(linked).all()):
            raise IdentityConflict("an email or phone was linked to another supporter meanwhile")

    def confirm_unmerged(self) -> None:
        """IdentityConflict if another transaction merged away an id this one keyed events by,
        after this one read the links and aliases: running again keys them by the survivor.

        Called after this transaction's writes: on SQLite it holds the write lock by then, so
        nothing can commit in between; on PostgreSQL a merge committing after this check and
        before this transaction's commit can still slip through (a lock would close that).
        """
        ours = self.used - self.aliases.keys()  # ids merged by this transaction are fine
        if not ours:
            return
        gone = select(SupporterAlias.absorbed_id).where(SupporterAlias.absorbed_id.in_(ours))
        if self.session.scalars(gone.limit(1)).first() is not None:
            raise IdentityConflict("a supporter was merged into another meanwhile")

    def _merge(self, survivor: str, absorbed: str, cause: Event) -> None:
        """Merge ``absorbed`` (and every id merged into it before) into ``survivor``."""
        session = self.session
        earlier = list(
            session.scalars(
                select(SupporterAlias.absorbed_id).where(SupporterAlias.survivor_id == absorbed)
            )
        )
        merged = [absorbed, *earlier]
        session.execute(
            update(SupporterAlias)
            .where(SupporterAlias.survivor_id == absorbed)
            .values(survivor_id=survivor)
        )
        session.add(
            SupporterAlias(
                absorbed_id=absorbed,
                survivor_id=survivor,
                event_id=cause.event_id,
                merged_at=self.ledger.accepted_at,
            )
        )
        for sid in merged:
            self.aliases[sid] = survivor
        session.execute(
            update(IdentityLink)
            .where(IdentityLink.supporter_id.in_(merged))
            .values(supporter_id=survivor)
        )
        for identity, owner in self.owners.items():
            if owner in merged:
                self.owners[identity] = survivor
        gone = self.ledger.supporter(absorbed)
        if gone is not None:
            self.ledger.fill_contacts(survivor, {f: getattr(gone, f) for f in _CONTACT_FIELDS})
        session.execute(
            update(ConsentRecord)
            .where(ConsentRecord.supporter_id.in_(merged))
            .values(supporter_id=survivor)
        )
        self.ledger.append(
            IdentityMerged(
                event_id=merge_event_id(absorbed, survivor, "survivor"),
                event_time=cause.event_time,
                supporter_id=survivor,
                role="survivor",
                survivor_id=survivor,
                absorbed_id=absorbed,
                actions=self._actions(merged),
            )
        )
        self.ledger.append(
            IdentityMerged(
                event_id=merge_event_id(absorbed, survivor, "absorbed"),
                event_time=cause.event_time,
                supporter_id=absorbed,
                role="absorbed",
                survivor_id=survivor,
                absorbed_id=absorbed,
            )
        )

    def _actions(self, ids: list[str]) -> list[MergedAction]:
        """Every action of the ledger's events keyed by these ids, oldest entry first."""
        rows = self.session.execute(
            select(LedgerEvent.topic, LedgerEvent.payload)
            .where(LedgerEvent.key.in_(ids))
            .order_by(LedgerEvent.seq)
        ).all()
        actions: list[MergedAction] = []
        for topic, payload in rows:
            model = INPUT_EVENT_TYPES.get(topic)
            if model is None or model is IdentityMerged or model is SupporterErased:
                continue  # what was merged into these ids is among their own keys' events
            event = model.model_validate_json(payload)
            signup = event if isinstance(event, SupporterSignup) else None
            for n, kind in enumerate(action_kinds(event)):
                actions.append(
                    MergedAction(
                        event_id=event.event_id,
                        type=topic,
                        kind=kind,
                        event_time=event.event_time,
                        area=getattr(event, "area", None) if n == 0 else None,
                        consent_email=signup.consent_email if signup else None,
                        consent_sms=signup.consent_sms if signup else None,
                    )
                )
        return actions


def unpublished(session: Session, limit: int) -> list[LedgerEvent]:
    return list(
        session.scalars(
            select(LedgerEvent)
            .where(LedgerEvent.published.is_(False))
            .order_by(LedgerEvent.seq)
            .limit(limit)
        )
    )


def mark_published(session: Session, seqs: Sequence[int]) -> None:
    session.execute(update(LedgerEvent).where(LedgerEvent.seq.in_(seqs)).values(published=True))


def mark_all_unpublished(session: Session) -> int:
    """After the embedded broker lost its memory: publish everything again (consumers dedupe)."""
    result = session.execute(
        update(LedgerEvent).where(LedgerEvent.published.is_(True)).values(published=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
