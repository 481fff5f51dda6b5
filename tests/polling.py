"""Poll with a deadline instead of sleeping: the suite's one way of waiting for something."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE_S = 60.0
"""How long a test waits for the broker, a worker or a database by default, in seconds."""


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.05,
    explain: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    ``check`` is called once at once, then every ``interval_s`` seconds (0: straight away, for
    a check that blocks in a poll of its own); after ``timeout_s`` seconds the test fails,
    naming ``what`` and, when given, what ``explain()`` says of the state reached.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout_s, explain))
        if interval_s:
            time.sleep(interval_s)


async def wait_until_async(
    what: str,
    check: Callable[[], Awaitable[T]],
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.0,
    explain: Callable[[], object] | None = None,
) -> T:
    """:func:`wait_until` for a coroutine ``check`` (one that awaits a poll of its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout_s, explain))
        await asyncio.sleep(interval_s)


def _timed_out(what: str, timeout_s: float, explain: Callable[[], object] | None) -> str:
    message = f"timed out after {timeout_s:.0f}s waiting for {what}"
    return message if explain is None else f"{message}: {explain()}"
