"""What every HTTP route of the app answers the same way: the 4xx body and the bearer check."""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemDetail(BaseModel):
    """The body of every 4xx: which field, and why (``problem``)."""

    detail: list[FieldError]


def problem(status: int, field: str, reason: str) -> JSONResponse:
    """A 4xx naming the field and the reason: ``{"detail": [{"field": ..., "reason": ...}]}``."""
    return JSONResponse({"detail": [{"field": field, "reason": reason}]}, status_code=status)


def bearer_refusal(request: Request, token: str) -> JSONResponse | None:
    """A 401 unless the request carries ``Authorization: Bearer <token>``; None if it does."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), token.encode()):
        return None
    response = problem(401, "authorization", "a valid bearer token is required")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response
