"""The sign-in's rate limit: after ``MAX_FAILURES`` failed sign-ins within ``WINDOW`` for one
organiser id, or from one client address, further attempts for it are refused (HTTP 429 with
``Retry-After``) until the oldest failure leaves the window.

Kept in memory, in the API process: each API process counts on its own, and a restart forgets.
One process (`engage up`, `engage api`) gives exactly the limit; N replicas behind a balancer
allow up to N times as many tries. Time comes in as ``now``; thread-safe (the app's handlers
run in a thread pool).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta

MAX_FAILURES = 5
"""Failed sign-ins allowed per organiser id, and per client address, within ``WINDOW``."""
WINDOW = timedelta(minutes=15)
MAX_KEYS = 100_000
"""Keys remembered at most; beyond it, those with no failure inside the window are dropped."""


class SignInThrottle:
    def __init__(
        self, max_failures: int = MAX_FAILURES, window: timedelta = WINDOW, max_keys: int = MAX_KEYS
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[datetime]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: Iterable[str], now: datetime) -> int | None:
        """Seconds until a sign-in for these keys may be tried again (at least 1), or None
        when none of them is over the limit."""
        waits = []
        with self._lock:
            for key in keys:
                recent = self._recent(key, now)
                if recent is not None and len(recent) >= self.max_failures:
                    free_at = recent[len(recent) - self.max_failures] + self.window
                    waits.append(max(1, math.ceil((free_at - now).total_seconds())))
        return max(waits) if waits else None

    def failed(self, keys: Iterable[str], now: datetime) -> None:
        """Count a failed sign-in against each key."""
        with self._lock:
            if len(self._failures) >= self.max_keys:
                for key in list(self._failures):
                    self._recent(key, now)
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        """Forget a key's failures (its organiser signed in)."""
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: datetime) -> deque[datetime] | None:
        found = self._failures.get(key)
        if found is None:
            return None
        while found and found[0] <= now - self.window:
            found.popleft()
        if not found:
            del self._failures[key]
            return None
        return found


def keys_for(organiser_id: str, client: str | None) -> tuple[str, ...]:
    """The keys one sign-in attempt counts against: the organiser id as typed (normalised),
    and the client's address (the peer of the connection; no proxy header is trusted)."""
    return (f"id:{organiser_id.strip().lower()[:40]}", f"ip:{client or 'unknown'}")
