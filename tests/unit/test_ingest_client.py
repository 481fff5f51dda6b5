"""IngestClient against a mock HTTP transport: retries, refusals and partial results."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from producers.client import BatchResult, FieldError, IngestClient, IngestError, RejectedEvent

EVENTS = [
    {"type": "supporter.signup", "event_id": "00000000-0000-4000-8000-000000000001"},
    {"type": "supporter.signup", "event_id": "00000000-0000-4000-8000-000000000002"},
]
ACCEPTED = {"accepted": [e["event_id"] for e in EVENTS], "duplicates": [], "rejected": []}


class Recorder:
    """A scripted API: answers each request with the next response (or raises an error)."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_client(
    api: Callable[[httpx.Request], httpx.Response], sleeps: list[float], **kwargs: int
) -> IngestClient:
    return IngestClient(
        "http://ingest.test/base/",
        "s3cret-token",
        timeout_s=5,
        transport=httpx.MockTransport(api),
        sleep=sleeps.append,
        **kwargs,
    )


def test_posts_the_batch_with_the_token_and_parses_the_result() -> None:
    api, sleeps = Recorder(httpx.Response(202, json=ACCEPTED)), list[float]()
    with make_client(api, sleeps) as client:
        result = client.post_batch(EVENTS)
    assert result == BatchResult(accepted=[e["event_id"] for e in EVENTS])
    (request,) = api.requests
    assert request.method == "POST"
    assert request.url == "http://ingest.test/base/v1/events/batch"
    assert request.headers["Authorization"] == "Bearer s3cret-token"
    assert json.loads(request.content) == {"events": EVENTS}
    assert sleeps == []


def test_retries_503_then_succeeds() -> None:
    api = Recorder(
        httpx.Response(503, text="busy"),
        httpx.Response(503, text="busy"),
        httpx.Response(202, json=ACCEPTED),
    )
    sleeps: list[float] = []
    with make_client(api, sleeps) as client:
        result = client.post_batch(EVENTS)
    assert len(result.accepted) == 2
    assert len(api.requests) == 3
    assert len(sleeps) == 2
    assert all(0 < s <= 10 for s in sleeps)
    assert all(r.content == api.requests[0].content for r in api.requests)  # same event ids


def test_retries_connection_errors_and_429_honouring_retry_after() -> None:
    api = Recorder(
        httpx.ConnectError("connection refused"),
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(202, json=ACCEPTED),
    )
    sleeps: list[float] = []
    with make_client(api, sleeps) as client:
        client.post_batch(EVENTS)
    assert len(api.requests) == 3
    assert sleeps[1] == 3.0


def test_gives_up_after_max_attempts() -> None:
    api = Recorder(*[httpx.Response(502, text="bad gateway") for _ in range(6)])
    sleeps: list[float] = []
    with make_client(api, sleeps) as client, pytest.raises(IngestError, match="502") as info:
        client.post_batch(EVENTS)
    assert info.value.status == 502
    assert len(api.requests) == 6
    assert len(sleeps) == 5


def test_gives_up_when_unreachable() -> None:
    api = Recorder(*[httpx.ConnectError("refused") for _ in range(3)])
    with (
        make_client(api, [], max_attempts=3) as client,
        pytest.raises(IngestError, match="unreachable after 3 tries"),
    ):
        client.post_batch(EVENTS)


def test_does_not_retry_401_and_does_not_leak_the_token() -> None:
    api = Recorder(httpx.Response(401, json={"detail": [{"field": "auth", "reason": "bad"}]}))
    sleeps: list[float] = []
    with make_client(api, sleeps) as client, pytest.raises(IngestError, match="token") as info:
        client.post_batch(EVENTS)
    assert info.value.status == 401
    assert "s3cret-token" not in str(info.value)
    assert "s3cret-token" not in repr(client)
    assert len(api.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize(("status", "match"), [(413, "too big"), (400, "400"), (404, "404")])
def test_other_client_errors_raise_without_retry(status: int, match: str) -> None:
    api = Recorder(httpx.Response(status, json={"detail": [{"field": "body", "reason": "no"}]}))
    with make_client(api, []) as client, pytest.raises(IngestError, match=match) as info:
        client.post_batch(EVENTS)
    assert info.value.status == status
    assert len(api.requests) == 1


def test_422_is_a_partial_result() -> None:
    body = {
        "accepted": [EVENTS[0]["event_id"]],
        "duplicates": ["00000000-0000-4000-8000-000000000009"],
        "rejected": [
            {
                "index": 1,
                "errors": [
                    {"field": "events[1].email", "reason": "An email address must have an @-sign."},
                    {"field": "events[1].postcode", "reason": "not a UK postcode"},
                ],
            }
        ],
    }
    api = Recorder(httpx.Response(422, json=body))
    with make_client(api, []) as client:
        result = client.post_batch(EVENTS)
    assert result.accepted == [EVENTS[0]["event_id"]]
    assert result.duplicates == ["00000000-0000-4000-8000-000000000009"]
    assert result.rejected == [
        RejectedEvent(
            index=1,
            errors=[
                FieldError("events[1].email", "An email address must have an @-sign."),
                FieldError("events[1].postcode", "not a UK postcode"),
            ],
        )
    ]
    assert len(api.requests) == 1


def test_422_without_a_result_shape_is_an_error() -> None:
    """The framework refusing the body itself (e.g. no "events" list) is not a partial result."""
    api = Recorder(httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "missing"}]}))
    with make_client(api, []) as client, pytest.raises(IngestError, match="422"):
        client.post_batch(EVENTS)


def test_success_without_json_is_an_error() -> None:
    api = Recorder(httpx.Response(202, text="<html>proxy</html>"))
    with make_client(api, []) as client, pytest.raises(IngestError, match="without JSON"):
        client.post_batch(EVENTS)
