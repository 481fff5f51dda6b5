"""SQLite's write lock taken by the application (infra/sqlite_lock.py): a write transaction
holds it from its first write to its end, a read takes none, and a writer that cannot get it
gives up after its timeout with SQLite's own error."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import OperationalError

from infra.db import DeadLetterRedrive, make_engine, migrate, session_factory
from infra.sqlite_lock import LOCK_HELD, lock_writes_early, take_write_lock


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "lock.db"


@pytest.fixture
def engine(db_file: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{db_file}")
    migrate(engine)
    yield engine
    engine.dispose()


def lock_is_free(db_file: Path) -> bool:
    """Whether another connection could take the write lock this instant (no waiting)."""
    other = sqlite3.connect(db_file, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


def redrive(letter_id: str) -> DeadLetterRedrive:
    return DeadLetterRedrive(
        letter_id=letter_id, redriven_at=datetime.now(UTC), target_topic="supporter.signup"
    )


def test_a_write_transaction_holds_the_lock_from_its_first_write_to_its_commit(
    engine: Engine, db_file: Path
) -> None:
    sessions = session_factory(engine)
    held_before = LOCK_HELD._sum.get()
    with sessions.begin() as session:
        session.execute(select(DeadLetterRedrive)).all()
        assert lock_is_free(db_file)  # a read takes no lock
        session.add(redrive("a:0:1"))
        session.flush()
        assert not lock_is_free(db_file)
    assert lock_is_free(db_file)
    assert LOCK_HELD._sum.get() > held_before
    with sessions() as session:
        assert session.get(DeadLetterRedrive, "a:0:1") is not None


def test_a_rolled_back_write_releases_the_lock_and_keeps_nothing(
    engine: Engine, db_file: Path
) -> None:
    sessions = session_factory(engine)
    with sessions() as session:
        session.add(redrive("a:0:2"))
        session.flush()
        assert not lock_is_free(db_file)
        session.rollback()
    assert lock_is_free(db_file)
    with sessions() as session:
        assert session.get(DeadLetterRedrive, "a:0:2") is None


def test_a_writer_gives_up_after_its_timeout_while_another_holds_the_lock(
    engine: Engine, db_file: Path
) -> None:
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(db_file, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            take_write_lock(waiter, timeout_s=0.05)
        assert not waiter.in_transaction
        assert waiter.execute("PRAGMA busy_timeout").fetchone() == (5000,)  # restored
        holder.execute("COMMIT")
        take_write_lock(waiter, timeout_s=0.05)
        assert waiter.in_transaction
        waiter.execute("ROLLBACK")
    finally:
        holder.close()
        waiter.close()


def test_a_session_write_fails_with_the_usual_error_when_the_lock_never_frees(
    engine: Engine, db_file: Path
) -> None:
    short = create_engine(f"sqlite:///{db_file}")
    lock_writes_early(short, timeout_s=0.05)
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"), session_factory(short).begin() as s:
            s.add(redrive("a:0:3"))
    finally:
        holder.close()
        short.dispose()
