"""`engage replay`'s fold split over processes by supporter gives what one process gives."""

from __future__ import annotations

import time
from pathlib import Path

from engage.bench.state import _fill_ledger, synthetic_log
from infra.db import make_engine, migrate, session_factory
from streams.engagement import Engine
from streams.playbook import load_playbook
from streams.replay import Source, ledger_records, replay, replay_sharded


def test_a_sharded_replay_of_the_ledger_equals_a_single_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = make_engine(url)
    migrate(db)
    sessions = session_factory(db)
    events = _fill_ledger(sessions, synthetic_log(1500, seed=3, days=120))
    now = time.time()
    playbook = load_playbook()

    single = replay(Engine(playbook), ledger_records(sessions), now)
    sharded = replay_sharded(Source(database_url=url), playbook, now, shards=3)
    db.dispose()

    assert single.events == sharded.events == events
    assert single.refused == sharded.refused == 0
    assert len(single.scores) == 1500
    assert sharded.scores == single.scores
    assert sharded.nudge_ids == single.nudge_ids and len(single.nudge_ids) > 500
    assert sharded.task_ids == single.task_ids and single.task_ids
