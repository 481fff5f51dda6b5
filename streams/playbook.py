"""Playbooks: the scoring weights, the ladder and the rules, in a YAML file organisers can read.

A playbook is validated whole on load. Every problem is reported with the file, the line and
the field (``playbook.yaml:31: rules[2].action.template: no template 'welcom'``), and a
playbook with any problem is refused: it never half-loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.actions import Kind

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
DEFAULT_PLAYBOOK = Path(__file__).with_name("playbooks") / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionScoring(_Strict):
    weight: float = Field(description="Points on the day it happens; negative for setbacks.")
    cap: int | None = Field(
        default=None, ge=1, description="At most this many count in each window..."
    )
    per_days: int = Field(default=1, ge=1, le=3650, description="...of this many days.")


class Scoring(_Strict):
    half_life_days: float = Field(default=90.0, gt=0, le=3650)
    forget_after_days: int = Field(
        default=730, ge=1, description="Actions older than this (before the newest) drop out."
    )
    future_tolerance_hours: float = Field(
        default=24.0, ge=0, description="Events dated further after their arrival are refused."
    )
    actions: dict[Kind, ActionScoring]


class Count(_Strict):
    of: Kind | list[Kind]
    at_least: int = Field(default=1, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    within_days: int | None = Field(default=None, ge=1)

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.of,) if isinstance(self.of, str) else tuple(self.of)


class Conditions(_Strict):
    """All given conditions must hold; ``any`` holds when one of its entries does."""

    rung_in: list[Name] | None = None
    rung_at_least: Name | None = None
    score_at_least: float | None = None
    score_below: float | None = None
    consent: Literal["email", "sms"] | None = None
    area_in: list[str] | None = None
    has_rsvped: bool | None = None
    has_attended: bool | None = None
    count: list[Count] = Field(default_factory=list)
    any: list[Conditions] = Field(default_factory=list)


class Rung(_Strict):
    name: Name
    description: str = ""
    when: Conditions = Field(default_factory=Conditions)


class Trigger(_Strict):
    """Exactly one of: an action, reaching a rung, losing a rung, or no activity for N days."""

    event: Kind | None = None
    rung_reached: Name | None = None
    rung_lost: Name | None = None
    no_activity_days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of event, rung_reached, rung_lost, no_activity_days"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class SendAction(_Strict):
    send: Literal["email", "sms"]
    template: Name


class TaskAction(_Strict):
    task: Name = Field(description="The kind of follow-up, e.g. one_to_one.")
    reason: str = Field(min_length=1, max_length=500)
    priority: Literal["high", "normal", "low"] = "normal"
    due_within_hours: int = Field(ge=1, le=24 * 90)


def _action_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "send" if "send" in value else "task" if "task" in value else None
    return "send" if isinstance(value, SendAction) else "task"


RuleAction = Annotated[
    Annotated[SendAction, Tag("send")] | Annotated[TaskAction, Tag("task")],
    Discriminator(
        _action_tag,
        custom_error_type="action",
        custom_error_message="an action needs 'send' (email or sms) or 'task'",
    ),
]


class Rule(_Strict):
    name: Name
    description: str = ""
    trigger: Trigger
    when: Conditions = Field(default_factory=Conditions)
    action: RuleAction
    cooldown_days: int | Literal["once"] = Field(
        default="once", description="'once' per supporter ever, or days between firings."
    )
    holdout_percent: float = Field(
        default=0.0, ge=0, le=50, description="Share of supporters recorded but not nudged."
    )
    stale_after_hours: float = Field(
        default=72.0, gt=0, description="Not for events that arrive later than this."
    )

    @field_validator("cooldown_days")
    @classmethod
    def _cooldown(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'once' or at least 1")
        return value


class PlaybookModel(_Strict):
    version: Literal[1]
    scoring: Scoring
    ladder: list[Rung] = Field(min_length=1, max_length=30)
    rules: list[Rule] = Field(default_factory=list, max_length=200)


class PlaybookError(ValueError):
    """A playbook that does not load; ``problems`` are 'file:line: field: reason' strings."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n" + "\n".join(problems))


@dataclass(frozen=True)
class Playbook:
    """A validated playbook, with where it came from."""

    model: PlaybookModel
    source: str
    rung_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rung_names", tuple(r.name for r in self.model.ladder))


def load_playbook(
    path: Path | str | None = None, templates: Iterable[tuple[str, str]] | None = None
) -> Playbook:
    """Load and validate a playbook file (the default one when ``path`` is None).

    ``templates`` lists the (name, channel) pairs that exist (``TemplateBook.names``);
    when given, every send action must name one of them.
    """
    path = Path(path) if path is not None else DEFAULT_PLAYBOOK
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlaybookError(str(path), [f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_playbook(text, str(path), templates)


def parse_playbook(
    text: str, source: str = "<playbook>", templates: Iterable[tuple[str, str]] | None = None
) -> Playbook:
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        reason = getattr(exc, "problem", None) or str(exc)
        raise PlaybookError(source, [f"{where}: not valid YAML: {reason}"]) from None
    if node is None:
        raise PlaybookError(source, [f"{source}:1: the file is empty"])
    problems: list[tuple[tuple[str | int, ...], str]] = []
    data = _to_python(node, (), lines, problems)
    if not problems:
        try:
            model = PlaybookModel.model_validate(data)
        except ValidationError as exc:
            problems = _merged(
                [(_loc(err["loc"]), _reason(err)) for err in exc.errors(include_url=False)]
            )
        else:
            problems = _cross_check(model, set(templates) if templates is not None else None)
    if problems:
        raise PlaybookError(source, [_where(source, lines, p, r) for p, r in problems])
    return Playbook(model, source)


def _to_python(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    problems: list[tuple[tuple[str | int, ...], str]],
) -> Any:
    """Build plain data from the YAML node tree, noting each path's line; refuse repeated keys."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                lines[(*path, "(key)")] = key_node.start_mark.line + 1
                problems.append(((*path, "(key)"), "a key must be a plain name"))
                continue
            key = key_node.value
            if key in result:
                lines[(*path, key)] = key_node.start_mark.line + 1
                problems.append(((*path, key), "appears twice"))
                continue
            result[key] = _to_python(value_node, (*path, key), lines, problems)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, (*path, i), lines, problems) for i, v in enumerate(node.value)]
    try:
        return _scalar(node)
    except yaml.YAMLError as exc:  # an unknown tag such as !foo or !!python/object
        problems.append((path, f"cannot read this value: {getattr(exc, 'problem', exc)}"))
        return None


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


_UNION_FIELDS = frozenset({"action", "of", "cooldown_days"})


def _loc(loc: tuple[int | str, ...]) -> tuple[str | int, ...]:
    # Drop the tag pydantic puts after a union field, naming the member that failed ('send',
    # 'task', 'int', "literal[...]", "list[...]"), and the '[key]' of a dict key's error.
    return tuple(
        p
        for i, p in enumerate(loc)
        if not (p == "[key]" or (i and isinstance(p, str) and loc[i - 1] in _UNION_FIELDS))
    )


def _merged(
    problems: list[tuple[tuple[str | int, ...], str]],
) -> list[tuple[tuple[str | int, ...], str]]:
    """One problem per field: the complaints of a union's members joined with 'or', and
    none about a union field when a member got further into it (``of[1]``, not ``of``)."""
    by_path: dict[tuple[str | int, ...], list[str]] = {}
    for path, reason in problems:
        reasons = by_path.setdefault(path, [])
        if reason not in reasons:
            reasons.append(reason)
    return [
        (path, "; or ".join(reasons))
        for path, reasons in by_path.items()
        if not (
            path
            and path[-1] in _UNION_FIELDS
            and any(len(p) > len(path) and p[: len(path)] == path for p in by_path)
        )
    ]


def _reason(err: Any) -> str:
    message = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "not a known field"
    if err["type"] == "literal_error" and "Kind" not in message:
        return message.replace("Input should be", "should be")
    return message.replace("Value error, ", "")


def _cross_check(
    model: PlaybookModel, templates: set[tuple[str, str]] | None
) -> list[tuple[tuple[str | int, ...], str]]:
    """What a schema cannot say: names unique, rungs referred to exist, templates exist."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    rungs: list[str] = []
    for i, rung in enumerate(model.ladder):
        if rung.name in rungs:
            problems.append((("ladder", i, "name"), f"rung {rung.name!r} is defined twice"))
        problems += _rung_refs(rung.when, ("ladder", i, "when"), rungs, "an earlier rung")
        rungs.append(rung.name)
    if model.ladder[0].when != Conditions():
        problems.append((("ladder", 0, "when"), "the first rung is everyone's: give no 'when'"))
    names: set[str] = set()
    for i, rule in enumerate(model.rules):
        where: tuple[str | int, ...] = ("rules", i)
        if rule.name in names:
            problems.append(((*where, "name"), f"rule {rule.name!r} is defined twice"))
        names.add(rule.name)
        problems += _rung_refs(rule.when, (*where, "when"), rungs, "a rung of the ladder")
        for field in ("rung_reached", "rung_lost"):
            value = getattr(rule.trigger, field)
            if value is not None and value not in rungs:
                problems.append(((*where, "trigger", field), _unknown_rung(value, rungs)))
        action = rule.action
        if (
            isinstance(action, SendAction)
            and templates is not None
            and (action.template, action.send) not in templates
        ):
            known = sorted(n for n, c in templates if c == action.send)
            problems.append(
                (
                    (*where, "action", "template"),
                    f"no {action.send} template {action.template!r} (known: {', '.join(known)})",
                )
            )
    return problems


def _rung_refs(
    when: Conditions, where: tuple[str | int, ...], rungs: list[str], expected: str
) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if when.rung_at_least is not None and when.rung_at_least not in rungs:
        problems.append(((*where, "rung_at_least"), _unknown_rung(when.rung_at_least, rungs)))
    for j, name in enumerate(when.rung_in or []):
        if name not in rungs:
            problems.append(((*where, "rung_in", j), _unknown_rung(name, rungs)))
    for j, sub in enumerate(when.any):
        problems += _rung_refs(sub, (*where, "any", j), rungs, expected)
    return problems


def _unknown_rung(name: str, rungs: list[str]) -> str:
    return f"no rung {name!r} before this point (known: {', '.join(rungs) or 'none'})"


def _where(
    source: str, lines: dict[tuple[str | int, ...], int], path: tuple[str | int, ...], reason: str
) -> str:
    """'file:line: field.path: reason', the line being the deepest part of the path known."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            line = lines[path[:cut]]
            break
    else:
        line = 1
    field = "".join(
        f"[{p}]" if isinstance(p, int) else f'["{p}"]' if "." in p else f".{p}" for p in path
    ).lstrip(".")
    return f"{source}:{line}: {field or '(top)'}: {reason}"
