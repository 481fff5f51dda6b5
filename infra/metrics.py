"""Metrics and health of a worker process: its liveness, the rule that judges it, and the small
HTTP server that answers /metrics (Prometheus) and /healthz on the process's metrics port.

The packages define and update their own metrics (``engage_stream_*``, ``engage_consumers_*``,
``engage_relay_*``...) on prometheus_client's default registry; this module holds only what
every worker shares: a ``Liveness`` the worker loop feeds, the health rule, and the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from aiokafka.errors import IllegalStateError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

log = structlog.get_logger(__name__)

HEALTHY = Gauge("engage_healthy", "1 while /healthz answers 200, else 0.", ["role"])
LAST_BATCH = Gauge(
    "engage_last_batch_timestamp_seconds",
    "Unix time the worker last finished a batch of records.",
    ["role"],
)
ASSIGNED = Gauge(
    "engage_assigned_partitions", "Topic-partitions assigned to this group member.", ["role"]
)
LAG = Gauge(
    "engage_lag_records",
    "Records this process has still to handle, from the fetch high watermarks it saw "
    "(the relay: ledger rows found unpublished at its last read, up to a batch).",
    ["role"],
)
GROUP_LAG = Gauge(
    "engage_idle_group_lag_records",
    "While this member has no partitions: its group's lag, read every few seconds.",
    ["role"],
)


OBSERVE_EVERY_S = 0.5
"""How often a worker loop refreshes its lag gauges and tells its ``Liveness`` (seconds): a
turn of the loop can be a few records, and setting a gauge per partition costs microseconds."""


@dataclass(frozen=True)
class Verdict:
    """What /healthz answers: healthy (200) or not (503), the reason, and the signals."""

    healthy: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Liveness:
    """What a worker loop last did, fed by the loop and judged by ``verdict``.

    ``clock`` is monotonic seconds (tests pass their own). The loop calls ``polled`` on every
    turn with its assignment (None for a process without one, the relay) and lag, ``batch``
    when it has handled records, and ``group`` with its group's lag while it has no partitions.
    The worker thread writes plain numbers; the HTTP thread only reads them.
    """

    role: str
    stale_after_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    last_poll: float = field(init=False)
    last_batch: float | None = field(init=False, default=None)
    assigned: int | None = field(init=False, default=None)
    lag: int = field(init=False, default=0)
    lag_since: float | None = field(init=False, default=None)
    unassigned_since: float = field(init=False)
    group_lag: int | None = field(init=False, default=None)
    group_committed: int | None = field(init=False, default=None)
    group_moved_at: float = field(init=False)

    def __post_init__(self) -> None:
        now = self.clock()
        self.started = self.last_poll = self.unassigned_since = self.group_moved_at = now

    def polled(self, assigned: int | None, lag: int) -> None:
        """A turn of the loop: ``assigned`` topic-partitions (None: not a group member) and
        ``lag`` records still to handle."""
        now = self.clock()
        self.last_poll = now
        if assigned:
            self.group_lag = None
        elif self.assigned or self.assigned is None:
            self.unassigned_since = now  # just lost its partitions (or never had any)
        self.assigned = assigned
        if lag > 0 and self.lag <= 0:
            self.lag_since = now
        self.lag = lag
        LAG.labels(self.role).set(lag)
        if assigned is not None:
            ASSIGNED.labels(self.role).set(assigned)

    def batch(self) -> None:
        """The loop has handled records (folded, stored or published)."""
        self.last_batch = self.clock()
        LAST_BATCH.labels(self.role).set_to_current_time()

    def group(self, lag: int, committed: int) -> None:
        """While unassigned: the group's lag, and the sum of its committed offsets (whether
        another member is working it off)."""
        if committed != self.group_committed:
            self.group_committed = committed
            self.group_moved_at = self.clock()
        self.group_lag = lag
        GROUP_LAG.labels(self.role).set(lag)

    def verdict(self, now: float | None = None) -> Verdict:
        """The health rule, ``stale_after_s`` (seconds) being the patience of each part:

        - the loop has not polled for longer than that: it is stuck;
        - there has been lag for longer than that and no batch in that time: it is stalled;
        - it has had no partitions for longer than that while its group has lag that nobody
          has committed any of in that time: it lost its group (a spare member, while the
          others work the lag off, is healthy).
        """
        now = self.clock() if now is None else now
        stale = self.stale_after_s
        details: dict[str, Any] = {
            "role": self.role,
            "assigned": self.assigned,
            "lag": self.lag,
            "last_batch_age_s": None if self.last_batch is None else round(now - self.last_batch),
        }
        if self.group_lag is not None:
            details["group_lag"] = self.group_lag
        polled = now - self.last_poll
        if polled > stale:
            return self._judged(
                False, f"the worker loop has not polled for {polled:.0f} s", details
            )
        if self.lag > 0 and self.lag_since is not None:
            quiet = now - max(self.lag_since, self.last_batch or self.started)
            if quiet > stale:
                reason = f"no batch for {quiet:.0f} s while lag is {self.lag}"
                return self._judged(False, reason, details)
        if self.assigned == 0 and self.group_lag:
            idle = now - self.unassigned_since
            still = now - self.group_moved_at
            if idle > stale and still > stale:
                reason = (
                    f"no partitions assigned for {idle:.0f} s while the group has lag "
                    f"{self.group_lag} and no commit for {still:.0f} s"
                )
                return self._judged(False, reason, details)
        return self._judged(True, "ok", details)

    def _judged(self, healthy: bool, reason: str, details: dict[str, Any]) -> Verdict:
        HEALTHY.labels(self.role).set(int(healthy))
        return Verdict(healthy, reason, details)


class GroupLagWatch:
    """While its member has no partitions, reads the group's lag every ``interval_s`` seconds
    in a daemon thread (a spare member, or one that lost its group) and tells ``liveness``."""

    def __init__(
        self,
        read: Callable[[], tuple[int, int]],
        liveness: Liveness,
        interval_s: float = 10.0,
    ) -> None:
        """``read()`` gives the group's (lag, committed offsets summed)."""
        self.read = read
        self.liveness = liveness
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="group-lag-watch")

    def start(self) -> GroupLagWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            if self.liveness.assigned != 0:
                continue
            try:
                lag, committed = self.read()
            except Exception:  # the broker out of reach: the next turn tries again
                log.warning("health.group_lag_failed", exc_info=True)
                continue
            self.liveness.group(lag, committed)


class PartitionGauges:
    """A gauge labelled (topic, partition), kept to the partitions given: ``update`` sets each
    one's value and removes the partitions no longer there. The children are cached: looking
    one up by its labels costs more than the rest of a worker loop's turn."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.children: dict[tuple[str, int], Any] = {}

    def update(self, values: dict[tuple[str, int], int]) -> None:
        children = self.children
        for key, value in values.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self.gauge.labels(key[0], str(key[1]))
            child.set(value)
        for gone in children.keys() - values.keys():
            del children[gone]
            self.gauge.remove(gone[0], str(gone[1]))


class ConsumerLag:
    """A group member's lag per assigned partition (the high watermark of the consumer's last
    fetch less its position), as ``gauges`` and for ``liveness``, looked at most every
    ``OBSERVE_EVERY_S`` (not ListOffsets, which Tansu answers wrongly)."""

    def __init__(self, gauges: PartitionGauges, liveness: Liveness) -> None:
        self.gauges = gauges
        self.liveness = liveness
        self._observed_at = 0.0  # monotonic

    async def observe(self, consumer: Any) -> None:
        """Look at ``consumer`` (an aiokafka consumer) if it is time to."""
        if time.monotonic() < self._observed_at + OBSERVE_EVERY_S:
            return
        self._observed_at = time.monotonic()
        lags: dict[tuple[str, int], int] = {}
        assignment = consumer.assignment()
        for tp in assignment:
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                lags[(tp.topic, tp.partition)] = max(high - await consumer.position(tp), 0)
            except IllegalStateError:  # revoked meanwhile
                continue
        self.gauges.update(lags)
        self.liveness.polled(len(assignment), sum(lags.values()))


def exposition() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsServer:
    """Serves ``GET /metrics`` and ``GET /healthz`` (200 or 503, JSON with the reason) on
    ``host:port`` (0: any free port; ``port`` says which) from a daemon thread."""

    def __init__(self, host: str, port: int, health: Callable[[], Verdict]) -> None:
        self.health = health
        self.server = ThreadingHTTPServer((host, port), _handler(health))
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="metrics-server"
        )

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics.serving", host=self.host, port=self.port)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(health: Callable[[], Verdict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                health()  # engage_healthy as of this scrape
                body, content_type = exposition()
                self._answer(200, body, content_type)
            elif path == "/healthz":
                verdict = health()
                document = {
                    "status": "ok" if verdict.healthy else "unhealthy",
                    "reason": verdict.reason,
                    **verdict.details,
                }
                code = 200 if verdict.healthy else 503
                self._answer(code, json.dumps(document).encode(), "application/json")
            else:
                self._answer(404, b'{"detail": "Not Found"}', "application/json")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds would flood the log: say nothing."""

    return Handler


def serve_metrics(host: str, port: int, health: Callable[[], Verdict]) -> MetricsServer:
    """Start a ``MetricsServer``; stop it with ``close()``."""
    return MetricsServer(host, port, health).start()
