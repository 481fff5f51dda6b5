"""The SMS keyword rules (pure): which inbound texts are STOP, START or HELP; the HELP answer."""

from __future__ import annotations

from typing import Literal

OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
Keyword = Literal["stop", "start", "help"]
HELP_TEXT = (
    "{org}: texts about local meetings and campaigns. Reply STOP to opt out, START to opt back in."
)


def sms_keyword(body: str) -> tuple[Keyword, str] | None:
    """The keyword an inbound text is, with its word in capitals; None for anything else.

    The whole body, stripped of surrounding whitespace, must be exactly one keyword in any
    case: "Stop" is an opt-out, "STOP please" and "STOP." are not.
    """
    word = body.strip().upper()
    if word in OPT_OUT_WORDS:
        return "stop", word
    if word in OPT_IN_WORDS:
        return "start", word
    if word in HELP_WORDS:
        return "help", word
    return None
