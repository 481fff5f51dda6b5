"""`engage bench`: every figure measured in one run on one embedded broker."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import streams
from engage.bench.__main__ import measure_throughput
from engage.bench.hosted import peer_figures, pipeline_peers
from engage.bench.pipeline import latency, pipeline_processes_throughput, pipeline_throughput
from infra.broker import EmbeddedBroker
from infra.topics import ensure_topics


def run_bench(
    events: int, latency_seconds: float, home: Path, partitions: int = 4
) -> dict[str, Any]:
    """Throughput of the broker, naive faust agents and the stream stage (minimal playbook,
    default playbook, default playbook in two worker processes) over the same number of
    events on one broker, with Quix Streams and faust hosting the same fold over the same
    events (``quix_fold``, ``faust_fold``), then latency through a full `engage up`
    pipeline."""
    if importlib.util.find_spec("quixstreams") is None:
        raise SystemExit(
            "`engage bench` needs Quix Streams: pip install --no-deps -r requirements-quix.txt"
        )
    with EmbeddedBroker(log_path=None) as broker:
        figures = measure_throughput(broker.bootstrap, events, partitions, timeout_s=600)
        ensure_topics(broker.bootstrap, partitions)
        figures.update(pipeline_throughput(broker.bootstrap, events))
        # Peers hosting the same fold, over the same events on the same broker.
        peers = pipeline_peers(broker.bootstrap, figures["pipeline_events"])
        for name, result in peers.items():
            figures.update(peer_figures(name, result, figures["pipeline"]))
        # The same events again, the stage scaled out to one worker process per core.
        figures.update(
            pipeline_processes_throughput(broker.bootstrap, figures["pipeline_events"], 2)
        )
    figures["fold_compiled"] = streams.COMPILED_FOLD  # the mypyc build (`make fold`) or not
    figures["pipeline_vs_naive_faust"] = round(figures["pipeline"] / figures["naive_faust"], 2)
    figures["pipeline_vs_naive_faust_table"] = round(
        figures["pipeline"] / figures["naive_faust_table"], 2
    )
    figures.update(latency(latency_seconds))
    return figures
