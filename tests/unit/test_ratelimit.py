"""The provider rate limit in virtual time: the rate, the burst, pauses, many threads at once."""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from consumers.ratelimit import RateLimit


class VirtualTime:
    """A clock and a sleep shared by ``threads`` threads: time stands still while any of them
    is awake, and jumps to the earliest wake-up once all are asleep (or done), so sleeps
    overlap as they would in real time and a test never waits."""

    def __init__(self, threads: int = 1) -> None:
        self.now = 0.0
        self.slept: dict[int, float] = defaultdict(float)
        """Seconds each thread (by ident) asked to sleep."""
        self._cond = threading.Condition()
        self._awake = threads
        self._wakeups: list[tuple[float, int]] = []
        self._released: set[int] = set()
        self._seq = itertools.count()

    def clock(self) -> float:
        with self._cond:
            return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "RateLimit asked for a sleep of no time (a busy loop)"
        with self._cond:
            self.slept[threading.get_ident()] += seconds
            seq = next(self._seq)
            # At least one step of the float clock: a wait below its resolution (a bucket at
            # 0.9999999999999996 tokens) would otherwise never let time move.
            wake = max(self.now + seconds, math.nextafter(self.now, math.inf))
            heapq.heappush(self._wakeups, (wake, seq))
            self._awake -= 1
            self._advance()
            if not self._cond.wait_for(lambda: seq in self._released, timeout=10):
                raise TimeoutError("virtual time stopped: a thread neither slept nor finished")
            self._released.remove(seq)

    def done(self) -> None:
        """The calling thread will not sleep again."""
        with self._cond:
            self._awake -= 1
            self._advance()

    def advance(self, seconds: float) -> None:
        """Let time pass outside any sleep (single-threaded tests only)."""
        with self._cond:
            self.now += seconds

    def _advance(self) -> None:
        if self._awake or not self._wakeups:
            return
        self.now = max(self.now, self._wakeups[0][0])
        while self._wakeups and self._wakeups[0][0] <= self.now:
            _, seq = heapq.heappop(self._wakeups)
            self._released.add(seq)
            self._awake += 1  # runnable from now on, before it takes the lock back
        self._cond.notify_all()


def limit_in(time: VirtualTime, rate: float, burst: float | None = None) -> RateLimit:
    return RateLimit(rate, burst, clock=time.clock, sleep=time.sleep)


def run_threads(
    time: VirtualTime, count: int, work: Callable[[], list[float]]
) -> list[list[float]]:
    """Run ``work`` in ``count`` threads released together; each thread's result, in order."""
    barrier = threading.Barrier(count)

    def run() -> list[float]:
        barrier.wait(timeout=10)
        try:
            return work()
        finally:
            time.done()

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(run) for _ in range(count)]
        return [future.result(timeout=30) for future in futures]


# --- one caller -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "calls", "waits"),
    [
        (5.0, 1.0, 4, [0.0, 0.2, 0.2, 0.2]),
        (2.0, 3.0, 6, [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]),
        (0.5, None, 3, [0.0, 2.0, 2.0]),  # the default burst is one call
        (10.0, None, 12, [0.0] * 10 + [0.1, 0.1]),  # ... or one second's worth
    ],
)
def test_calls_beyond_the_burst_wait_one_interval_each(
    rate: float, burst: float | None, calls: int, waits: list[float]
) -> None:
    time = VirtualTime()
    limit = limit_in(time, rate, burst)

    assert [limit.acquire() for _ in range(calls)] == pytest.approx(waits)
    assert time.now == pytest.approx(sum(waits))
    assert sum(time.slept.values()) == pytest.approx(sum(waits))


def test_an_idle_bucket_refills_only_up_to_the_burst() -> None:
    time = VirtualTime()
    limit = limit_in(time, rate=2.0, burst=3.0)
    for _ in range(3):
        limit.acquire()

    time.advance(60.0)  # long enough for 120 calls, but the bucket holds 3

    assert [limit.acquire() for _ in range(5)] == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.5])


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateLimit(rate)


# --- pauses -----------------------------------------------------------------------------------


def test_a_pause_stops_calls_even_with_tokens_left_and_refills_meanwhile() -> None:
    time = VirtualTime()
    limit = limit_in(time, rate=1.0, burst=3.0)  # full: three calls could go at once

    limit.pause(7.0)

    assert limit.acquire() == pytest.approx(7.0)
    assert time.now == pytest.approx(7.0)
    # The bucket kept filling during the pause: the burst is there, then the rate again.
    assert [limit.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 1.0])


def test_a_shorter_pause_never_cuts_a_longer_one() -> None:
    time = VirtualTime()
    limit = limit_in(time, rate=100.0)

    limit.pause(7.0)
    limit.pause(2.0)

    assert limit.acquire() == pytest.approx(7.0)


def test_a_pause_counts_from_when_it_is_called() -> None:
    time = VirtualTime()
    limit = limit_in(time, rate=100.0)
    time.advance(5.0)

    limit.pause(3.0)
    time.advance(1.0)

    assert limit.acquire() == pytest.approx(2.0)
    assert time.now == pytest.approx(8.0)


def test_a_pause_that_has_passed_costs_nothing() -> None:
    time = VirtualTime()
    limit = limit_in(time, rate=100.0)
    limit.pause(3.0)
    time.advance(3.5)

    assert limit.acquire() == 0.0


# --- many threads -----------------------------------------------------------------------------


def test_a_pause_holds_every_thread_until_it_ends() -> None:
    threads = 4
    time = VirtualTime(threads)
    limit = limit_in(time, rate=100.0, burst=10.0)  # tokens for all: only the pause stops them
    limit.pause(5.0)

    def one_call() -> list[float]:
        waited = limit.acquire()
        return [waited, time.clock()]

    results = run_threads(time, threads, one_call)

    assert [waited for waited, _ in results] == pytest.approx([5.0] * threads)
    assert [at for _, at in results] == pytest.approx([5.0] * threads)  # none went early
    assert time.now == pytest.approx(5.0)  # the waits overlapped: 5 s, not 4 x 5 s


def test_threads_sharing_a_limit_never_exceed_it_and_wait_no_longer_than_needed() -> None:
    threads, calls, rate, burst = 8, 25, 50.0, 10.0
    time = VirtualTime(threads)
    limit = limit_in(time, rate, burst)
    granted: list[float] = []
    record = threading.Lock()
    waited: dict[int, float] = defaultdict(float)

    def many_calls() -> list[float]:
        for _ in range(calls):
            wait = limit.acquire()
            with record:
                granted.append(time.clock())
                waited[threading.get_ident()] += wait
        return []

    run_threads(time, threads, many_calls)

    total = threads * calls
    assert len(granted) == total
    granted.sort()
    # The k-th call (from 1) may go once the burst and k - burst intervals are used up...
    for k, at in enumerate(granted, start=1):
        assert at >= (k - burst) / rate - 1e-9, f"call {k} went at {at:.4f} s: over the rate"
    # ... and no later: the last call goes exactly when the bucket allows it.
    assert granted[-1] == pytest.approx((total - burst) / rate)
    assert time.now == pytest.approx((total - burst) / rate)
    # What each acquire() reported is what its thread slept.
    assert len(waited) == threads
    for ident, seconds in waited.items():
        assert seconds == pytest.approx(time.slept.get(ident, 0.0))
