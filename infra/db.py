"""Database: SQLAlchemy 2.x models, the engine, and migrations (SQLite default, PostgreSQL too)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    create_engine,
    event,
    false,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from infra.sqlite_lock import lock_writes_early


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def epoch_millis(at: datetime) -> int:
    """Whole milliseconds since the Unix epoch, rounded down: a Kafka record's timestamp."""
    return (at - _UNIX_EPOCH) // timedelta(milliseconds=1)


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class LedgerEvent(Base):
    """Every accepted event, committed before the API answers; the relay publishes from here."""

    __tablename__ = "ledger"
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    topic: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_ledger_unpublished", "published", "seq"),
        # A supporter's history: `engage explain`, and an identity merge's actions.
        Index("ix_ledger_key", "key", "seq"),
        # What is past retention (`engage retention apply`): a run costs what it deletes.
        Index("ix_ledger_accepted_at", "accepted_at"),
    )


class Supporter(Base):
    """Contact details, kept apart from the event topics that analysts read."""

    __tablename__ = "supporters"
    supporter_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    postcode: Mapped[str | None] = mapped_column(String(10))
    area: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    """IANA zone for quiet hours and daily caps; None: the configured default (Europe/London)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ConsentRecord(Base):
    """One consent decision: who, which channel, granted or withdrawn, when, how, which wording."""

    __tablename__ = "consent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    supporter_id: Mapped[str] = mapped_column(String(40), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(100))
    wording_version: Mapped[str | None] = mapped_column(String(100))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    __table_args__ = (Index("ix_consent_lookup", "supporter_id", "channel", "recorded_at"),)


class Nudge(Base):
    """A requested message, keyed by its idempotency key; its state says what became of it.

    ``status``: pending -> sending -> sent | failed | ambiguous; or held (quiet hours, until
    ``not_before``), skipped (``reason_code``: no consent, suppressed, capped, stale, ...) or
    held_out. A retryable refusal puts it back to pending with ``not_before`` and one more
    ``attempts``. ``sending_since`` is when a sender claimed it: a claim older than the lease
    is a sender that died mid-call, reconciled with the provider before anything is resent.
    ``delivery_status`` is the provider's later report, moved only forwards.
    """

    __tablename__ = "nudges"
    nudge_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    supporter_id: Mapped[str] = mapped_column(String(40), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    template: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(200))
    cause_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    reason: Mapped[str | None] = mapped_column(String(500))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    reason_code: Mapped[str | None] = mapped_column(String(40))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    provider: Mapped[str | None] = mapped_column(String(20))
    delivery_status: Mapped[str | None] = mapped_column(String(20))
    delivery_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opt_out_code: Mapped[str | None] = mapped_column(String(16), unique=True)
    """The short opt-out link's code (``/o/{code}``), for SMS from a one-way sender."""
    in_call: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Set just before the provider call: an expired claim without it was never sent."""
    recipient: Mapped[str | None] = mapped_column(String(80))
    """The keyed hash of the address it went to (infra.consent.contact_key): an opt-out from
    this message suppresses that address, even if the supporter's has changed since."""

    __table_args__ = (Index("ix_nudges_supporter_sent", "supporter_id", "channel", "sent_at"),)


class OutboxMessage(Base):
    """A message 'sent' in embedded mode: written here for a person to read, not delivered."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    nudge_id: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(10))
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Suppression(Base):
    """A contact never to be messaged on a channel: it withdrew consent (STOP, unsubscribe,
    spam report) or cannot be reached (bounce, Twilio 21610). Keyed by the keyed hash of the
    address (``schemas.identity.contact_identity``), not by supporter, so a re-import under
    any id is still suppressed. Lifting it (the person texts START) keeps the row for the
    record, with ``lifted_at`` set.
    """

    __tablename__ = "suppressions"
    channel: Mapped[str] = mapped_column(String(10), primary_key=True)
    contact: Mapped[str] = mapped_column(String(80), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_by: Mapped[str | None] = mapped_column(String(100))


class WebhookReceipt(Base):
    """A provider webhook event already applied, so a retried delivery changes nothing."""

    __tablename__ = "webhook_receipts"
    provider: Mapped[str] = mapped_column(String(20), primary_key=True)
    receipt_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


OPEN_TASK_STATUSES = ("open", "claimed")
"""A task someone still has to act on: at most one per supporter and kind."""


class FollowUpTask(Base):
    """An organiser's follow-up: who to call or meet, why, by when, and what came of it.

    ``status``: open -> claimed (by ``claimed_by`` until ``claimed_until``; an expired claim
    is open again) -> done; or cancelled (``status_reason``: opted out, merged, erased,
    superseded by another trigger); or held_out (the rule's hold-out group: never queued).
    ``district`` (the supporter's postcode district when the task was stored) routes it: the
    group that owns the district sees it, and a district nobody owns is the national queue.
    """

    __tablename__ = "tasks"
    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    supporter_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(500))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    area: Mapped[str | None] = mapped_column(String(100), index=True)
    rule: Mapped[str] = mapped_column(String(200))
    cause_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    status: Mapped[str] = mapped_column(String(20), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    priority: Mapped[str] = mapped_column(String(10), default="normal", server_default="normal")
    district: Mapped[str | None] = mapped_column(String(4), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(40))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Outcomes recorded so far (a no-answer reopens the task once)."""
    outcome: Mapped[str | None] = mapped_column(String(30))
    """The newest outcome recorded (reached_committed, no_answer, ...)."""
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_reason: Mapped[str | None] = mapped_column(String(300))
    """Why it is cancelled (or held out); for a superseded trigger, the task it updated."""

    __table_args__ = (
        # One open task per supporter and kind: a second trigger updates it instead.
        Index(
            "ux_tasks_one_open",
            "supporter_id",
            "kind",
            unique=True,
            sqlite_where=text("status IN ('open', 'claimed')"),
            postgresql_where=text("status IN ('open', 'claimed')"),
        ),
        Index("ix_tasks_status_district", "status", "district"),
    )


class Group(Base):
    """A local group of organisers; it owns postcode districts (``group_areas``)."""

    __tablename__ = "groups"
    group_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GroupArea(Base):
    """A postcode district (E1, SW9, M14) and the one group that owns it: its tasks go there."""

    __tablename__ = "group_areas"
    district: Mapped[str] = mapped_column(String(4), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(40), ForeignKey("groups.group_id"), index=True)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Organiser(Base):
    """Someone who works the follow-up queue: of one or more groups (``organiser_groups``),
    perhaps their lead; an admin manages groups, areas and organisers. ``password_hash`` is
    an argon2id hash (``consumers/organising/passwords.py``), empty until one is set; a
    disabled organiser can do nothing and has no session."""

    __tablename__ = "organisers"
    organiser_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrganiserGroup(Base):
    """An organiser's membership of a group; ``lead``: overdue tasks escalate to them."""

    __tablename__ = "organiser_groups"
    organiser_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("organisers.organiser_id"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("groups.group_id"), primary_key=True, index=True
    )
    lead: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class OrganiserSession(Base):
    """A signed-in organiser's session (``consumers/organising/accounts.py`` writes it): the
    SHA-256 of the random token their cookie carries (never the token), the CSRF token their
    forms carry, and when it started, ends and was last used. Signing out deletes it."""

    __tablename__ = "organiser_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    organiser_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("organisers.organiser_id"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TaskEvent(Base):
    """A task's history: every change, what it was, who made it (an organiser's id, or
    ``playbook``, ``system``, ``erasure``) and when. ``note`` is the organiser's short note
    on an outcome (personal data: blanked by an erasure)."""

    __tablename__ = "task_events"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(30))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str | None] = mapped_column(String(280))


class IdentityLink(Base):
    """Which supporter an email or a phone belongs to, as a keyed hash (not the address)."""

    __tablename__ = "identity_links"
    identity: Mapped[str] = mapped_column(String(80), primary_key=True)
    supporter_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SupporterAlias(Base):
    """A supporter id merged into another: events for it now go to the survivor."""

    __tablename__ = "supporter_aliases"
    absorbed_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    survivor_id: Mapped[str] = mapped_column(String(40), index=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def survivor_of(session: Session, sid: str) -> str:
    """The id a supporter id stands for now: the one it was merged into, or itself."""
    survivor = session.scalar(
        select(SupporterAlias.survivor_id).where(SupporterAlias.absorbed_id == sid)
    )
    return survivor or sid


class SupporterScore(Base):
    """The newest score and rung per supporter, from engagement.scored (a read model)."""

    __tablename__ = "supporter_scores"
    supporter_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    rung: Mapped[str] = mapped_column(String(100), index=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    cause_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with SQLite set up for several processes (WAL, a busy timeout, the write lock
    taken by infra.sqlite_lock).

    ``hide_parameters``: SQL errors end up in logs, and their parameters are personal data.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        lock_writes_early(engine)  # short, even waits for the write lock, not the busy handler's
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def dialect_insert(session: Any, model: type[Base]) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing/_update`` (SQLite, PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model)
    raise NotImplementedError(f"no ON CONFLICT insert for {dialect}")


def insert_ignoring_duplicates(session: Any, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL; returns rows inserted."""
    if not rows:
        return 0
    statement = dialect_insert(session, model).on_conflict_do_nothing()
    primary_key = list(inspect(model).primary_key)
    inserted = session.execute(statement.returning(*primary_key), rows).all()
    return len(inserted)


class DeadLetterRedrive(Base):
    """A dead letter re-driven to its source topic by `engage deadletters redrive`, keyed by the
    letter's id (``source_topic:partition:offset``); written once the broker has acknowledged."""

    __tablename__ = "deadletter_redrives"
    letter_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    redriven_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    target_topic: Mapped[str] = mapped_column(String(255))


class Erasure(Base):
    """One UK GDPR erasure request carried out (`engage erase`, POST /v1/admin/erase): when, by
    whom, and how many rows of each table it changed. No personal data: the person is kept as
    a keyed hash of their supporter id (``schemas.identity.erasure_subject``), so a repeat
    request is recognised, and never as an address or an id in clear."""

    __tablename__ = "erasures"
    erasure_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)
    requested_by: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(80), index=True)
    repeat: Mapped[bool] = mapped_column(Boolean)
    """True when the subject had been erased before (this request found nothing left)."""
    rows: Mapped[dict[str, int]] = mapped_column(JSON)
    """Rows changed per table, e.g. ``{"supporters": 1, "ledger": 12, "nudges": 2}``."""


# --- the analysts' mart (consumers/mart/ is its one writer; docs/analysts.md, "The mart") ----


class MartEvent(Base):
    """The fact table: one row per ``analytics.actions`` record (what a person did), keyed by
    the source event's id; ``day`` and ``week`` (its Monday) are of the event time, in UTC."""

    __tablename__ = "mart_events"
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    person: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(40))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    day: Mapped[date] = mapped_column(Date)
    week: Mapped[date] = mapped_column(Date, index=True)
    district: Mapped[str | None] = mapped_column(String(8))
    area: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(String(100))
    petition_id: Mapped[str | None] = mapped_column(String(200))
    meeting_id: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(20))
    training: Mapped[str | None] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(30))
    commitment: Mapped[str | None] = mapped_column(String(30))
    channel: Mapped[str | None] = mapped_column(String(10))
    granted: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (Index("ix_mart_events_person_time", "person", "event_time"),)


class MartSupporterDay(Base):
    """A person's last score and rung of each day their score changed (from
    ``analytics.scores``); a day without a row means no change: the previous row holds."""

    __tablename__ = "mart_supporter_days"
    person: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    week: Mapped[date] = mapped_column(Date)
    rung: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Float)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    """The event time of the score kept: a later one the same day replaces it."""


class MartMessage(Base):
    """What became of each nudge: its request (``analytics.nudges``) and its newest status
    (``analytics.messages``); either may arrive first, so each half may be null for a while."""

    __tablename__ = "mart_messages"
    nudge_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    person: Mapped[str] = mapped_column(String(40), index=True)
    rule: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str | None] = mapped_column(String(10))
    template: Mapped[str | None] = mapped_column(String(200))
    holdout: Mapped[bool | None] = mapped_column(Boolean)
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requested_week: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str | None] = mapped_column(String(20))
    reason_code: Mapped[str | None] = mapped_column(String(40))
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MartTask(Base):
    """Each follow-up task (``analytics.tasks``) and its newest outcome (``analytics.actions``
    of type ``task.outcome`` with its ``task_id``); either may arrive first."""

    __tablename__ = "mart_tasks"
    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    person: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str | None] = mapped_column(String(100))
    rule: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[str | None] = mapped_column(String(10))
    holdout: Mapped[bool | None] = mapped_column(Boolean)
    area: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_week: Mapped[date | None] = mapped_column(Date)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(30))
    commitment: Mapped[str | None] = mapped_column(String(30))
    outcome_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MartErasure(Base):
    """A person erased (``analytics.erased``): their rows are deleted and none that arrives
    later for this pseudonym is kept. Holds the pseudonym alone, no fact about them."""

    __tablename__ = "mart_erasures"
    person: Mapped[str] = mapped_column(String(40), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StreamState(Base):
    """A snapshot of the stream's per-supporter state (``streams/snapshots.py``, its one
    writer): the state of each supporter of a partition, encoded by
    ``streams.engagement.encode_state``, as of the input offsets in ``stream_state_offsets``."""

    __tablename__ = "stream_state"
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    supporter_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)


class StreamStateOffset(Base):
    """The input offset a partition's snapshot reflects, per input topic, with a check of the
    record before it (its timestamp and CRC), so a snapshot is never loaded over another log."""

    __tablename__ = "stream_state_offsets"
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    check: Mapped[str | None] = mapped_column(String(40))
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
