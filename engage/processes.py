"""Running the pipeline's processes: signal handling, parent watch, and the supervisor of `up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from aiokafka.errors import KafkaError
from sqlalchemy.exc import OperationalError

from engage.metrics import child_metrics_ports, metrics_url
from engage.retention import RetentionResult, apply_retention
from infra.broker import (
    EMBEDDED_BROKER_MISSING,
    EmbeddedBroker,
    embedded_broker_installed,
    free_port,
)
from infra.db import make_engine, migrate, session_factory
from infra.membership import member_client_id, remove_members
from infra.settings import Settings
from infra.topics import ensure_topics
from producers.ledger import mark_all_unpublished

log = structlog.get_logger(__name__)
PARENT_ENV = "ENGAGE_PARENT_PID"
RETENTION_RETRY_S = 600.0
"""After the database refused a retention run (unreachable, locked), the next try."""
CHILD_GRACE_S = 6.0
"""Seconds a child has to stop after SIGTERM before the supervisor kills it."""
KAFKA_ROLES = ("relay", "stream", "consume", "analytics", "mart")
MEMBER_CLIENTS = {"stream": "engage-stream", "consume": "engage-consumers"}
"""Roles whose group member a dead child leaves behind, and its client id's stem."""
ROLES = ("api", *KAFKA_ROLES)


def child_names(stream_workers: int) -> tuple[str, ...]:
    """The children of `engage up`: one per role, and ``stream-2``... for extra stream
    workers (the same consumer group, so they share the partitions)."""
    extra = tuple(f"stream-{n}" for n in range(2, stream_workers + 1))
    return (*ROLES, *extra)


def role_of(name: str) -> str:
    return name.split("-", 1)[0]


class StopRequest(threading.Event):
    """An event set by a signal, which remembers when (``time.monotonic()``): a stop's
    deadlines count from the signal, not from when the supervisor's loop noticed it."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def request(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        self.set()


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (and stamp it, if it is a ``StopRequest``)."""
    action = stop.request if isinstance(stop, StopRequest) else stop.set
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: action())


def watch_parent() -> None:
    """When the supervisor that started us (PARENT_ENV) is gone, stop: SIGTERM ourselves,
    and exit outright if that has not worked within 4 s (the embedded broker died with the
    supervisor, so a Kafka worker's clean stop mostly cannot finish; what it had not committed
    is redone by the next generation). Leaves no process behind."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(4)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


@dataclass
class Child:
    role: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Starts the broker (unless one is given), the API, relay, stream worker and consumers;
    restarts any that die, and the embedded broker too (re-creating its topics and
    republishing the ledger, since its log lived in memory); applies retention as it starts
    and every ``retention_check_hours``; stops them all on request. ``clock`` (Unix seconds)
    is what the retention schedule reads."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = make_engine(settings.sqlalchemy_url)
        self.sessions = session_factory(self.engine)
        self.retention_due_at = 0.0  # at once: as `up` starts
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = settings.kafka_bootstrap or ""
        self.children: dict[str, Child] = {}
        self.logs = settings.home / "logs"
        self.api_port = settings.api_port or free_port()
        self.api_url = f"http://{settings.api_host}:{self.api_port}"
        # Each child's /metrics and /healthz (the API serves both on its own port); a child
        # restarted keeps its port, so the run file stays true.
        self.metrics_ports = child_metrics_ports(
            settings, child_names(settings.stream_workers), free_port
        )

    def start(self) -> None:
        if not self.settings.kafka_bootstrap and not embedded_broker_installed():
            raise SystemExit(EMBEDDED_BROKER_MISSING)
        if not _port_free(self.settings.api_host, self.api_port):
            raise SystemExit(
                f"port {self.api_port} on {self.settings.api_host} is taken (another `engage up`?)"
                "; set ENGAGE_API_PORT to another port, or 0 for any free one"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings.ensure_secrets()  # before any child: they must all read the same keys
        migrate(self.engine)
        self.apply_retention_when_due()  # before the embedded broker is filled from the ledger
        if not self.settings.kafka_bootstrap:
            self.broker = EmbeddedBroker(log_path=self.logs / "broker.log").start()
            self.bootstrap = self.broker.bootstrap
            self._republish()
        self._ensure_topics()
        for name in child_names(self.settings.stream_workers):
            self._spawn(name)
        self._wait_for_api()
        self._write_run_file()

    def _ensure_topics(self) -> None:
        ensure_topics(
            self.bootstrap,
            self.settings.topic_partitions,
            self.settings.topics(),
            replication_factor=self.settings.topic_replication_factor,
            min_insync_replicas=self.settings.topic_min_insync_replicas,
        )

    def _write_run_file(self) -> None:
        run = {
            "pid": os.getpid(),
            "api_url": self.api_url,
            "bootstrap": self.bootstrap,
            "embedded": self.broker is not None,
            "database_url": self.settings.sqlalchemy_url,
            "pids": self.pids(),
            "metrics": {
                name: metrics_url(self.settings.metrics_host, port)
                for name, port in self.metrics_ports.items()
            },
        }
        temporary = self.settings.run_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(run))
        temporary.replace(self.settings.run_file)

    def _env(self) -> dict[str, str]:
        """The children's environment: the supervisor's settings, passed explicitly (no
        ENGAGE_* variable of its own environment reaches them otherwise), and where they run."""
        settings = self.settings
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
        return {
            **inherited,
            **settings.as_environment(),
            "ENGAGE_HOME": str(settings.home.resolve()),
            "ENGAGE_DATABASE_URL": settings.sqlalchemy_url,
            "ENGAGE_KAFKA_BOOTSTRAP": self.bootstrap,
            "ENGAGE_API_PORT": str(self.api_port),
            "ENGAGE_LOG_JSON": "true",
            "ENGAGE_PUBLIC_URL": settings.public_url
            if "public_url" in settings.model_fields_set
            else self.api_url,
            PARENT_ENV: str(os.getpid()),
        }

    def _metrics_env(self, role: str) -> dict[str, str]:
        port = self.metrics_ports.get(role)
        return {} if port is None else {"ENGAGE_METRICS_PORT": str(port)}

    def _spawn(self, role: str, restarts: int = 0) -> None:
        log_file = open(self.logs / f"{role}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            [sys.executable, "-m", "engage.cli", role_of(role)],
            env={**self._env(), **self._metrics_env(role)},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        log_file.close()
        self.children[role] = Child(role, process, restarts=restarts)

    def _wait_for_api(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            api = self.children["api"].process
            if api.poll() is not None:
                raise RuntimeError(f"the API exited; see {self.logs / 'api.log'}")
            time.sleep(0.1)
        raise RuntimeError(f"the API did not answer at {self.api_url}")

    def _republish(self) -> None:
        with self.sessions.begin() as session:
            count = mark_all_unpublished(session)
        if count:
            log.info("ledger.republish", events=count)

    def _restart_broker(self, died: bool) -> None:
        """A new embedded broker holding the ledger, republished: the old one died, or holds
        in memory events that retention has deleted from the ledger. The Kafka clients stop
        first: none of them may mark a ledger row published, or commit an offset of the old
        log, after the ledger is reset below."""
        assert self.broker is not None
        kafka = [name for name in self.children if role_of(name) in KAFKA_ROLES]
        self._terminate_all([self.children[name].process for name in kafka], 5.0)
        self.broker.stop()
        self.broker = EmbeddedBroker(self.broker.port, self.logs / "broker.log").start()
        self._ensure_topics()
        self._republish()
        for name in kafka:
            self._spawn(name, self.children[name].restarts + int(died))

    def apply_retention_when_due(self) -> RetentionResult | None:
        """Apply retention if ``clock`` says it is due (as `up` starts, then every
        ``retention_check_hours``); what it did, or None. A database that refuses (out of
        reach, locked) is tried again ``RETENTION_RETRY_S`` later."""
        now = self.clock()
        if now < self.retention_due_at:
            return None
        self.retention_due_at = now + self.settings.retention_check_hours * 3600
        try:
            result = apply_retention(self.sessions, self.settings, datetime.fromtimestamp(now, UTC))
        except OperationalError:
            log.warning("retention.failed", exc_info=True)
            self.retention_due_at = now + RETENTION_RETRY_S
            return None
        log.info("retention.applied", seconds=result.seconds, **result.rows)
        return result

    def check(self) -> None:
        """Restart what died; apply retention when due. Called about twice a second by
        ``watch``."""
        restarted = False
        if self.broker is not None and not self.broker.alive():
            log.warning("broker.died", code=self.broker.process and self.broker.process.poll())
            self._restart_broker(died=True)
            restarted = True
        retention = self.apply_retention_when_due()
        if retention is not None and retention.log and self.broker is not None:
            log.info("broker.restart_after_retention", events_deleted=retention.rows["ledger"])
            self._restart_broker(died=False)
            restarted = True
        for role, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            backoff = min(5.0, 0.5 * 2**child.restarts)
            if time.monotonic() - child.started < backoff:
                continue
            log.warning("process.restart", role=role, exit_code=code, restarts=child.restarts + 1)
            if code != 0:
                self._remove_member(role, child.process.pid)
            self._spawn(role, child.restarts + 1)
            restarted = True
        if restarted:
            self._write_run_file()

    def _remove_member(self, role: str, pid: int) -> None:
        """Take the group member of a child that died without leaving (SIGKILL, a crash) out
        of its group at once: else the group waits out its 10 s session before the restarted
        child is given partitions (docs/stream-stage.md, "Restore from snapshots")."""
        from consumers.runner import GROUP as CONSUMERS_GROUP
        from streams.worker import GROUP as STREAM_GROUP

        stem = MEMBER_CLIENTS.get(role_of(role))
        if stem is None:
            return
        group = STREAM_GROUP if role_of(role) == "stream" else CONSUMERS_GROUP
        try:
            removed = remove_members(self.bootstrap, group, member_client_id(stem, pid))
        except (KafkaError, TimeoutError, OSError):
            log.warning("group.remove_failed", role=role, group=group, exc_info=True)
            return
        log.info("group.member_removed", role=role, group=group, members=len(removed))

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self.check()

    @staticmethod
    def _terminate_all(processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
        """SIGTERM them all, wait until ``timeout_s`` has passed, SIGKILL what is left."""
        deadline = time.monotonic() + timeout_s
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self, signalled_at: float | None = None) -> None:
        """Stop the children, then the broker. ``signalled_at`` (``time.monotonic()``) is
        when the stop was asked for: the children's grace counts from then, so a signal that
        arrived during a slow ``check`` does not push the end past 10 s."""
        # Six seconds from the signal for the children to finish their batch, commit and
        # leave their groups (a stream worker also saves its snapshots); then SIGKILL, which
        # loses nothing (what was not committed is redone by the next generation). The
        # broker's stop follows: the whole of `engage up` is gone within 10 s of a SIGTERM,
        # even on a busy machine.
        waited = 0.0 if signalled_at is None else time.monotonic() - signalled_at
        grace = max(1.0, CHILD_GRACE_S - waited)
        self._terminate_all([child.process for child in self.children.values()], grace)
        if self.broker is not None:
            self.broker.stop(timeout_s=1.5)
        if self.children:  # only a supervisor that started has a run file of its own
            self.settings.run_file.unlink(missing_ok=True)
        self.engine.dispose()

    def pids(self) -> dict[str, Any]:
        pids: dict[str, Any] = {r: c.process.pid for r, c in self.children.items()}
        if self.broker is not None and self.broker.process is not None:
            pids["broker"] = self.broker.process.pid
        return pids


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_run_file(home: Path) -> dict[str, Any]:
    path = home / "run.json"
    if not path.exists():
        raise SystemExit(
            f"no running pipeline found under {home} (start one with `engage up`, or pass --url)"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data
