"""The health rule of a worker process (infra.metrics.Liveness), on an explicit clock; and the
metrics ports `engage up` gives its children."""

from __future__ import annotations

import pytest

from engage.metrics import child_metrics_ports, metrics_url
from infra.metrics import Liveness
from infra.settings import Settings

STALE_S = 60.0


class Clock:
    """Monotonic seconds that a test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stream(clock: Clock) -> Liveness:
    return Liveness("test-stream", STALE_S, clock)


def test_a_stale_batch_while_there_is_lag_is_unhealthy_with_the_reason(
    stream: Liveness, clock: Clock
) -> None:
    stream.polled(assigned=4, lag=0)
    stream.batch()
    clock.advance(5)
    stream.polled(assigned=4, lag=1200)  # records arrived; no batch handles them
    clock.advance(STALE_S - 5)
    stream.polled(assigned=4, lag=1200)
    assert stream.verdict().healthy  # not yet: 55 s without a batch
    clock.advance(10)
    stream.polled(assigned=4, lag=1200)
    verdict = stream.verdict()
    assert not verdict.healthy
    assert verdict.reason == "no batch for 65 s while lag is 1200"
    assert verdict.details["lag"] == 1200 and verdict.details["assigned"] == 4

    stream.batch()  # it moves again
    stream.polled(assigned=4, lag=700)
    assert stream.verdict().healthy


def test_lag_that_appears_after_a_long_quiet_spell_gets_the_full_patience(
    stream: Liveness, clock: Clock
) -> None:
    stream.polled(assigned=2, lag=0)
    stream.batch()
    clock.advance(3600)  # an hour caught up: nothing to do is healthy
    stream.polled(assigned=2, lag=0)
    assert stream.verdict().healthy
    stream.polled(assigned=2, lag=10)
    assert stream.verdict().healthy  # the lag is new: the last batch an hour ago is no reason
    clock.advance(STALE_S + 1)
    stream.polled(assigned=2, lag=10)
    assert stream.verdict().reason == "no batch for 61 s while lag is 10"


def test_a_loop_that_stops_polling_is_unhealthy(stream: Liveness, clock: Clock) -> None:
    stream.polled(assigned=1, lag=0)
    clock.advance(STALE_S + 30)
    verdict = stream.verdict()
    assert not verdict.healthy
    assert verdict.reason == "the worker loop has not polled for 90 s"


def test_no_partitions_while_the_group_has_lag_nobody_works_off_is_unhealthy(
    stream: Liveness, clock: Clock
) -> None:
    stream.polled(assigned=4, lag=0)
    clock.advance(1)
    stream.polled(assigned=0, lag=0)  # lost its partitions
    stream.group(lag=500, committed=9000)
    clock.advance(STALE_S - 1)
    stream.polled(assigned=0, lag=0)
    assert stream.verdict().healthy  # still within its patience (a rebalance takes seconds)
    clock.advance(11)
    stream.polled(assigned=0, lag=0)
    stream.group(lag=500, committed=9000)
    verdict = stream.verdict()
    assert not verdict.healthy
    assert verdict.reason == (
        "no partitions assigned for 70 s while the group has lag 500 and no commit for 70 s"
    )
    assert verdict.details["group_lag"] == 500

    stream.polled(assigned=4, lag=500)  # assigned again: judged by its own lag from now
    stream.batch()
    assert stream.verdict().healthy


def test_a_spare_member_is_healthy_while_the_others_work_the_lag_off(
    stream: Liveness, clock: Clock
) -> None:
    stream.polled(assigned=0, lag=0)
    for committed in range(9000, 9600, 100):  # another member commits every 20 s
        stream.group(lag=300, committed=committed)
        clock.advance(20)
        stream.polled(assigned=0, lag=0)
        assert stream.verdict().healthy
    clock.advance(STALE_S)
    stream.polled(assigned=0, lag=0)
    stream.group(lag=300, committed=9500)  # nobody committed for 80 s
    assert not stream.verdict().healthy


def test_a_member_without_partitions_in_a_group_without_lag_is_healthy(
    stream: Liveness, clock: Clock
) -> None:
    stream.polled(assigned=0, lag=0)
    stream.group(lag=0, committed=100)
    clock.advance(10 * STALE_S)
    stream.polled(assigned=0, lag=0)
    assert stream.verdict().healthy


def test_the_relay_has_no_assignment_and_is_judged_by_its_backlog(clock: Clock) -> None:
    relay = Liveness("test-relay", STALE_S, clock)
    relay.polled(assigned=None, lag=0)
    clock.advance(10 * STALE_S)
    relay.polled(assigned=None, lag=0)
    assert relay.verdict().healthy  # nothing to publish
    relay.polled(assigned=None, lag=2000)  # the broker refuses: rows wait
    clock.advance(STALE_S + 5)
    relay.polled(assigned=None, lag=2000)
    assert relay.verdict().reason == "no batch for 65 s while lag is 2000"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"metrics_port": 9300},
            {"relay": 9300, "stream": 9301, "consume": 9302, "stream-2": 9303},
        ),
        ({}, {"relay": 1, "stream": 2, "consume": 3, "stream-2": 4}),
        ({"metrics_port": 0}, {"relay": 1, "stream": 2, "consume": 3, "stream-2": 4}),
    ],
)
def test_each_child_but_the_api_gets_its_own_metrics_port(
    fields: dict[str, int], expected: dict[str, int]
) -> None:
    picked = iter(range(1, 10))
    ports = child_metrics_ports(
        Settings(**fields),  # type: ignore[arg-type]
        ("api", "relay", "stream", "consume", "stream-2"),
        lambda host: next(picked),
    )
    assert ports == expected


def test_a_server_bound_to_every_address_is_scraped_on_loopback() -> None:
    assert metrics_url("0.0.0.0", 9100) == "http://127.0.0.1:9100"
    assert metrics_url("127.0.0.1", 9105) == "http://127.0.0.1:9105"
