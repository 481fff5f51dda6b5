"""Versioned event models, one per event type; each knows its topic and its key."""

from __future__ import annotations

import contextlib
import functools
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from schemas.identity import normalise_email, normalise_phone

SupporterId = Annotated[str, Field(pattern=r"^sup_[0-9a-f]{32}$")]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?) ?([0-9][A-Z]{2})$")
_NAMESPACE = uuid.UUID("1f0e6d4c-5b2a-4c3e-9d8f-7a6b5c4d3e2f")
_VERSION_BITS = (0xF << 76) | (0x3 << 62)
_VERSION_8 = (0x8 << 76) | (0x2 << 62)


@functools.lru_cache(maxsize=256)
def _mask(what: str) -> int:
    return uuid.uuid5(_NAMESPACE, what).int & ~_VERSION_BITS


def derived_event_id(cause_event_id: uuid.UUID, what: str) -> uuid.UUID:
    """Deterministic id of the ``what`` (a small set of names: 'scored', a rule) caused by an
    event, so a replay repeats it exactly: the cause's id XOR a per-name mask, marked as a
    version-8 (custom) UUID. A quarter of uuid5's cost, which the stream pays per output."""
    derived = object.__new__(uuid.UUID)  # UUID(int=...) re-checks a value that is valid here
    object.__setattr__(
        derived, "int", (cause_event_id.int & ~_VERSION_BITS) ^ _mask(what) | _VERSION_8
    )
    object.__setattr__(derived, "is_safe", uuid.SafeUUID.unknown)
    return derived


class Event(BaseModel):
    """Fields every event has. ``topic`` and ``key_field`` are class-level facts."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    topic: ClassVar[str]
    version: ClassVar[int] = 1
    key_field: ClassVar[str] = "supporter_id"

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_time: AwareDatetime = Field(description="When it happened (event time, not arrival).")

    def key(self) -> str:
        return str(getattr(self, self.key_field))


Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\sA-Z]+@[^@\sA-Z]+$")]
Phone = Annotated[str, Field(max_length=16, pattern=r"^\+[1-9][0-9]{6,14}$")]
Postcode = Annotated[str, Field(max_length=8, pattern=r"^[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}$")]


E = TypeVar("E", bound=Event)


def built(model: type[E], **values: object) -> E:
    """An instance of ``model`` from values the caller vouches for (our own outputs), without
    validation: a fraction of ``model_construct``'s cost, which the stream pays per output.
    Fields not given take their defaults."""
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", {**_defaults(model), **values})
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def encoded(event: Event) -> bytes:
    """``event.model_dump_json().encode()``, without the wrapper's keyword handling and the
    round trip through ``str``: 2.5 us an output instead of 3.5, which the stream pays per
    output (orjson over the fields was slower still, 4.0: its UUIDs and datetimes).
    tests/unit/test_encoded.py holds it to the same bytes."""
    serialized: bytes = event.__pydantic_serializer__.to_json(event)
    return serialized


@functools.cache
def _defaults(model: type[Event]) -> dict[str, object]:
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in model.model_fields.items()
        if not info.is_required() and info.default_factory is None
    }


class AreaFields(Event):
    """Where, as coarsely as organising needs: the local group or area a person gave."""

    area: str | None = Field(default=None, max_length=100, description="Local group or area.")


class ContactFields(AreaFields):
    """Who did it, as posted to the ingest API: normalised email (lower case), E.164 phone, UK
    postcode, names. These stay in the ``supporters`` table; no topic carries them."""

    email: Email | None = None
    phone: Phone | None = None
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    postcode: Postcode | None = None

    @model_validator(mode="after")
    def _identified(self) -> ContactFields:
        if not self.email and not self.phone:
            raise ValueError("an email or a phone is required to identify the supporter")
        return self


CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "postcode")
"""What identifies a person, kept in the ``supporters`` table and never on a topic."""
LEGACY_CONTACT_FIELDS = (*CONTACT_FIELDS, "brought_by_email", "brought_by_phone")
"""Fields version 1 of the input topics carried, read and dropped from old records."""
District = Annotated[str, Field(max_length=4, pattern=r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")]


def postcode_district(postcode: str | None) -> str | None:
    """The outward code of a normalised UK postcode ("E1 6AN" -> "E1"): a district of some
    thousands of households, coarse enough to route and count by."""
    return postcode.split(" ", 1)[0] if postcode else None


class Pseudonymous(AreaFields):
    """An input topic's record of a person's action (version 2): the supporter id, the area
    and the postcode district; no email, phone, name or full postcode.

    Version 1 records carried those: they are still read, and what identifies the person is
    dropped on the way in (a full postcode becomes its district)."""

    version: ClassVar[int] = 2
    district: District | None = Field(
        default=None, description="Postcode district (the outward code: E1, SW9, M14)."
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_contact_details(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_CONTACT_FIELDS):
            return data
        kept = {k: v for k, v in data.items() if k not in LEGACY_CONTACT_FIELDS}
        postcode = data.get("postcode")
        if kept.get("district") is None and isinstance(postcode, str):
            with contextlib.suppress(ValueError):
                kept["district"] = postcode_district(normalise_postcode(postcode))
        return kept


# What the ingest API's document says of the contact fields it normalises. A regex cannot say
# everything the normalisers accept (email-validator's syntax, libphonenumber's allocated
# ranges), so each pattern is a form the server always accepts, and the description says what
# else it takes. tests/unit/test_ingest_document.py draws values from these patterns and feeds
# them to the normalisers.
INGEST_EMAIL_PATTERN = (
    r"^[a-z0-9_%+'-]{1,32}(?:\.[a-z0-9_%+'-]{1,15}){0,2}"  # local part: at most 64
    r"@(?:[a-z0-9]{1,20}(?:-[a-z0-9]{1,20}){0,2}\.){1,3}"  # labels: at most 62, no "--"
    r"(?!(?:arpa|invalid|local|localhost|onion|test)$)[a-z]{2,24}$"  # not special-use
)
INGEST_PHONE_PATTERN = (  # UK mobiles in ranges libphonenumber holds valid (not 07700 900xxx)
    r"^\+447(?:[1-3][0-9]{2}|4[0-46-9][0-9]|5[13-9][0-9]|7[1-7][0-9]|8[014-9][0-9]"
    r"|9[024-9][0-9]|91[02-9])[0-9]{6}$"
)
INGEST_POSTCODE_PATTERN = r"^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$"
_EMAIL_DOC: JsonDict = {
    "type": "string",
    "format": "email",
    "maxLength": 254,
    "pattern": INGEST_EMAIL_PATTERN,
    "examples": ["jo.bloggs@example.org"],
}
_PHONE_DOC: JsonDict = {
    "type": "string",
    "maxLength": 16,
    "pattern": INGEST_PHONE_PATTERN,
    "examples": ["+447911123456"],
}
_POSTCODE_DOC: JsonDict = {
    "type": "string",
    "maxLength": 8,
    "pattern": INGEST_POSTCODE_PATTERN,
    "examples": ["E2 7DJ"],
}
_EMAIL_WORDS = (
    "Any address email-validator accepts (no DNS lookup; not a special-use domain such as"
    " .test or .local), trimmed and lower-cased, so any case will do; the pattern is a form"
    " always accepted. Blank counts as absent."
)
_PHONE_WORDS = (
    "A number libphonenumber holds valid, in UK national form (07911 123456) or international,"
    " stored in E.164; the pattern (UK mobiles in E.164) is a form always accepted, other"
    " numbers may be refused. Blank counts as absent."
)
_POSTCODE_WORDS = (
    "A UK postcode, any case, the space optional; stored in capitals with the space. Blank"
    " counts as absent."
)
_CONTACT_DOCS: dict[str, tuple[JsonDict, str]] = {
    "email": (_EMAIL_DOC, _EMAIL_WORDS),
    "brought_by_email": (_EMAIL_DOC, _EMAIL_WORDS),
    "phone": (_PHONE_DOC, _PHONE_WORDS),
    "brought_by_phone": (_PHONE_DOC, _PHONE_WORDS),
    "postcode": (_POSTCODE_DOC, _POSTCODE_WORDS),
}


def _document_contact_fields(schema: JsonDict) -> None:
    """The ingest form of the contact fields in a model's JSON Schema (see the patterns
    above), and the rule that an email or a phone identifies the supporter."""
    properties = schema["properties"]
    assert isinstance(properties, dict)
    for name, (string, words) in _CONTACT_DOCS.items():
        field = properties.get(name)
        if not isinstance(field, dict):
            continue
        own = field.get("description")  # the field's own words come first
        field["anyOf"] = [dict(string), {"type": "null"}]
        field["description"] = f"{own} {words}" if isinstance(own, str) else words
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("email", "phone")
    ]


class Normalising(BaseModel):
    """Mixed into the ingest models: turns what people type into the normalised topic form.

    Blank strings count as absent; values of another type are left for the field's own
    type check to reject.
    """

    model_config = ConfigDict(json_schema_extra=_document_contact_fields)

    @field_validator("email", mode="before", check_fields=False)
    @classmethod
    def _email(cls, value: object) -> object:
        return _normalised(value, normalise_email)

    @field_validator("phone", mode="before", check_fields=False)
    @classmethod
    def _phone(cls, value: object) -> object:
        return _normalised(value, normalise_phone)

    @field_validator("postcode", mode="before", check_fields=False)
    @classmethod
    def _postcode(cls, value: object) -> object:
        return _normalised(value, normalise_postcode)


def normalise_postcode(raw: str) -> str:
    """A UK postcode in capitals with one space before the inward code."""
    match = _POSTCODE.match(raw.upper().strip())
    if not match:
        raise ValueError("not a UK postcode")
    return f"{match.group(1)} {match.group(2)}"


def _normalised(value: object, normalise: Callable[[str], str]) -> object:
    if not isinstance(value, str):
        return value
    return normalise(value) if value.strip() else None


class SignupFields(AreaFields):
    type: Literal["supporter.signup"] = "supporter.signup"
    source: str | None = Field(default=None, max_length=100)
    consent_email: bool = Field(default=False, description="Agreed to campaign email.")
    consent_sms: bool = Field(default=False, description="Agreed to campaign SMS.")
    consent_wording: str | None = Field(
        default=None, max_length=100, description="Version of the consent wording shown."
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA time zone (Europe/London) for quiet hours and daily caps.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
        return value


class PetitionFields(AreaFields):
    type: Literal["petition.signed"] = "petition.signed"
    petition_id: ShortText
    petition_title: str | None = Field(default=None, max_length=300)


class MeetingFields(AreaFields):
    meeting_id: ShortText
    meeting_title: str | None = Field(default=None, max_length=300)
    meeting_starts_at: AwareDatetime | None = None


class RSVPFields(MeetingFields):
    type: Literal["event.rsvp"] = "event.rsvp"


class AttendedFields(MeetingFields):
    type: Literal["event.attended"] = "event.attended"
    role: Literal["attendee", "host"] = Field(
        default="attendee", description="'host' if they ran or hosted the meeting."
    )


class NoShowFields(MeetingFields):
    type: Literal["event.no_show"] = "event.no_show"


class ByIdFields(Event):
    """Events about a supporter already known by id (organiser tools, provider webhooks)."""

    supporter_id: SupporterId


OutcomeKind = Literal[
    "reached_committed", "reached_not_now", "no_answer", "wrong_number", "do_not_contact"
]
"""What came of a follow-up call (version 2 of ``task.outcome``)."""
OutcomeValue = Literal[
    "positive",
    "neutral",
    "negative",
    "no_answer",
    "wrong_number",
    "reached_committed",
    "reached_not_now",
    "do_not_contact",
]
"""Every outcome ``task.outcome`` may carry: version 1's five, in their order (positive,
neutral and negative are still read, their records staying on the log and counting in the
score as before, and still accepted from version 1 clients), then version 2's additions."""
Commitment = Literal["meeting", "host", "bring_someone", "lead"]
"""What a supporter reached on the phone committed to: come to a meeting, host one, bring
someone, lead an action or a team."""


class OutcomeFields(ByIdFields):
    """How an organiser's follow-up went (version 2: the outcomes organisers record, and
    what a supporter committed to).

    Version 1 records (positive, neutral, negative, no_answer, wrong_number; no commitment)
    are valid version 2 records and read unchanged."""

    version: ClassVar[int] = 2
    type: Literal["task.outcome"] = "task.outcome"
    task_id: ShortText
    outcome: OutcomeValue = Field(
        description="reached_committed (with a commitment), reached_not_now, no_answer,"
        " wrong_number, do_not_contact; positive, neutral and negative are version 1's."
    )
    commitment: Commitment | None = Field(
        default=None,
        validate_default=True,
        description="What they committed to; given with reached_committed, and only then.",
    )
    notes: str | None = Field(
        default=None,
        max_length=1000,
        description="Version 1's free text; the organisers' queue keeps its notes in its own"
        " history, not on the log.",
    )

    @field_validator("commitment")
    @classmethod
    def _with_reached_committed(cls, value: str | None, info: ValidationInfo) -> str | None:
        outcome = info.data.get("outcome")
        if outcome is None:
            return value  # the outcome itself is invalid: that error says enough
        if value is None and outcome == "reached_committed":
            raise ValueError("required with reached_committed: what did they commit to?")
        if value is not None and outcome != "reached_committed":
            raise ValueError("only with reached_committed")
        return value


class TrainingFields(ByIdFields):
    """A supporter completed a training (an organiser recorded it); ``event_time`` is when."""

    type: Literal["training.completed"] = "training.completed"
    training: ShortText = Field(description="Which training, e.g. 'one-to-ones', 'chairing'.")


class ClickFields(ByIdFields):
    type: Literal["email.clicked"] = "email.clicked"
    nudge_id: ShortText
    url: str | None = Field(default=None, max_length=2000)


class ConsentFields(ByIdFields):
    type: Literal["consent.changed"] = "consent.changed"
    channel: Literal["email", "sms"]
    granted: bool
    source: ShortText = Field(description="unsubscribe_link, sms_stop, form, organiser, ...")
    wording_version: str | None = Field(
        default=None, max_length=100, description="The consent wording the supporter agreed to."
    )


class SupporterSignup(Pseudonymous, SignupFields):
    topic = "supporter.signup"
    supporter_id: SupporterId


class PetitionSigned(Pseudonymous, PetitionFields):
    topic = "petition.signed"
    supporter_id: SupporterId


class EventRSVP(Pseudonymous, RSVPFields):
    topic = "event.rsvp"
    supporter_id: SupporterId


class EventAttended(Pseudonymous, AttendedFields):
    topic = "event.attended"
    supporter_id: SupporterId


class EventNoShow(Pseudonymous, NoShowFields):
    topic = "event.no_show"
    supporter_id: SupporterId


class TaskOutcome(OutcomeFields):
    topic = "task.outcome"


class TrainingCompleted(TrainingFields):
    topic = "training.completed"


class EmailClicked(ClickFields):
    topic = "email.clicked"


class ConsentChanged(ConsentFields):
    topic = "consent.changed"


class SupporterBrought(Event):
    """Derived at ingest from a sign-in sheet's "brought by": credit for the one who brought."""

    topic = "supporter.brought"
    type: Literal["supporter.brought"] = "supporter.brought"
    supporter_id: SupporterId = Field(description="Who brought someone.")
    brought_supporter_id: SupporterId
    meeting_id: ShortText


class MergedAction(BaseModel):
    """One action of a supporter merged into another, as much as the stream state needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_id: uuid.UUID
    type: str
    kind: str
    event_time: AwareDatetime
    area: str | None = None
    consent_email: bool | None = None
    consent_sms: bool | None = None


class IdentityMerged(Event):
    """Two supporter ids turned out to be one person (an event linked their email and phone).

    Two records per merge: ``role='survivor'`` keyed by the id that stays, carrying the
    absorbed id's actions so the survivor's state can take them in, and ``role='absorbed'``
    keyed by the id that goes, so its state is dropped.
    """

    topic = "identity.merged"
    type: Literal["identity.merged"] = "identity.merged"
    supporter_id: SupporterId
    role: Literal["survivor", "absorbed"]
    survivor_id: SupporterId
    absorbed_id: SupporterId
    actions: list[MergedAction] = Field(default_factory=list)


class SupporterErased(Event):
    """A supporter was erased (UK GDPR Article 17): the stream drops their state and ignores
    every later event for the id, and a replay of the log does the same. Written to the ledger
    by `engage erase` in the transaction that deletes their contact details; it carries the
    id alone."""

    topic = "supporter.erased"
    type: Literal["supporter.erased"] = "supporter.erased"
    supporter_id: SupporterId


class SignupIn(Normalising, ContactFields, SignupFields):
    """A signup as posted to the ingest API, before the supporter id is derived."""


class PetitionIn(Normalising, ContactFields, PetitionFields):
    """A petition signature as posted to the ingest API."""


class RSVPIn(Normalising, ContactFields, RSVPFields):
    """An RSVP as posted to the ingest API."""


class AttendedIn(Normalising, ContactFields, AttendedFields):
    """An attendance as posted to the ingest API or read from a sign-in sheet."""

    brought_by_email: Email | None = Field(
        default=None, description="Who brought them, if the sign-in sheet says (email)."
    )
    brought_by_phone: Phone | None = Field(
        default=None, description="Who brought them, if the sign-in sheet says (phone)."
    )

    @field_validator("brought_by_email", mode="before")
    @classmethod
    def _brought_by_email(cls, value: object) -> object:
        return _normalised(value, normalise_email)

    @field_validator("brought_by_phone", mode="before")
    @classmethod
    def _brought_by_phone(cls, value: object) -> object:
        return _normalised(value, normalise_phone)


class NoShowIn(Normalising, ContactFields, NoShowFields):
    """A person who said they would come and did not, as marked on the sign-in sheet."""


class OutcomeIn(OutcomeFields):
    """An organiser's record of how a follow-up went."""


class TrainingIn(TrainingFields):
    """A training a supporter completed, as an organiser records it."""


class ClickIn(ClickFields):
    """A click on a link in one of our emails (from the email provider's webhook)."""


class ConsentIn(ConsentFields):
    """A consent given or withdrawn outside a signup (unsubscribe link, STOP, organiser)."""


IngestEvent = Annotated[
    SignupIn
    | PetitionIn
    | RSVPIn
    | AttendedIn
    | NoShowIn
    | OutcomeIn
    | ClickIn
    | ConsentIn
    | TrainingIn,
    Field(discriminator="type"),
]
INGEST_TO_TOPIC: dict[type[Event], type[Event]] = {
    SignupIn: SupporterSignup,
    PetitionIn: PetitionSigned,
    RSVPIn: EventRSVP,
    AttendedIn: EventAttended,
    NoShowIn: EventNoShow,
    OutcomeIn: TaskOutcome,
    ClickIn: EmailClicked,
    ConsentIn: ConsentChanged,
    TrainingIn: TrainingCompleted,
}


class EngagementScored(Event):
    """A supporter's score and ladder rung after an event, in event time."""

    topic = "engagement.scored"
    type: Literal["engagement.scored"] = "engagement.scored"
    supporter_id: SupporterId
    score: float = Field(
        allow_inf_nan=False, description="Decayed weighted sum of actions at event_time."
    )
    rung: str = Field(min_length=1, max_length=100)
    previous_rung: str | None = None
    cause_event_id: uuid.UUID
    half_life_days: float


class LadderChanged(Event):
    """A supporter moved up or down the ladder: after an event, or as time passed (lapse)."""

    topic = "ladder.changed"
    type: Literal["ladder.changed"] = "ladder.changed"
    supporter_id: SupporterId
    rung: str
    previous_rung: str | None
    direction: Literal["up", "down"]
    reason: str = Field(description="Why the new rung holds, in words.")
    score: float
    cause_event_id: uuid.UUID | None = Field(
        default=None, description="The event that moved them; none when time did (a lapse)."
    )


class NudgeRequested(Event):
    """A message a rule wants sent; ``nudge_id`` is its idempotency key."""

    topic = "nudge.requested"
    type: Literal["nudge.requested"] = "nudge.requested"
    nudge_id: ShortText
    supporter_id: SupporterId
    channel: Literal["email", "sms"]
    template: ShortText
    rule: ShortText
    cause_event_id: uuid.UUID
    context: dict[str, str] = Field(default_factory=dict)
    holdout: bool = Field(
        default=False, description="In the rule's hold-out group: recorded, never sent."
    )


class TaskCreated(Event):
    """An organiser follow-up: who, why, by when; ``task_id`` is its idempotency key."""

    topic = "task.created"
    type: Literal["task.created"] = "task.created"
    task_id: ShortText
    supporter_id: SupporterId
    kind: str = Field(min_length=1, max_length=100)
    reason: str = Field(max_length=500)
    due_at: AwareDatetime
    area: str | None = Field(default=None, max_length=100)
    rule: ShortText
    cause_event_id: uuid.UUID
    priority: Literal["high", "normal", "low"] = "normal"
    holdout: bool = Field(
        default=False, description="In the rule's hold-out group: recorded, not queued."
    )


MessageState = Literal[
    "held",
    "retrying",
    "skipped",
    "sent",
    "failed",
    "ambiguous",
    "queued",
    "delivered",
    "undelivered",
    "bounced",
    "dropped",
    "deferred",
    "opened",
    "spamreport",
    "unsubscribed",
]


class MessageStatus(Event):
    """What became of a nudge: the sender's decision (held, skipped with a reason, sent,
    failed, ambiguous) and the provider's later reports (delivered, bounced, ...).

    ``reason_code`` is machine-readable (``no_consent``, ``suppressed``, ``quiet_hours``,
    ``cap_day``, ``cap_week``, ``stale``, ``provider_refused``, ...); ``reason`` says it in
    words and never quotes an address.
    """

    topic = "message.status"
    type: Literal["message.status"] = "message.status"
    nudge_id: ShortText
    supporter_id: SupporterId
    channel: Literal["email", "sms"]
    rule: str | None = Field(default=None, max_length=200)
    status: MessageState
    reason_code: str | None = Field(default=None, max_length=40)
    reason: str | None = Field(default=None, max_length=500)
    provider: str | None = Field(default=None, max_length=20)
    provider_message_id: str | None = Field(default=None, max_length=200)
    error_code: str | None = Field(default=None, max_length=40)


class DeadLetter(Event):
    """An event that could not be processed, with where it came from and why."""

    topic = "deadletter"
    key_field = "source_topic"
    type: Literal["deadletter"] = "deadletter"
    source_topic: str
    partition: int
    offset: int
    source_key: str | None = None
    error: str
    payload: str = Field(description="The raw value as received (UTF-8, replaced if invalid).")
    consumer: str


Person = Annotated[str, Field(pattern=r"^p_[0-9a-f]{32}$")]
KeyId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]
ActionType = Literal[
    "supporter.signup",
    "petition.signed",
    "event.rsvp",
    "event.attended",
    "event.no_show",
    "training.completed",
    "task.outcome",
    "email.clicked",
    "consent.changed",
    "supporter.brought",
]
"""The input event types an ``analytics.actions`` record can mirror."""


class AnalyticsRecord(Event):
    """Fields every ``analytics.*`` record has: the source record's ``event_id`` and
    ``event_time``, and the person as a pseudonym under the analytics key, never the
    supporter id, an address, a name or free text."""

    key_field: ClassVar[str] = "person"
    event_id: uuid.UUID = Field(
        description="The source record's event_id: deduplicate on it (one analytics record"
        " per source record and topic)."
    )
    event_time: AwareDatetime = Field(description="The source record's event time.")
    person: Person = Field(
        description='"p_" and the first 128 bits (hex) of HMAC-SHA256(analytics key,'
        " supporter id): the same person has the same pseudonym under one key, on every"
        " analytics topic."
    )
    key_id: KeyId = Field(
        description="Which analytics key made the pseudonym; a new key id means new"
        " pseudonyms, not linkable to the old ones."
    )


class AnalyticsAction(AnalyticsRecord):
    """What a person did (an input event), with coarse geography and its facts; a fact that
    does not apply to the type is null. ``event_id`` is the input event's."""

    topic = "analytics.actions"
    type: ActionType = Field(description="The source event type.")
    district: District | None = Field(
        default=None, description="Postcode district (the outward code: E1, SW9, M14)."
    )
    area: str | None = Field(default=None, max_length=100, description="Local group or area.")
    source: str | None = Field(
        default=None, max_length=100, description="Where a signup or a consent change came from."
    )
    petition_id: str | None = Field(default=None, max_length=200)
    meeting_id: str | None = Field(
        default=None, max_length=200, description="RSVP, attended, no-show, brought someone."
    )
    role: Literal["attendee", "host"] | None = Field(
        default=None, description="At a meeting attended."
    )
    training: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(
        default=None,
        max_length=200,
        description="The follow-up an outcome is about (supporter ids in it pseudonymised).",
    )
    outcome: OutcomeValue | None = None
    commitment: Commitment | None = None
    channel: Literal["email", "sms"] | None = Field(
        default=None, description="Of a consent change."
    )
    granted: bool | None = Field(default=None, description="Of a consent change.")


class AnalyticsScore(AnalyticsRecord):
    """A person's score and rung after an event (from ``engagement.scored``)."""

    topic = "analytics.scores"
    score: float = Field(allow_inf_nan=False)
    rung: str = Field(min_length=1, max_length=100)
    previous_rung: str | None = None
    cause_event_id: uuid.UUID


class AnalyticsNudge(AnalyticsRecord):
    """A message a rule asked for (from ``nudge.requested``), or recorded for its hold-out
    group (``holdout``: never sent); ``nudge_id`` joins ``analytics.messages``."""

    topic = "analytics.nudges"
    nudge_id: ShortText = Field(description="Supporter ids in it pseudonymised.")
    rule: ShortText
    channel: Literal["email", "sms"]
    template: ShortText
    holdout: bool
    cause_event_id: uuid.UUID


class AnalyticsMessage(AnalyticsRecord):
    """What became of a nudge (from ``message.status``): the sender's decision and the
    provider's reports."""

    topic = "analytics.messages"
    nudge_id: ShortText = Field(description="Supporter ids in it pseudonymised.")
    channel: Literal["email", "sms"]
    rule: str | None = Field(default=None, max_length=200)
    status: MessageState
    reason_code: str | None = Field(default=None, max_length=40)


class AnalyticsTask(AnalyticsRecord):
    """An organiser follow-up a rule asked for (from ``task.created``), or recorded for its
    hold-out group (``holdout``: not queued)."""

    topic = "analytics.tasks"
    task_id: ShortText = Field(description="Supporter ids in it pseudonymised.")
    kind: str = Field(min_length=1, max_length=100)
    rule: ShortText
    priority: Literal["high", "normal", "low"]
    holdout: bool
    due_at: AwareDatetime
    area: str | None = Field(default=None, max_length=100)
    cause_event_id: uuid.UUID


class AnalyticsErased(AnalyticsRecord):
    """The person was erased (from ``supporter.erased``): a sink deletes every row it holds
    of this ``person`` and keeps none that arrives for them later."""

    topic = "analytics.erased"


ANALYTICS_EVENT_TYPES: dict[str, type[AnalyticsRecord]] = {
    m.topic: m
    for m in (
        AnalyticsAction,
        AnalyticsScore,
        AnalyticsNudge,
        AnalyticsMessage,
        AnalyticsTask,
        AnalyticsErased,
    )
}


INPUT_EVENT_TYPES: dict[str, type[Event]] = {
    m.topic: m
    for m in (
        SupporterSignup,
        PetitionSigned,
        EventRSVP,
        EventAttended,
        EventNoShow,
        SupporterBrought,
        TaskOutcome,
        EmailClicked,
        ConsentChanged,
        IdentityMerged,
        SupporterErased,
        TrainingCompleted,
    )
}
EVENT_TYPES: dict[str, type[Event]] = {
    **INPUT_EVENT_TYPES,
    **{
        m.topic: m
        for m in (
            EngagementScored,
            LadderChanged,
            NudgeRequested,
            TaskCreated,
            MessageStatus,
            DeadLetter,
        )
    },
    **ANALYTICS_EVENT_TYPES,
}


def event_model(event_type: str) -> type[Event]:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise ValueError(f"unknown event type {event_type!r}") from None
