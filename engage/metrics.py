"""Wiring of the processes' metrics and health: a metrics port for each child of `engage up`,
and a worker process's /metrics and /healthz server around its run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from infra.metrics import Liveness, MetricsServer, serve_metrics
from infra.settings import Settings


def child_metrics_ports(
    settings: Settings, names: Iterable[str], pick: Callable[[str], int]
) -> dict[str, int]:
    """A metrics port per child but the API (which serves /metrics and /healthz on its own
    port): ``ENGAGE_METRICS_PORT`` and the next ones, in the children's order, when it is set
    (non-zero); otherwise a free port on the metrics host each (``pick(host)``)."""
    workers = [name for name in names if name.split("-", 1)[0] != "api"]
    if "metrics_port" in settings.model_fields_set and settings.metrics_port:
        return {name: settings.metrics_port + index for index, name in enumerate(workers)}
    return {name: pick(settings.metrics_host) for name in workers}


def metrics_url(host: str, port: int) -> str:
    """Where a scraper on this machine reaches a metrics server bound to ``host``."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


@contextmanager
def serving(settings: Settings, liveness: Liveness) -> Iterator[MetricsServer]:
    """/metrics and /healthz (judged by ``liveness``) on ``ENGAGE_METRICS_HOST:PORT`` while
    the block runs."""
    server = serve_metrics(settings.metrics_host, settings.metrics_port, liveness.verdict)
    try:
        yield server
    finally:
        server.close()
