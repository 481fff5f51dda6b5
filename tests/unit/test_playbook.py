"""The playbook validator: each problem named by file, line and field; a bad file never loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.rendering import TemplateBook
from schemas.actions import KINDS
from streams.playbook import (
    DEFAULT_PLAYBOOK,
    Playbook,
    PlaybookError,
    SendAction,
    TaskAction,
    load_playbook,
    parse_playbook,
)

MINIMAL_PLAYBOOK = DEFAULT_PLAYBOOK.with_name("minimal.yaml")
DEFAULT = DEFAULT_PLAYBOOK.read_text()
SOURCE = "mine.yaml"


@pytest.fixture(scope="module")
def templates() -> list[tuple[str, str]]:
    return TemplateBook().names


def edit(old: str, new: str, text: str = DEFAULT) -> tuple[str, int]:
    """``text`` with ``old`` (which must occur once) replaced, and the line ``new`` starts on."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    start = text.index(old)
    return text.replace(old, new), text.count("\n", 0, start) + 1


def problems_of(text: str, templates: list[tuple[str, str]] | None = None) -> list[str]:
    with pytest.raises(PlaybookError) as raised:
        parse_playbook(text, SOURCE, templates)
    error = raised.value
    assert str(error).startswith(f"{SOURCE}: {len(error.problems)} problem(s)\n")
    return error.problems


# --- the shipped playbooks --------------------------------------------------------------------


@pytest.mark.parametrize("path", [DEFAULT_PLAYBOOK, MINIMAL_PLAYBOOK], ids=lambda p: p.name)
def test_the_shipped_playbooks_load_with_the_real_templates(
    path: Path, templates: list[tuple[str, str]]
) -> None:
    playbook = load_playbook(path, templates)

    assert isinstance(playbook, Playbook)
    assert playbook.source == str(path)
    assert playbook.rung_names[0] == "supporter"
    for rule in playbook.model.rules:
        if isinstance(rule.action, SendAction):
            assert (rule.action.template, rule.action.send) in templates


def test_the_default_playbook_is_what_the_rules_tests_assume() -> None:
    model = load_playbook().model

    assert load_playbook().source == str(DEFAULT_PLAYBOOK)
    assert [r.name for r in model.ladder] == [
        "supporter",
        "signer",
        "attendee",
        "regular",
        "leader_candidate",
        "leader",
    ]
    assert [r.name for r in model.rules] == [
        "welcome",
        "first-meeting-thanks",
        "first-meeting-follow-up",
        "one-to-one-new-regular",
        "leader-conversation",
        "invite-signer",
        "sorry-we-missed-you",
        "re-engage-lapsing-regular",
        "check-in-lapsing-regular",
    ]
    rules = {r.name: r for r in model.rules}
    follow_up = rules["first-meeting-follow-up"].action
    assert isinstance(follow_up, TaskAction)
    assert (follow_up.priority, follow_up.due_within_hours) == ("high", 48)
    assert rules["invite-signer"].holdout_percent == 10
    assert rules["re-engage-lapsing-regular"].trigger.no_activity_days == 60
    assert model.scoring.half_life_days == 90
    assert set(model.scoring.actions) <= set(KINDS)


# --- one problem of each kind: the line, the field path and the reason ------------------------

# (name, old text, new text, field path, words in the reason[, lines after the edit's first])
ERRORS: list[tuple[str, str, str, str, str] | tuple[str, str, str, str, str, int]] = [
    (
        "unknown field",
        "  half_life_days: 90 ",
        "  half_lif_days: 90 ",
        "scoring.half_lif_days",
        "not a known field",
    ),
    (
        "wrong type",
        "half_life_days: 90 ",
        "half_life_days: ninety ",
        "scoring.half_life_days",
        "valid number",
    ),
    (
        "out of range",
        "  forget_after_days: 730",
        "  forget_after_days: 0",
        "scoring.forget_after_days",
        "greater than or equal to 1",
    ),
    (
        "unknown field under a dotted key",
        "supporter.brought: {weight: 8,   cap: 3, per_days: 7}",
        "supporter.brought: {weight: 8,   cap: 3, per_days: 7, every: 2}",
        'scoring.actions["supporter.brought"].every',
        "not a known field",
    ),
    (
        "unknown action kind scored",
        "    supporter.brought: {weight: 8",
        "    supporter.bought: {weight: 8",
        'scoring.actions["supporter.bought"]',
        "should be 'supporter.signup'",
    ),
    (
        "unknown action kind in a trigger",
        "trigger: {event: event.no_show}",
        "trigger: {event: event.noshow}",
        "rules[6].trigger.event",
        "should be 'supporter.signup'",
    ),
    (
        "unknown action kind counted",
        "when: {count: [{of: petition.signed}]}",
        "when: {count: [{of: petition.sigend}]}",
        "ladder[1].when.count[0].of",
        "should be 'supporter.signup'",
    ),
    (
        "unknown action kind in a list counted",
        "when: {count: [{of: [event.attended, event.hosted]}]}",
        "when: {count: [{of: [event.attended, event.hostd]}]}",
        "ladder[2].when.count[0].of[1]",
        "should be 'supporter.signup'",
    ),
    (
        "action neither send nor task",
        "action: {send: sms, template: invite_next_meeting}",
        "action: {text: sms, template: invite_next_meeting}",
        "rules[5].action",
        "an action needs 'send' (email or sms) or 'task'",
    ),
    (
        "unknown channel",
        "action: {send: sms, template: invite_next_meeting}",
        "action: {send: fax, template: invite_next_meeting}",
        "rules[5].action.send",
        "should be 'email' or 'sms'",
    ),
    (
        "unknown task priority",
        "      priority: high\n      due_within_hours: 48",
        "      priority: urgent\n      due_within_hours: 48",
        "rules[2].action.priority",
        "should be 'high', 'normal' or 'low'",
    ),
    (
        "task without a reason",
        '      reason: "Came to a first meeting: call to thank them and ask what brought them."\n',
        "",
        "rules[2].action.reason",
        "Field required",
        -2,  # not there: the line of the action it is missing from
    ),
    (
        "repeated key",
        "    cooldown_days: 14\n",
        "    cooldown_days: 14\n    cooldown_days: 15\n",
        "rules[6].cooldown_days",
        "appears twice",
        1,  # the second one
    ),
    (
        "trigger with no kind",
        "trigger: {event: event.no_show}",
        "trigger: {}",
        "rules[6].trigger",
        "give exactly one of event, rung_reached, rung_lost, no_activity_days",
    ),
    (
        "trigger with two kinds",
        "trigger: {event: event.no_show}",
        "trigger: {event: event.no_show, no_activity_days: 30}",
        "rules[6].trigger",
        "(got event, no_activity_days)",
    ),
    (
        "unknown rung in rung_in",
        "when: {rung_in: [regular, leader_candidate]}\n    action: {send",
        "when: {rung_in: [regular, leaders]}\n    action: {send",
        "rules[7].when.rung_in[1]",
        "no rung 'leaders' before this point (known: supporter, signer, attendee, regular, "
        "leader_candidate, leader)",
    ),
    (
        "unknown rung reached",
        "trigger: {rung_reached: leader_candidate}",
        "trigger: {rung_reached: leaders}",
        "rules[4].trigger.rung_reached",
        "no rung 'leaders'",
    ),
    (
        "unknown rung lost",
        "trigger: {rung_reached: leader_candidate}",
        "trigger: {rung_lost: leaders}",
        "rules[4].trigger.rung_lost",
        "no rung 'leaders'",
    ),
    (
        "unknown rung at least, in a rule",
        "when: {has_attended: false, has_rsvped: false}",
        "when: {has_attended: false, has_rsvped: false, rung_at_least: signers}",
        "rules[5].when.rung_at_least",
        "no rung 'signers'",
    ),
    (
        "a later rung at least, in the ladder",
        "rung_at_least: regular",
        "rung_at_least: leader_candidate",
        "ladder[4].when.rung_at_least",
        "no rung 'leader_candidate' before this point (known: supporter, signer, attendee, "
        "regular)",
    ),
    (
        "unknown rung inside any",
        "        - count: [{of: event.hosted, within_days: 180}]",
        "        - {rung_in: [nobody]}",
        "ladder[4].when.any[1].rung_in[0]",
        "no rung 'nobody'",
    ),
    (
        "unknown template",
        "template: sorry_we_missed_you",
        "template: sorry",
        "rules[6].action.template",
        "no email template 'sorry' (known: invite_next_meeting, sorry_we_missed_you, "
        "thanks_first_meeting, we_miss_you, welcome)",
    ),
    (
        "a rung defined twice",
        "  - name: attendee\n",
        "  - name: signer\n",
        "ladder[2].name",
        "rung 'signer' is defined twice",
    ),
    (
        "a rule defined twice",
        "  - name: sorry-we-missed-you",
        "  - name: welcome",
        "rules[6].name",
        "rule 'welcome' is defined twice",
    ),
    (
        "the first rung with a when",
        "    description: Joined, or did anything at all.\n",
        "    description: Joined, or did anything at all.\n    when: {score_at_least: 1}\n",
        "ladder[0].when",
        "the first rung is everyone's: give no 'when'",
        1,
    ),
    (
        "a name that is not a name",
        "  - name: sorry-we-missed-you",
        "  - name: Sorry We Missed You",
        "rules[6].name",
        "should match pattern",
    ),
    (
        "cooldown zero",
        "cooldown_days: 14",
        "cooldown_days: 0",
        "rules[6].cooldown_days",
        "must be 'once' or at least 1",
    ),
    (
        "cooldown neither days nor once",
        "cooldown_days: 14",
        "cooldown_days: twice",
        "rules[6].cooldown_days",
        "valid integer, unable to parse string as an integer; or should be 'once'",
    ),
    (
        "hold-out too large",
        "holdout_percent: 10",
        "holdout_percent: 60",
        "rules[5].holdout_percent",
        "less than or equal to 50",
    ),
    ("unknown version", "version: 1", "version: 2", "version", "should be 1"),
    (
        "unreadable tag",
        "    cooldown_days: 14\n",
        "    cooldown_days: !days 14\n",
        "rules[6].cooldown_days",
        "cannot read this value: could not determine a constructor for the tag '!days'",
    ),
    (
        "a key that is not a name",
        "    cooldown_days: 14\n",
        "    ? [cooldown_days]\n    : 14\n",
        "rules[6].(key)",
        "a key must be a plain name",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "field", "reason", "delta"),
    [pytest.param(*case[1:5], (case[5:] or (0,))[0], id=case[0]) for case in ERRORS],
)
def test_each_problem_names_its_line_and_field(
    old: str, new: str, field: str, reason: str, delta: int, templates: list[tuple[str, str]]
) -> None:
    text, line = edit(old, new)

    problems = problems_of(text, templates)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SOURCE}:{line + delta}: {field}: "), problems[0]
    assert reason in problems[0]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", 1, "the file is empty"),
        ("# only a comment\n\n", 1, "the file is empty"),
        ("version: 1\nscoring: [\n", 3, "not valid YAML: expected the node content"),
        (
            edit("  forget_after_days: 730", " forget_after_days: 730")[0],
            8,
            "not valid YAML: expected <block end>",
        ),
        (
            edit("  forget_after_days: 730", "\tforget_after_days: 730")[0],
            8,
            "not valid YAML: found character '\\t' that cannot start any token",
        ),
        ("version: 1\n---\nversion: 1\n", 2, "not valid YAML: but found another document"),
    ],
    ids=["empty", "comment-only", "unclosed", "indentation", "tab", "two-documents"],
)
def test_a_file_that_is_not_a_yaml_mapping_is_refused_with_its_line(
    text: str, line: int, reason: str
) -> None:
    problems = problems_of(text)

    assert len(problems) == 1
    assert problems[0].startswith(f"{SOURCE}:{line}: {reason}"), problems[0]


def test_a_top_level_list_is_refused() -> None:
    assert problems_of("- version: 1\n") == [
        f"{SOURCE}:1: (top): Input should be a valid dictionary or instance of PlaybookModel"
    ]


def test_missing_sections_are_named_at_the_top() -> None:
    assert problems_of("version: 1\n") == [
        f"{SOURCE}:1: scoring: Field required",
        f"{SOURCE}:1: ladder: Field required",
    ]


def test_a_template_must_exist_for_its_channel() -> None:
    text = MINIMAL_PLAYBOOK.read_text()
    only_email = [("welcome", "email"), ("thanks_first_meeting", "email"), ("welcome", "sms")]

    problems = problems_of(text, only_email)

    _, line = edit("action: {send: sms, template: invite_next_meeting}", "", text)
    assert problems == [
        f"{SOURCE}:{line}: rules[3].action.template: no sms template 'invite_next_meeting' "
        "(known: welcome)"
    ]


def test_templates_are_only_checked_when_given() -> None:
    text, _ = edit("template: sorry_we_missed_you", "template: sorry")

    assert parse_playbook(text).model.rules[6].action == SendAction(send="email", template="sorry")


def test_every_problem_is_reported_at_once(templates: list[tuple[str, str]]) -> None:
    text, rung_line = edit(
        "trigger: {rung_reached: leader_candidate}", "trigger: {rung_reached: x}"
    )
    text, template_line = edit("template: we_miss_you", "template: we_missed_you", text)
    text, rule_line = edit("  - name: sorry-we-missed-you", "  - name: invite-signer", text)

    problems = problems_of(text, templates)

    assert [p.split(": ")[0:2] for p in problems] == [
        [f"{SOURCE}:{rung_line}", "rules[4].trigger.rung_reached"],
        [f"{SOURCE}:{rule_line}", "rules[6].name"],
        [f"{SOURCE}:{template_line}", "rules[7].action.template"],
    ]


def test_schema_problems_are_reported_before_cross_checks(templates: list[tuple[str, str]]) -> None:
    """A playbook the schema refuses is not cross-checked (rungs, templates) at all."""
    text, line = edit("half_life_days: 90 ", "half_life_days: -1 ")
    text, _ = edit("template: we_miss_you", "template: nothing", text)

    problems = problems_of(text, templates)

    assert problems == [f"{SOURCE}:{line}: scoring.half_life_days: Input should be greater than 0"]


def test_a_repeated_key_stops_validation_so_nothing_half_loads() -> None:
    """Neither value of a repeated key is quietly kept: the file is refused as it is."""
    text, line = edit("    cooldown_days: 14\n", "    cooldown_days: 14\n    cooldown_days: 1\n")
    text, _ = edit("half_life_days: 90 ", "half_life_days: -1 ", text)

    assert problems_of(text) == [f"{SOURCE}:{line + 1}: rules[6].cooldown_days: appears twice"]


def test_load_playbook_reports_the_path_and_refuses_a_bad_file(
    tmp_path: Path, templates: list[tuple[str, str]]
) -> None:
    path = tmp_path / "playbook.yaml"
    text, line = edit("rung_at_least: regular", "rung_at_least: nobody")
    path.write_text(text)

    with pytest.raises(PlaybookError) as raised:
        load_playbook(path, templates)

    assert raised.value.problems == [
        f"{path}:{line}: ladder[4].when.rung_at_least: no rung 'nobody' before this point "
        "(known: supporter, signer, attendee, regular)"
    ]


def test_load_playbook_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(PlaybookError) as raised:
        load_playbook(missing)

    assert raised.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_a_good_copy_loads_from_anywhere(tmp_path: Path, templates: list[tuple[str, str]]) -> None:
    path = tmp_path / "ours.yaml"
    path.write_text(edit("half_life_days: 90 ", "half_life_days: 30 ")[0])

    playbook = load_playbook(path, templates)

    assert playbook.model.scoring.half_life_days == 30
    assert playbook.source == str(path)
