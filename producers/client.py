"""HTTP client of the ingest API: posts batches of events, retrying what is safe to retry."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

BATCH_PATH = "/v1/events/batch"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class IngestError(Exception):
    """The API refused the request or could not be reached; ``status`` is the last HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str


@dataclass(frozen=True)
class RejectedEvent:
    """An event the API refused; ``index`` is its position in the posted batch."""

    index: int
    errors: list[FieldError]


@dataclass
class BatchResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)


class IngestClient:
    """Posts events to ``{api_url}/v1/events/batch`` with a bearer token.

    Connection errors, 429 and 5xx are retried with exponential backoff (``backoff_s`` doubling
    per try, capped at ``max_backoff_s``, jittered, or the server's ``Retry-After`` if given) up
    to ``max_attempts`` tries in all. Retrying a POST is safe because every event carries its
    own ``event_id`` and the API reports a repeat as a duplicate instead of storing it twice.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        timeout_s: float = 30.0,
        *,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._client = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._jitter = random.Random()

    def __repr__(self) -> str:
        return f"IngestClient({str(self._client.base_url)!r})"

    def post_batch(self, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Post one batch as given; a 422 with per-event rejections is a normal partial result."""
        body = {"events": [dict(event) for event in events]}
        response = self._post_with_retries(BATCH_PATH, body)
        status = response.status_code
        if status == 401:
            raise IngestError("the ingest API rejected the token (401)", status)
        if status == 413:
            raise IngestError(
                f"batch of {len(events)} events is too big for the ingest API (413)", status
            )
        if 200 <= status < 300 or status == 422:
            return _parse_result(response)
        raise IngestError(f"ingest API answered {status}: {_snippet(response)}", status)

    def _post_with_retries(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            try:
                response = self._client.post(path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise IngestError(
                        f"ingest API unreachable after {attempt} tries: {exc!r}"
                    ) from exc
                self._sleep(self._delay(attempt, None))
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            if last:
                raise IngestError(
                    f"ingest API still answering {response.status_code} after {attempt} tries: "
                    f"{_snippet(response)}",
                    response.status_code,
                )
            self._sleep(self._delay(attempt, response.headers.get("Retry-After")))
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self._max_backoff_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        ceiling: float = min(self._backoff_s * 2.0 ** (attempt - 1), self._max_backoff_s)
        return ceiling / 2 + self._jitter.uniform(0, ceiling / 2)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_result(response: httpx.Response) -> BatchResult:
    try:
        data = response.json()
    except ValueError:
        raise IngestError(
            f"ingest API answered {response.status_code} without JSON: {_snippet(response)}",
            response.status_code,
        ) from None
    if not isinstance(data, dict) or "accepted" not in data:
        # A 422 without our result shape is the framework refusing the request body itself.
        raise IngestError(
            f"ingest API answered {response.status_code}: {_snippet(response)}",
            response.status_code,
        )
    try:
        return BatchResult(
            accepted=[str(event_id) for event_id in data.get("accepted", [])],
            duplicates=[str(event_id) for event_id in data.get("duplicates", [])],
            rejected=[
                RejectedEvent(
                    index=int(item["index"]),
                    errors=[
                        FieldError(field=str(err.get("field", "")), reason=str(err["reason"]))
                        for err in item.get("errors", [])
                    ],
                )
                for item in data.get("rejected", [])
            ],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IngestError(
            f"unexpected ingest API result: {exc!r}: {_snippet(response)}", response.status_code
        ) from None


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
