"""Every output of the fold over a simulated month of live traffic, and what time alone causes
after it, encoded by schemas.events.encoded, is byte for byte what pydantic writes
(in this tier: the month comes from the bench's traffic, whose module starts a broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engage.bench.pipeline import topic_events
from schemas.events import EngagementScored, LadderChanged, NudgeRequested, TaskCreated, encoded
from streams.engagement import Engine, SupporterState
from streams.playbook import load_playbook

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_every_output_of_a_month_is_encoded_as_pydantic_encodes_it() -> None:
    engine = Engine(load_playbook())
    states: dict[str, SupporterState] = {}
    outputs = []
    for event, arrived_ms in sorted(topic_events(3000, now=NOW), key=lambda a: a.timestamp_ms):
        state = states.setdefault(event.key(), SupporterState())
        outputs += engine.apply(state, event, arrived_ms / 1000)
    outputs += engine.tick(states, (NOW + timedelta(days=200)).timestamp())
    assert {type(o) for o in outputs} == {
        EngagementScored,
        LadderChanged,
        NudgeRequested,
        TaskCreated,
    }
    assert [encoded(o) for o in outputs] == [o.model_dump_json().encode() for o in outputs]
