"""Snapshots of the stream's state in the database: restore costs what the state is, not what
the history is.

A partition's snapshot is its supporters' states (``streams.engagement.encode_state``) and, per
input topic, the offset they reflect, written in one transaction: the states of the supporters
changed since the last one, upserted, and the new offsets. The worker saves a partition only at
offsets whose outputs are acknowledged and committed, so loading a snapshot never skips an
output; on assignment it loads it, checks that the log still holds the same record just before
each offset (``check``: an embedded broker is a new, republished log at every start), and folds
from there to the committed offsets without emitting, then carries on live.

``stream_state`` and ``stream_state_offsets`` are written only here (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import StreamState, StreamStateOffset, dialect_insert, utcnow

TP = tuple[str, int]
_CHUNK = 5_000


@dataclass
class Snapshot:
    """A partition's saved state: encoded states by supporter, and per input topic-partition the
    offset they reflect and the check of the record before it (None: offset 0, or unknown)."""

    partition: int
    offsets: dict[TP, int] = field(default_factory=dict)
    checks: dict[TP, str | None] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)


class SnapshotStore:
    """The SQL store of the stream's snapshots (SQLite or PostgreSQL)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def offsets(self, partitions: Iterable[int]) -> dict[int, Snapshot]:
        """The saved offsets and checks of ``partitions`` (no states): what to verify first."""
        wanted = list(partitions)
        found: dict[int, Snapshot] = {}
        if not wanted:
            return found
        with self.sessions() as session:
            rows = session.scalars(
                select(StreamStateOffset).where(StreamStateOffset.partition.in_(wanted))
            )
            for row in rows:
                snap = found.setdefault(row.partition, Snapshot(row.partition))
                snap.offsets[(row.topic, row.partition)] = row.offset
                snap.checks[(row.topic, row.partition)] = row.check
        return found

    def states(self, partition: int) -> dict[str, bytes]:
        """The encoded states of a partition's supporters."""
        with self.sessions() as session:
            rows = session.execute(
                select(StreamState.supporter_id, StreamState.state).where(
                    StreamState.partition == partition
                )
            )
            return {sid: bytes(state) for sid, state in rows}

    def save(
        self,
        partition: int,
        offsets: Mapping[TP, int],
        checks: Mapping[TP, str | None],
        states: Mapping[str, bytes],
        replace: bool = False,
        expected: Mapping[TP, int] | None = None,
    ) -> bool:
        """Save the changed ``states`` of ``partition`` as of ``offsets``, in one transaction.

        ``replace``: the partition's saved rows are not the base of these (it was rebuilt from
        the log): delete them first. Refused (False, nothing written) when the saved offsets
        are ahead of ``offsets`` on any topic, unless they are exactly ``expected`` (the ones
        the caller saw, and rejected, when it loaded the partition): a worker that lost the
        partition never overwrites its new owner's newer snapshot.
        """
        with self.sessions.begin() as session:
            saved = {
                (row.topic, row.partition): row.offset
                for row in session.scalars(
                    select(StreamStateOffset)
                    .where(StreamStateOffset.partition == partition)
                    .with_for_update()
                )
            }
            ahead = any(offsets.get(tp, 0) < offset for tp, offset in saved.items())
            if ahead and (expected is None or dict(expected) != saved):
                return False
            if replace:
                session.execute(delete(StreamState).where(StreamState.partition == partition))
                session.execute(
                    delete(StreamStateOffset).where(StreamStateOffset.partition == partition)
                )
            rows = [
                {"partition": partition, "supporter_id": sid, "state": state}
                for sid, state in states.items()
            ]
            for start in range(0, len(rows), _CHUNK):
                statement = dialect_insert(session, StreamState)
                statement = statement.on_conflict_do_update(
                    index_elements=["partition", "supporter_id"],
                    set_={"state": statement.excluded.state},
                )
                session.execute(statement, rows[start : start + _CHUNK])
            if offsets:
                statement = dialect_insert(session, StreamStateOffset)
                statement = statement.on_conflict_do_update(
                    index_elements=["topic", "partition"],
                    set_={
                        "offset": statement.excluded.offset,
                        "check": statement.excluded.check,
                        "saved_at": statement.excluded.saved_at,
                    },
                )
                session.execute(
                    statement,
                    [
                        {
                            "topic": topic,
                            "partition": p,
                            "offset": offset,
                            "check": checks.get((topic, p)),
                            "saved_at": utcnow(),
                        }
                        for (topic, p), offset in offsets.items()
                    ],
                )
        return True
