"""The organisers' sign-in without I/O: the rate limit on a clock the test moves, argon2id with
the library's recommended parameters, the guide for every kind of task the default playbook
creates, and the small rules of the pages (where to go after signing in, a training's day)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from argon2 import PasswordHasher, Type
from argon2.profiles import RFC_9106_LOW_MEMORY

from consumers.organising import passwords
from consumers.organising.guides import GENERAL, GUIDES, guide_for
from consumers.organising.pages import (
    ACTION_LABELS,
    COMMITMENT_LABELS,
    OUTCOME_LABELS,
    _phone,
    _safe_next,
    _training_time,
)
from consumers.organising.rules import COMMITMENTS, OUTCOMES
from consumers.organising.throttle import MAX_FAILURES, WINDOW, SignInThrottle, keys_for
from consumers.organising.web import field_and_reason
from streams.playbook import DEFAULT_PLAYBOOK, TaskAction, load_playbook

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


# --- the rate limit ----------------------------------------------------------------------------


def test_five_failures_in_fifteen_minutes_lock_a_key_until_the_oldest_leaves_the_window() -> None:
    throttle = SignInThrottle()
    keys = keys_for("asha", "10.0.0.1")
    for minute in range(MAX_FAILURES):
        assert throttle.retry_after(keys, T0 + timedelta(minutes=minute)) is None
        throttle.failed(keys, T0 + timedelta(minutes=minute))

    at = T0 + timedelta(minutes=5)
    assert throttle.retry_after(keys, at) == (WINDOW - timedelta(minutes=5)).total_seconds()
    assert throttle.retry_after(keys, T0 + WINDOW - timedelta(seconds=1)) == 1
    assert throttle.retry_after(keys, T0 + WINDOW) is None  # the first failure has left


@pytest.mark.parametrize(
    ("first", "second", "locked"),
    [
        (("asha", "10.0.0.1"), ("asha", "10.0.0.2"), True),  # one id from many addresses
        (("asha", "10.0.0.1"), ("ben", "10.0.0.1"), True),  # many ids from one address
        (("asha", "10.0.0.1"), ("ben", "10.0.0.2"), False),
    ],
    ids=["same id", "same address", "neither"],
)
def test_the_limit_counts_per_organiser_id_and_per_client_address(
    first: tuple[str, str], second: tuple[str, str], locked: bool
) -> None:
    throttle = SignInThrottle()
    for _ in range(MAX_FAILURES):
        throttle.failed(keys_for(*first), T0)

    assert (throttle.retry_after(keys_for(*second), T0) is not None) is locked


def test_an_id_is_counted_as_typed_case_and_spaces_aside() -> None:
    assert keys_for(" Asha ", None) == ("id:asha", "ip:unknown")


def test_signing_in_forgets_the_ids_failures_but_not_the_addresses() -> None:
    throttle = SignInThrottle()
    for _ in range(MAX_FAILURES - 1):
        throttle.failed(keys_for("asha", "10.0.0.1"), T0)
    throttle.succeeded("id:asha")
    throttle.failed(keys_for("asha", "10.0.0.9"), T0)

    assert throttle.retry_after(["id:asha"], T0) is None
    assert throttle.retry_after(["ip:10.0.0.1"], T0) is None  # 4 failures: not yet
    throttle.failed(keys_for("ben", "10.0.0.1"), T0)
    assert throttle.retry_after(["ip:10.0.0.1"], T0) is not None


def test_the_throttle_forgets_old_keys_when_it_is_full() -> None:
    throttle = SignInThrottle(max_keys=3)
    for n in range(3):
        throttle.failed([f"id:{n}"], T0)
    throttle.failed(["id:new"], T0 + WINDOW)

    assert set(throttle._failures) == {"id:new"}


# --- passwords ----------------------------------------------------------------------------------


def test_passwords_are_hashed_with_argon2id_and_verified() -> None:
    hashed = passwords.hash_password("correct horse battery")

    assert hashed.startswith("$argon2id$")
    assert "correct horse battery" not in hashed
    assert passwords.verify_password(hashed, "correct horse battery")
    assert not passwords.verify_password(hashed, "Correct horse battery")


def test_the_hasher_uses_argon2_cffis_recommended_parameters() -> None:
    hasher = passwords._HASHER
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (
        RFC_9106_LOW_MEMORY.time_cost,
        RFC_9106_LOW_MEMORY.memory_cost,
        RFC_9106_LOW_MEMORY.parallelism,
    )
    assert PasswordHasher().type is Type.ID


@pytest.mark.parametrize(
    ("password", "error"),
    [("123456789", "password: at least 10 characters"), ("x" * 1025, "password: at most 1024")],
)
def test_a_password_too_short_or_too_long_is_refused(password: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        passwords.hash_password(password)


@pytest.mark.parametrize("stored", [None, "", "not a hash"])
def test_no_hash_never_verifies(stored: str | None) -> None:
    assert not passwords.verify_password(stored, "correct horse battery")


# --- the pages' small rules ---------------------------------------------------------------------


def test_every_task_kind_of_the_default_playbook_has_its_own_call_guide() -> None:
    playbook = load_playbook(DEFAULT_PLAYBOOK)
    actions = [rule.action for rule in playbook.model.rules]
    kinds = {a.task for a in actions if isinstance(a, TaskAction)}

    assert kinds and kinds <= set(GUIDES)
    assert guide_for("a_kind_nobody_wrote") is GENERAL
    assert all(len(guide.steps) == 3 for guide in GUIDES.values())


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/tasks/abc%3Adef", "/tasks/abc%3Adef"),
        ("/queue?national=1", "/queue?national=1"),
        ("//evil.example/", None),
        ("https://evil.example/", None),
        ("/\\evil.example", None),
        ("", None),
        (None, None),
    ],
)
def test_after_signing_in_only_a_page_of_this_site(target: str | None, safe: str | None) -> None:
    assert _safe_next(target) == safe


def test_a_trainings_day_is_noon_there_or_now_if_noon_is_still_to_come() -> None:
    morning = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert _training_time("", morning, LONDON) == morning
    assert _training_time("2026-03-02", morning, LONDON) == morning
    assert _training_time("2026-03-01", morning, LONDON) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="date: in the future"):
        _training_time("2026-03-03", morning, LONDON)
    with pytest.raises(ValueError, match="date: a day as YYYY-MM-DD"):
        _training_time("tomorrow", morning, LONDON)


def test_errors_name_their_field() -> None:
    assert field_and_reason(ValueError("note: at most 280 characters")) == (
        "note",
        "at most 280 characters",
    )
    assert field_and_reason(ValueError("something odd")) == ("body", "something odd")


@pytest.mark.parametrize(
    ("e164", "shown"),
    [("+447911123456", "07911 123456"), ("+33612345678", "+33 6 12 34 56 78"), ("junk", "junk")],
)
def test_a_phone_is_shown_as_people_dial_it(e164: str, shown: str) -> None:
    assert _phone(e164) == shown


def test_every_outcome_and_commitment_has_a_button() -> None:
    assert list(OUTCOME_LABELS) == list(OUTCOMES)
    assert set(COMMITMENT_LABELS) == set(COMMITMENTS)
    assert {f"commitment.{c}" for c in COMMITMENTS} <= set(ACTION_LABELS)
