"""Organisers' passwords: hashed with argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile), never stored or logged in clear. Verifying a sign-in for an unknown
organiser, or one without a password, checks against a dummy hash, so it takes as long and
answers the same as a wrong password."""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 10
"""Characters a password needs at least."""
MAX_LENGTH = 1024
"""Characters a password may have at most (argon2 hashes anything; this bounds the work)."""

_HASHER = PasswordHasher()  # argon2id, time_cost 3, memory 64 MiB, parallelism 4


def check_password(password: str) -> None:
    """ValueError naming the field when the password is too short or too long."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"password: at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"password: at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """An argon2id hash (``$argon2id$...``) of a password that passes ``check_password``."""
    check_password(password)
    return _HASHER.hash(password)


@cache
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(24))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``; with no hash (unknown organiser, none
    set), the same work against a dummy hash, and False."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored_hash or _dummy_hash(), password) and bool(stored_hash)
    except (VerificationError, InvalidHashError):
        return False
