"""The stream's outputs, encoded by schemas.events.encoded, are byte for byte what
pydantic writes for them, whatever values their fields allow (a simulated month of the fold's
outputs: tests/integration/test_encoded_month.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from schemas.events import (
    EngagementScored,
    NudgeRequested,
    built,
    encoded,
)

_text = st.text(max_size=30)
_moments = st.datetimes(
    min_value=datetime(2000, 1, 1), timezones=st.sampled_from([UTC, timezone(timedelta(hours=1))])
)


@given(
    score=st.floats(allow_nan=False, allow_infinity=False, width=64),
    when=_moments,
    sid=_text,
    rung=_text,
    previous=st.none() | _text,
)
def test_a_score_with_any_values_is_encoded_as_pydantic_encodes_it(
    score: float, when: datetime, sid: str, rung: str, previous: str | None
) -> None:
    out = built(
        EngagementScored,
        event_id=uuid.uuid4(),
        event_time=when,
        supporter_id=sid,
        score=score,
        rung=rung,
        previous_rung=previous,
        cause_event_id=uuid.uuid4(),
        half_life_days=90.0,
    )
    assert encoded(out) == out.model_dump_json().encode()


@given(context=st.dictionaries(_text, _text, max_size=4), holdout=st.booleans(), when=_moments)
def test_a_nudge_with_any_context_is_encoded_as_pydantic_encodes_it(
    context: dict[str, str], holdout: bool, when: datetime
) -> None:
    out = built(
        NudgeRequested,
        event_id=uuid.uuid4(),
        event_time=when,
        nudge_id="welcome:sup_1",
        supporter_id="sup_1",
        channel="email",
        template="welcome",
        rule="welcome",
        cause_event_id=uuid.uuid4(),
        context=context,
        holdout=holdout,
    )
    assert encoded(out) == out.model_dump_json().encode()
