"""supporter.erased in the fold: the state is dropped, later events are ignored, the timer and
a replay of the log give nothing for the id."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.events import SupporterErased
from streams.engagement import ERASED, Trace
from streams.replay import replay
from tests.unit.engine_events import (
    OTHER,
    SID,
    at,
    attended,
    default_engine,
    fold,
    petition,
    signup,
    unix,
)


def erased(days: float, sid: str = SID) -> SupporterErased:
    return SupporterErased(event_time=at(days), supporter_id=sid)


def test_an_erased_supporter_is_emptied_and_then_ignored() -> None:
    state = fold([signup(0), attended(1)])
    engine = default_engine()
    assert state.actions and state.latest

    assert engine.apply(state, erased(2)) == []
    assert (state.actions, state.fired, state.latest, state.area) == (b"", b"", 0, None)
    assert state.rung == ERASED

    trace = Trace()
    assert engine.apply(state, petition(3), trace=trace) == []
    assert engine.apply(state, signup(4)) == []
    assert state.rung == ERASED and state.actions == b""
    assert trace.entries[-1].outcome == "erased"
    assert engine.tick({SID: state}, unix(400)) == []


def test_an_erasure_dated_long_ago_or_far_ahead_is_still_applied() -> None:
    state = fold([signup(0)])
    late = SupporterErased(event_time=datetime(2001, 1, 1, tzinfo=UTC), supporter_id=SID)

    assert default_engine().apply(state, late, arrived=unix(1)) == []
    assert state.rung == ERASED


def test_a_replay_gives_no_score_nudge_or_task_for_an_erased_supporter() -> None:
    log = [signup(0), attended(1), signup(0, sid=OTHER), attended(1, sid=OTHER), erased(2)]
    records = [(e.topic, e.model_dump_json(), unix(n)) for n, e in enumerate(log)]

    result = replay(default_engine(), records, unix(60))

    assert SID not in result.scores and OTHER in result.scores
    assert not any(SID in key for key in result.nudge_ids | result.task_ids)
    assert any(OTHER in key for key in result.nudge_ids | result.task_ids)
