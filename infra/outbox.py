"""The ledger as a transactional outbox: the one writer of its rows.

An event is written in the caller's transaction beside the change it reports (an accepted
ingest, a nudge's new state) and published later by the relay, which marks it published once
the broker has acknowledged it.
"""

from __future__ import annotations

from datetime import datetime

from infra.db import LedgerEvent
from schemas.events import Event


def ledger_row(event: Event, accepted_at: datetime) -> LedgerEvent:
    """An event for the relay to publish, written in the caller's transaction."""
    return LedgerEvent(
        event_id=event.event_id,
        topic=event.topic,
        key=event.key(),
        payload=event.model_dump_json(),
        accepted_at=accepted_at,
        published=False,
    )
