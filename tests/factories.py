"""The rows and events the integration tests set up again and again: a supporter with consent,
a nudge request."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from infra.db import ConsentRecord, Supporter
from schemas.events import NudgeRequested


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
