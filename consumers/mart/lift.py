"""A rule's lift: the conversion of the supporters it nudged less that of its hold-out group,
with a 95% confidence interval of the difference (pure: no I/O, no clock).

The interval is Newcombe's hybrid score interval (method 10 of Newcombe, "Interval estimation
for the difference between independent proportions", Statistics in Medicine 17, 1998), built
from each group's Wilson score interval. Unlike the textbook Wald interval it stays inside
[-1, 1] and behaves with small groups and with 0 or 100% conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""


@dataclass(frozen=True)
class Lift:
    """Conversions and group sizes of the nudged and the held-out, the rates, their difference
    (``lift``, in proportion points: 0.05 is five percentage points) and its interval;
    ``lift`` and the bounds are None when either group is empty."""

    nudged: int
    nudged_converted: int
    held_out: int
    held_out_converted: int
    nudged_rate: float | None
    held_out_rate: float | None
    lift: float | None
    low: float | None
    high: float | None


def wilson(converted: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of ``converted / n``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = converted / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def lift(
    nudged_converted: int, nudged: int, held_out_converted: int, held_out: int, z: float = Z95
) -> Lift:
    """The difference of conversion rates, nudged less held out, with Newcombe's interval."""
    for name, converted, n in (
        ("nudged", nudged_converted, nudged),
        ("held_out", held_out_converted, held_out),
    ):
        if n < 0 or not 0 <= converted <= n:
            raise ValueError(f"{name}: {converted} converted of {n} is impossible")
    p1 = nudged_converted / nudged if nudged else None
    p2 = held_out_converted / held_out if held_out else None
    if p1 is None or p2 is None:
        return Lift(
            nudged, nudged_converted, held_out, held_out_converted, p1, p2, None, None, None
        )
    l1, u1 = wilson(nudged_converted, nudged, z)
    l2, u2 = wilson(held_out_converted, held_out, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Lift(nudged, nudged_converted, held_out, held_out_converted, p1, p2, d, low, high)
