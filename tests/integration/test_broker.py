"""The embedded broker's lifecycle: it starts on a free port, answers, and stops cleanly."""

from __future__ import annotations

import contextlib
import gc
import socket
import subprocess
import warnings
from pathlib import Path

import pytest

from infra.broker import BrokerError, EmbeddedBroker
from infra.topics import ensure_topics, topic_requests
from schemas.catalogue import TOPICS


def test_the_broker_starts_answers_and_stops() -> None:
    broker = EmbeddedBroker().start()
    try:
        assert broker.alive()
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
    finally:
        broker.stop()
    assert not broker.alive()
    assert broker.process is not None and broker.process.returncode is not None
    broker.stop()  # stopping twice is harmless


def test_a_taken_port_is_a_broker_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(port=taken.getsockname()[1])
        try:
            broker.start(timeout_s=10)
        except BrokerError:
            return
        assert broker.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.process.wait(5)
        alive = broker.alive()
        broker.stop()
        assert alive, "start() returned, but the broker had exited: the port was someone else's"


def test_a_broker_with_a_log_file_leaves_no_file_open(tmp_path: Path) -> None:
    log_path = tmp_path / "broker.log"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        broker = EmbeddedBroker(log_path=log_path).start()
        broker.stop()
        del broker
        gc.collect()

    assert log_path.exists()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_topics_refuse_more_in_sync_copies_than_copies() -> None:
    """Checked before the broker is asked: such a topic would accept no acks=all write."""
    with pytest.raises(ValueError, match="more than the replication factor"):
        ensure_topics("127.0.0.1:1", 4, replication_factor=1, min_insync_replicas=2)


def test_topics_are_asked_for_with_their_copies_and_in_sync_minimum() -> None:
    (spec,) = TOPICS[:1]
    (request,) = topic_requests((spec,), 6, replication_factor=3, min_insync_replicas=2)
    assert (request.name, request.num_partitions, request.replication_factor) == (spec.name, 6, 3)
    assert request.topic_configs == {**spec.configs(), "min.insync.replicas": "2"}
    (single,) = topic_requests((spec,), 4)
    assert single.replication_factor == 1 and single.topic_configs == spec.configs()
