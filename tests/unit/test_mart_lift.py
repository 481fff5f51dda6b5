"""A rule's lift and its 95% interval, against the worked examples of Newcombe (1998), "Interval
estimation for the difference between independent proportions", Table II, method 10 (the
hybrid score interval), and the edge cases the chart meets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.mart.lift import lift, wilson


@pytest.mark.parametrize(
    ("a", "m", "b", "n", "low", "high"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (0, 10, 0, 10, -0.2775, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0000),
        (10, 10, 0, 10, 0.6075, 1.0000),
    ],
)
def test_newcombe_hybrid_score_interval(
    a: int, m: int, b: int, n: int, low: float, high: float
) -> None:
    found = lift(a, m, b, n)
    assert found.lift == pytest.approx(a / m - b / n)
    assert (found.low, found.high) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_wilson_interval_of_a_known_proportion() -> None:
    # 81 of 263: Wilson's interval 0.2553 to 0.3662 (Newcombe, "Two-sided confidence intervals
    # for the single proportion", 1998, example (a): 81/263).
    low, high = wilson(81, 263)
    assert (low, high) == (pytest.approx(0.2553, abs=5e-5), pytest.approx(0.3662, abs=5e-5))


def test_an_empty_group_has_no_lift() -> None:
    found = lift(3, 10, 0, 0)
    assert (found.nudged_rate, found.held_out_rate) == (0.3, None)
    assert (found.lift, found.low, found.high) == (None, None, None)


@pytest.mark.parametrize(("a", "m", "b", "n"), [(11, 10, 0, 1), (-1, 3, 0, 1), (0, 1, 2, 1)])
def test_impossible_counts_are_refused(a: int, m: int, b: int, n: int) -> None:
    with pytest.raises(ValueError, match="impossible"):
        lift(a, m, b, n)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 500).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m))),
    st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_the_interval_holds_the_difference_within_minus_one_and_one(
    nudged: tuple[int, int], held: tuple[int, int]
) -> None:
    found = lift(nudged[0], nudged[1], held[0], held[1])
    assert found.low is not None and found.high is not None and found.lift is not None
    assert -1.0 - 1e-12 <= found.low <= found.lift <= found.high <= 1.0 + 1e-12
