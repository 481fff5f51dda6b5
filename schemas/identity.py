"""Supporter identity: normalised email or E.164 phone, the random id a person is given, and
the keyed hashes that link the two."""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from typing import Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email


def normalise_email(raw: str) -> str:
    """Lower-cased, syntax-checked email (no DNS lookup). Raises ValueError with a reason."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.normalized.lower()


def normalise_phone(raw: str, region: str = "GB") -> str:
    """E.164 form of a phone number (UK by default). Raises ValueError with a reason."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def new_supporter_id(rng: random.Random | None = None) -> str:
    """A new supporter's id: random, given at first sight, so nothing about the person (not
    even their email with every key we hold) gives it back. Their email and phone find it
    through identity links (``contact_identity``); erasing the links makes it unlinkable.

    ``rng`` is for simulations and benchmarks that must repeat; real ids come from
    ``secrets``.
    """
    bits = rng.getrandbits(128) if rng is not None else secrets.randbits(128)
    return f"sup_{bits:032x}"


def legacy_supporter_id(key: str, email: str | None, phone: str | None) -> str:
    """The id supporters were given before ids became random: HMAC-SHA256 of the normalised
    email, else of the E.164 phone. Read only to find a supporter stored before identity links
    existed (migration 0002), who has no link to be found by; never given to anyone new.

    The inputs must already be normalised.
    """
    if email:
        material = f"email:{email}"
    elif phone:
        material = f"phone:{phone}"
    else:
        raise ValueError("an email or a phone is needed to identify a supporter")
    digest = hmac.new(key.encode(), material.encode(), hashlib.sha256).hexdigest()
    return f"sup_{digest[:32]}"


def contact_identity(key: str, kind: Literal["email", "phone"], value: str) -> str:
    """What the identity-link table stores for a normalised email or E.164 phone:
    ``"email:"`` or ``"phone:"`` and a keyed HMAC-SHA256, never the address itself.

    The HMAC input is set apart from the legacy id's (``link:`` prefix), so a link does not
    give away the id an address was given before ids became random.
    """
    digest = hmac.new(key.encode(), f"link:{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}:{digest}"


def opt_out_token(key: str, nudge_id: str) -> str:
    """The token of a nudge's unsubscribe link: without the key, nobody can forge one."""
    return hmac.new(key.encode(), f"opt-out:{nudge_id}".encode(), hashlib.sha256).hexdigest()[:32]


def erasure_subject(key: str, supporter_id: str) -> str:
    """What the erasure audit keeps of the supporter id erased: a keyed HMAC-SHA256, so a
    repeated request for the same person is recognised, and the id is not kept in clear."""
    digest = hmac.new(key.encode(), f"erasure:{supporter_id}".encode(), hashlib.sha256)
    return f"erased:{digest.hexdigest()}"
