"""The integration tier's fixtures: both databases, the embedded broker (one per pytest-xdist
worker), settings, and the ingest API under uvicorn. Only this tier and below import them: the
unit tier loads the root conftest alone, which imports no I/O library."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, MetaData, text
from sqlalchemy.orm import Session, sessionmaker

import engage.webapp
import engage.wiring
from infra.broker import EmbeddedBroker
from infra.db import make_engine, migrate, session_factory
from infra.settings import Settings
from tests.databases import fresh_pg_schema
from tests.polling import wait_until
from tests.stub_providers import StubProviders

BROKER_PARTITIONS = 2
"""Partitions of each catalogue topic on the session's broker (co-partitioned, like production)."""


# --- the providers' stub ---------------------------------------------------------------------


@pytest.fixture
def stub_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubProviders]:
    """The local SendGrid/Twilio stub, with the SDKs kept on loopback: no proxy, and no
    TWILIO_REGION/TWILIO_EDGE rewriting the host."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    with StubProviders() as stub:
        yield stub


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema dropped after
    (see tests.databases.fresh_pg_schema).

    A test that asks for ``engine`` (a migrated database) gets on PostgreSQL the worker's
    migrated schema instead, emptied first (see ``_migrated_postgresql``); on SQLite ``engine``
    copies a migrated file into place.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'engage.db'}"
        return
    if "engine" in request.fixturenames:
        migrated: MigratedSchema = request.getfixturevalue("_migrated_postgresql")
        migrated.empty()
        yield migrated.url
        return
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest revision once per worker: ``engine`` copies it
    rather than migrating every test's file again (the same bytes, a tenth of the time)."""
    path = tmp_path_factory.mktemp("migrated") / "engage.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
    finally:
        engine.dispose()  # the last connection's close checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists(), "the migrated file is incomplete"
    return path


class MigratedSchema:
    """A PostgreSQL schema migrated once per worker, emptied before each test that uses it.

    Emptying deletes every row of every table but ``alembic_version`` (dependent tables
    first) and restarts every sequence: the test finds the tables, constraints and sequences
    a fresh migration gives, with no row, in milliseconds rather than a migration's 0.2 s.
    Tests in one worker run one at a time, and each disposes of its engines at teardown.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        migrate(self._engine)
        tables = MetaData()
        tables.reflect(self._engine)
        with self._engine.connect() as connection:
            sequences = connection.scalars(
                text(
                    "SELECT sequence_name FROM information_schema.sequences"
                    " WHERE sequence_schema = current_schema()"
                )
            ).all()
        self._statements = [
            f'DELETE FROM "{table.name}"'
            for table in reversed(tables.sorted_tables)
            if table.name != "alembic_version"
        ] + [f'ALTER SEQUENCE "{sequence}" RESTART' for sequence in sequences]

    def empty(self) -> None:
        with self._engine.begin() as connection:
            # A test that left a transaction open must fail here, not hang the suite.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            for statement in self._statements:
                connection.exec_driver_sql(statement)

    def dispose(self) -> None:
        self._engine.dispose()


@pytest.fixture(scope="session")
def _migrated_postgresql() -> Iterator[MigratedSchema]:
    with fresh_pg_schema() as url:
        migrated = MigratedSchema(url)
        try:
            yield migrated
        finally:
            migrated.dispose()


@pytest.fixture
def engine(database_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on the test's database, migrated to the newest revision.

    SQLite: a copy of the worker's migrated file when the test's file does not exist yet;
    PostgreSQL: the worker's migrated schema, which ``database_url`` emptied. Anything else
    (a file a module's own ``database_url`` made, another URL) is migrated here.
    """
    migrated = False
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(request.getfixturevalue("_migrated_sqlite"), path)
            migrated = True
    elif "_migrated_postgresql" in request.fixturenames:
        migrated = database_url == request.getfixturevalue("_migrated_postgresql").url
    engine = make_engine(database_url)
    if not migrated:
        migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


# --- the embedded broker ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole run, with every catalogue topic created.

    Session scope is per process: each pytest-xdist worker starts its own broker on a free port,
    so the tests that share the catalogue's fixed topic names never share them across workers.
    """
    from infra.topics import ensure_topics  # kafka-python: imported after pytest_configure

    # No log_path: EmbeddedBroker.start leaks the log file it opens (see tests/integration/
    # test_broker.py), which warnings-as-errors turns into a failure of whichever test is
    # running when the handle is collected.
    with EmbeddedBroker() as embedded:
        ensure_topics(embedded.bootstrap, BROKER_PARTITIONS)
        yield embedded


@pytest.fixture
def tmp_topic(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory of topics unique to this test: ``tmp_topic("relay")`` -> a new topic's name."""

    def create(hint: str = "t", partitions: int = 1) -> str:
        from kafka.admin import NewTopic

        from infra.topics import admin_client

        test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:40]
        name = f"test.{test}.{hint}.{uuid.uuid4().hex[:12]}"  # short: the ledger keeps 100
        admin = admin_client(broker.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        return name

    return create


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id no other test uses (so the group starts from the earliest offsets)."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]
    return f"test-{test}-{uuid.uuid4().hex[:12]}"


# --- settings and the ingest API -------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)
    return Settings(
        home=tmp_path,
        database_url=database_url,
        api_token="test-token",
        identity_key="test-key",
    )


class _AppSlot:
    """An ASGI app that forwards to the app of the test being run (uvicorn starts only once)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            raise RuntimeError("no app mounted: use the api fixture")
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def _uvicorn() -> Iterator[tuple[str, _AppSlot]]:
    """One real uvicorn server on a free loopback port, in a thread, for the whole run (for the
    worker's run, under pytest-xdist: each worker has its own)."""
    slot = _AppSlot()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(slot, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", slot
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def api(
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    _uvicorn: tuple[str, _AppSlot],
) -> Iterator[str]:
    """``engage.webapp.create_app(settings)`` served by uvicorn; yields its base URL.

    ``engine`` has migrated the test's database first. The server is started once per run and
    serves this test's freshly created app; the app's own engines are recorded so they can be
    disposed of at teardown (the app has no shutdown hook of its own for them).
    """
    engines: list[Engine] = []
    real_make_engine = engage.wiring.make_engine

    def recording_make_engine(url: str, **kwargs: Any) -> Engine:
        made = real_make_engine(url, **kwargs)
        engines.append(made)
        return made

    monkeypatch.setattr(engage.wiring, "make_engine", recording_make_engine)
    base_url, slot = _uvicorn
    slot.app = engage.webapp.create_app(settings)
    try:
        _wait_for_health(base_url)
        yield base_url
    finally:
        slot.app = None
        for made in engines:
            made.dispose()


def _wait_for_health(base_url: str, timeout_s: float = 10.0) -> None:
    # Plain HTTP on loopback: verify=False spares building a TLS context (15 ms) per test.
    with httpx.Client(base_url=base_url, trust_env=False, timeout=1.0, verify=False) as client:

        def healthy() -> bool:
            try:
                return client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(f"{base_url}/health to answer", healthy, timeout_s, interval_s=0.02)
