"""Who writes and who reads each topic: the pipeline's components, for the topic catalogue.

The one place that says it. ``tests/unit/test_asyncapi.py`` holds it to what the code declares
where it can (the workers' subscriptions and consumer groups, the ingest API's event types).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.catalogue import ANALYTICS_TOPICS, INPUT_TOPICS
from schemas.events import (
    ConsentChanged,
    DeadLetter,
    EmailClicked,
    EngagementScored,
    EventAttended,
    EventNoShow,
    EventRSVP,
    IdentityMerged,
    LadderChanged,
    MessageStatus,
    NudgeRequested,
    PetitionSigned,
    SupporterBrought,
    SupporterErased,
    SupporterSignup,
    TaskCreated,
    TaskOutcome,
    TrainingCompleted,
)

RELAY = "the relay (producers/relay.py)"


@dataclass(frozen=True)
class Component:
    """A part of the pipeline that puts records on topics or reads them."""

    name: str
    """Short id, used in the AsyncAPI document's operation ids."""
    title: str
    where: str
    """The modules that hold it."""
    summary: str
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    group: str | None = None
    """The consumer group it reads in, if it reads in one."""
    via_ledger: bool = True
    """Its events are appended to the ledger in its own transaction and published by the
    relay (so they are on the log exactly when its change is committed); False: it publishes
    to Kafka itself."""


COMPONENTS: tuple[Component, ...] = (
    Component(
        "ingest",
        "Ingest API",
        "producers/api.py, producers/ledger.py",
        "POST /v1/events and /v1/events/batch (the CSV import of sign-in sheets and the"
        " simulator post there too). Who brought whom (supporter.brought) and two ids found to"
        " be one person (identity.merged) are derived at ingest.",
        produces=(
            SupporterSignup.topic,
            PetitionSigned.topic,
            EventRSVP.topic,
            EventAttended.topic,
            EventNoShow.topic,
            TaskOutcome.topic,
            EmailClicked.topic,
            ConsentChanged.topic,
            TrainingCompleted.topic,
            SupporterBrought.topic,
            IdentityMerged.topic,
        ),
    ),
    Component(
        "training-sheets",
        "Training sign-in sheets",
        "producers/training_sheet.py, producers/ledger.py",
        "`engage import-csv --training NAME`: each person on a training's sign-in sheet, found"
        " by contact details as the ingest API finds them (someone not seen before becomes a"
        " supporter), gets a training.completed; a sheet that shows two ids are one person"
        " merges them.",
        produces=(TrainingCompleted.topic, IdentityMerged.topic),
    ),
    Component(
        "opt-out-links",
        "Opt-out links",
        "producers/unsubscribe.py",
        "The unsubscribe link in every email and the short opt-out link in texts.",
        produces=(ConsentChanged.topic,),
    ),
    Component(
        "webhooks",
        "Provider webhooks",
        "producers/webhooks/",
        "Twilio inbound SMS (STOP, START; a reply that needs a person becomes a task), Twilio"
        " status callbacks, the SendGrid Event Webhook (delivery, bounces, clicks,"
        " unsubscribes).",
        produces=(ConsentChanged.topic, MessageStatus.topic, EmailClicked.topic, TaskCreated.topic),
    ),
    Component(
        "organisers",
        "Organisers' follow-up queue",
        "consumers/organising/",
        "An organiser records how a call went, what the supporter committed to, a training"
        " completed, or a request not to be contacted.",
        produces=(TaskOutcome.topic, ConsentChanged.topic, TrainingCompleted.topic),
    ),
    Component(
        "sender",
        "Sender",
        "consumers/dispatch.py, consumers/repository.py",
        "Decides each nudge at the moment of sending (held, skipped and why, sent, failed,"
        " ambiguous); a provider's refusal that means the address opted out withdraws consent.",
        produces=(MessageStatus.topic, ConsentChanged.topic),
    ),
    Component(
        "erasure",
        "Erasure",
        "producers/erasure.py",
        "`engage erase` and POST /v1/admin/erase: one record per erased supporter, kept forever.",
        produces=(SupporterErased.topic,),
    ),
    Component(
        "retention",
        "Retention",
        "producers/retention.py",
        "Restates a consent still relied on before the event that gave it passes retention.",
        produces=(ConsentChanged.topic,),
    ),
    Component(
        "stream",
        "Stream worker",
        "streams/worker.py, streams/engagement.py",
        "Folds every input topic into per-supporter state with the playbook: scores, rungs,"
        " rules and lapse timers; records it cannot process go to the dead letters.",
        produces=(
            EngagementScored.topic,
            LadderChanged.topic,
            NudgeRequested.topic,
            TaskCreated.topic,
            DeadLetter.topic,
        ),
        consumes=INPUT_TOPICS,
        group="engage-stream",
        via_ledger=False,
    ),
    Component(
        "sinks",
        "Sinks",
        "consumers/runner.py",
        "Stores nudges (for the sender), follow-up tasks (the organisers' queue) and scores,"
        " each once by its idempotency key.",
        produces=(DeadLetter.topic,),
        consumes=(NudgeRequested.topic, TaskCreated.topic, EngagementScored.topic),
        group="engage-consumers",
        via_ledger=False,
    ),
    Component(
        "analytics",
        "Analytics stream",
        "streams/analytics.py, streams/analytics_worker.py",
        "Mirrors what people did and what the pipeline decided onto the analytics.* topics for"
        " analysts: the person as a pseudonym under the analytics key (not the supporter id),"
        " postcode district and area, the event's facts, the rule and hold-out group of each"
        " nudge and task; no contact details, no free text. Records it cannot read go to the"
        " dead letters.",
        produces=(*ANALYTICS_TOPICS, DeadLetter.topic),
        consumes=(
            *INPUT_TOPICS,
            EngagementScored.topic,
            NudgeRequested.topic,
            TaskCreated.topic,
            MessageStatus.topic,
        ),
        group="engage-analytics",
        via_ledger=False,
    ),
    Component(
        "mart",
        "Analysts' mart",
        "consumers/mart/",
        "Keeps the analytics.* topics as tables for analysts (idempotent on each record's"
        " event_id or natural id); deletes every row of a person on analytics.erased.",
        produces=(DeadLetter.topic,),
        consumes=ANALYTICS_TOPICS,
        group="engage-mart",
        via_ledger=False,
    ),
    Component(
        "analysts",
        "Analysts' own clients",
        "examples/analyst_consumer.py",
        "Analysts subscribe to the analytics.* topics with their own client and consumer group"
        " (docs/analysts.md); the example uses confluent-kafka.",
        consumes=ANALYTICS_TOPICS,
        via_ledger=False,
    ),
    Component(
        "deadletters",
        "engage deadletters",
        "producers/deadletters.py",
        "Lists the dead letters, and re-drives them to their source topic once the cause is"
        " fixed (the original key and bytes again).",
        consumes=(DeadLetter.topic,),
        via_ledger=False,
    ),
)


def producers_of(topic: str) -> tuple[Component, ...]:
    return tuple(c for c in COMPONENTS if topic in c.produces)


def consumers_of(topic: str) -> tuple[Component, ...]:
    return tuple(c for c in COMPONENTS if topic in c.consumes)
