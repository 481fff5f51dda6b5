"""Nudge templates: loaded and checked once at start-up, rendered into OutgoingMessages.

A template is a file ``<name>.<channel>.j2`` in ``consumers/templates/``:

- ``<name>.email.j2`` defines two blocks: ``subject`` (one line once whitespace is collapsed) and
  ``body`` (plain text; paragraphs separated by blank lines). The HTML part is made from the
  body by ``_layout.html.j2`` (autoescaped, links made clickable), so there is one text to write.
- ``<name>.sms.j2`` is the whole SMS; all whitespace, line breaks included, collapses to single
  spaces, so wrap lines freely. Keep it to GSM-7 characters (straight quotes, no emoji): one
  other character makes the whole message UCS-2, at 67 characters a segment instead of 153.

Variables: ``first_name`` and ``area`` (empty strings when unknown: write
``{{ first_name or "there" }}``), ``org_name``, ``opt_out_url``, ``sms_opt_out`` (an SMS ends with
it: "Reply STOP to opt out", or a short opt-out link when the sender is a one-way alphanumeric
ID that cannot receive STOP), and whatever the nudge's context
carries. Context keys are optional: use ``{{ key | default("...", true) }}`` or
``{% if key is defined %}``; at load every template is rendered with and without them, so one
that needs more than the four guaranteed names fails then (undefined names are errors).

Each rendered message must name the organisation and end with its opt-out: an email body with
the unsubscribe link, an SMS with "Reply STOP to opt out" (PECR regulation 23).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from consumers.messages import CHANNELS, OutgoingMessage

TEMPLATE_DIR = Path(__file__).parent / "templates"
LAYOUT = "_layout.html.j2"
SMS_OPT_OUT = "Reply STOP to opt out"
MAX_SMS_SEGMENTS = 3

GUARANTEED = ("first_name", "area", "org_name", "opt_out_url", "sms_opt_out")
"""The variables every template may rely on."""
SAMPLE_CONTEXT: dict[str, str] = {
    "first_name": "Siân",
    "area": "Tower Hamlets",
    "meeting_title": "the Bethnal Green housing meeting",
    "meeting_when": "Tuesday 14 October, 7pm",
    "meeting_url": "https://example.org/meetings/bethnal-green-housing",
}
"""Representative values for the load-time check, including the optional keys templates use.

The name is not GSM-7, so an SMS must fit three UCS-2 segments (201 characters) with them.
"""
_SAMPLE_ORG = "Grassroots Together"
_SAMPLE_URL = "https://example.org/unsubscribe/nudge-sample-0000"
_SAMPLE_SMS_OPT_OUTS = (SMS_OPT_OUT, "Opt out: https://example.org/o/abcdefghij")
"""Both ways an SMS can end; each must fit the segment limit."""

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM 03.38 basic or extension table."""
    return all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in text)


def sms_segments(text: str) -> int:
    """How many SMS segments ``text`` takes.

    GSM-7 when every character is in the GSM 03.38 tables: 160 septets in one segment, 153 per
    segment when split, extension characters (``€ [ ] { } ~ ^ | \\``) taking two that are never
    split. Otherwise UCS-2: 70 code units, 67 per segment when split, never splitting a
    surrogate pair. An empty text takes one segment.
    """
    if is_gsm7(text):
        units = [2 if c in _GSM7_EXTENDED else 1 for c in text]
        single, part = 160, 153
    else:
        units = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = 70, 67
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for unit in units:
        if used + unit > part:
            segments, used = segments + 1, 0
        used += unit
    return segments


class MessageTooLong(ValueError):
    """A rendered SMS needs more than ``MAX_SMS_SEGMENTS`` segments."""


@dataclass(frozen=True)
class _Rendered:
    subject: str | None
    body: str


class TemplateBook:
    """Every nudge template, loaded and test-rendered at construction.

    ``directory`` defaults to the package's ``templates/`` folder. A template that does not
    parse, needs a variable beyond the guaranteed four, lacks the email blocks, leaves out the
    organisation or the opt-out, or (SMS) overflows the segment limit with the sample context
    raises ``jinja2.TemplateError`` naming the file, so a bad template stops the start-up
    rather than a send.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else TEMPLATE_DIR
        # The HTML layout comes from the package when the directory has none.
        loader = jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(self.directory), jinja2.FileSystemLoader(TEMPLATE_DIR)]
        )
        autoescape = jinja2.select_autoescape(enabled_extensions=("html", "html.j2"))
        strict = jinja2.StrictUndefined
        # Email keeps its line structure, so block tags on their own lines leave nothing behind;
        # SMS collapses all whitespace, so its tags must not eat the line break between words.
        self._envs = {
            "email": jinja2.Environment(
                loader=loader,
                undefined=strict,
                autoescape=autoescape,
                trim_blocks=True,
                lstrip_blocks=True,
            ),
            "sms": jinja2.Environment(loader=loader, undefined=strict, autoescape=autoescape),
        }
        self._templates: dict[tuple[str, str], jinja2.Template] = {}
        for path in sorted(self.directory.glob("*.j2")):
            if path.name == LAYOUT:
                continue
            key = self._key(path.name)
            self._templates[key] = self._load(path.name, key[1])
        self._layout = self._load(LAYOUT, "email")
        for key in self._templates:
            self._check(*key)

    @property
    def names(self) -> list[tuple[str, str]]:
        """Every (template, channel) pair, sorted."""
        return sorted(self._templates)

    def render(
        self,
        template: str,
        channel: str,
        context: Mapping[str, str],
        *,
        nudge_id: str,
        to: str,
        org_name: str,
        opt_out_url: str,
        sms_opt_out: str | None = None,
    ) -> OutgoingMessage:
        """Render one nudge. ``org_name``, ``opt_out_url`` and ``sms_opt_out`` (default
        "Reply STOP to opt out") win over the context's.

        Raises ``KeyError`` for an unknown template or channel, ``MessageTooLong`` for an SMS
        over ``MAX_SMS_SEGMENTS``, ``ValueError`` for an unusable recipient.
        """
        if (template, channel) not in self._templates:
            known = ", ".join(f"{t}.{c}" for t, c in self.names)
            raise KeyError(f"no template {template!r} for channel {channel!r}; known: {known}")
        ending = sms_opt_out or SMS_OPT_OUT
        rendered = self._render(template, channel, context, org_name, opt_out_url, ending)
        self._require_opt_out(template, channel, rendered, org_name, opt_out_url, ending)
        if channel == "sms":
            segments = sms_segments(rendered.body)
            if segments > MAX_SMS_SEGMENTS:
                raise MessageTooLong(
                    f"template {template}.sms for nudge {nudge_id}: {segments} segments, "
                    f"more than {MAX_SMS_SEGMENTS}"
                )
            return OutgoingMessage(
                nudge_id=nudge_id, channel="sms", to=to, subject=None, body=rendered.body
            )
        assert rendered.subject is not None
        return OutgoingMessage(
            nudge_id=nudge_id,
            channel="email",
            to=to,
            subject=rendered.subject,
            body=rendered.body,
            html=self._html(rendered),
            headers={
                "List-Unsubscribe": f"<{opt_out_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )

    def _key(self, filename: str) -> tuple[str, str]:
        parts = filename.split(".")
        if len(parts) != 3 or parts[1] not in CHANNELS or not parts[0]:
            raise jinja2.TemplateError(
                f"{self.directory / filename}: expected <name>.<channel>.j2 "
                f"with channel one of {CHANNELS}"
            )
        return parts[0], parts[1]

    def _load(self, filename: str, channel: str) -> jinja2.Template:
        try:
            template = self._envs[channel].get_template(filename)
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or self.directory / filename
            raise jinja2.TemplateError(f"{where}, line {exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise jinja2.TemplateError(f"{self.directory / filename}: not found") from exc
        if filename.endswith(".email.j2"):
            missing = {"subject", "body"} - set(template.blocks)
            if missing:
                raise jinja2.TemplateError(
                    f"{self.directory / filename}: missing block(s) {', '.join(sorted(missing))}"
                )
        return template

    def _check(self, template: str, channel: str) -> None:
        """Render with the full sample context and with only the guaranteed names (empty).

        An SMS must also be GSM-7 on its own (with ASCII values): one curly quote or emoji in
        the template would more than double the segments every message takes.
        """
        filename = self.directory / f"{template}.{channel}.j2"
        endings = _SAMPLE_SMS_OPT_OUTS if channel == "sms" else (SMS_OPT_OUT,)
        cases = [(c, e) for c in (SAMPLE_CONTEXT, {"first_name": "", "area": ""}) for e in endings]
        for context, ending in cases:
            try:
                rendered = self._render(
                    template, channel, context, _SAMPLE_ORG, _SAMPLE_URL, ending
                )
                self._require_opt_out(template, channel, rendered, _SAMPLE_ORG, _SAMPLE_URL, ending)
                if channel == "email":
                    self._html(rendered)
            except (jinja2.TemplateError, ValueError) as exc:
                raise jinja2.TemplateError(f"{filename}: {exc}") from exc
            if channel != "sms":
                continue
            if sms_segments(rendered.body) > MAX_SMS_SEGMENTS:
                raise jinja2.TemplateError(
                    f"{filename}: more than {MAX_SMS_SEGMENTS} SMS segments with sample values"
                )
            if context is not SAMPLE_CONTEXT and not is_gsm7(rendered.body):
                odd = sorted({c for c in rendered.body if not is_gsm7(c)})
                raise jinja2.TemplateError(
                    f"{filename}: characters outside GSM-7 {odd!r} make every SMS UCS-2"
                )

    def _render(
        self,
        template: str,
        channel: str,
        context: Mapping[str, str],
        org_name: str,
        opt_out_url: str,
        sms_opt_out: str = SMS_OPT_OUT,
    ) -> _Rendered:
        variables: dict[str, str] = {"first_name": "", "area": ""}
        variables.update(context)
        variables["first_name"] = " ".join(variables["first_name"].split())
        variables["area"] = " ".join(variables["area"].split())
        variables["org_name"] = org_name
        variables["opt_out_url"] = opt_out_url
        variables["sms_opt_out"] = sms_opt_out
        compiled = self._templates[(template, channel)]
        if channel == "sms":
            return _Rendered(None, " ".join(compiled.render(variables).split()))
        subject = " ".join(_block(compiled, "subject", variables).split())
        if not subject:
            raise ValueError("empty subject")
        return _Rendered(subject, _tidy_text(_block(compiled, "body", variables)))

    @staticmethod
    def _require_opt_out(
        template: str,
        channel: str,
        rendered: _Rendered,
        org_name: str,
        opt_out_url: str,
        sms_opt_out: str,
    ) -> None:
        """Every message names the sender and ends with a way to opt out (PECR reg. 23)."""
        ending = sms_opt_out if channel == "sms" else opt_out_url
        if org_name not in rendered.body:
            raise ValueError(f"template {template}.{channel} does not name the organisation")
        if not rendered.body.endswith(ending):
            raise ValueError(f"template {template}.{channel} does not end with {ending!r}")

    def _html(self, rendered: _Rendered) -> str:
        paragraphs = [p.split("\n") for p in _PARAGRAPH_BREAK.split(rendered.body)]
        return self._layout.render(subject=rendered.subject, paragraphs=paragraphs)


def _block(template: jinja2.Template, name: str, variables: Mapping[str, str]) -> str:
    blocks: Iterator[str] = template.blocks[name](template.new_context(dict(variables)))
    return "".join(blocks)


def _tidy_text(text: str) -> str:
    """Strip trailing spaces, keep at most one blank line between paragraphs."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
