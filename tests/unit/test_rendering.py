"""TemplateBook: every template renders, names the sender, ends with its opt-out, fails early."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import jinja2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.messages import OutgoingMessage
from consumers.rendering import (
    MAX_SMS_SEGMENTS,
    SMS_OPT_OUT,
    TEMPLATE_DIR,
    MessageTooLong,
    TemplateBook,
    is_gsm7,
    sms_segments,
)

ORG = "Grassroots Together"
OPT_OUT = "http://127.0.0.1:8000/unsubscribe/nudge-123"
EMAIL = "siân.jones@example.org"
PHONE = "+447700900123"
REQUIRED = {
    ("welcome", "email"),
    ("thanks_first_meeting", "email"),
    ("invite_next_meeting", "sms"),
}
EVERY = sorted(
    (name, channel)
    for name in (
        "welcome",
        "thanks_first_meeting",
        "invite_next_meeting",
        "sorry_we_missed_you",
        "we_miss_you",
    )
    for channel in ("email", "sms")
)
FULL = {
    "first_name": "Siân",
    "area": "Newcastle upon Tyne",
    "meeting_title": "the Byker housing meeting",
    "meeting_when": "Wednesday 24 September, 7.30pm",
    "meeting_url": "https://example.org/meetings/byker-housing",
}


@pytest.fixture(scope="module")
def book() -> TemplateBook:
    return TemplateBook()


def render(book: TemplateBook, name: str, channel: str, context: dict[str, str]) -> OutgoingMessage:
    return book.render(
        name,
        channel,
        context,
        nudge_id="nudge-123",
        to=EMAIL if channel == "email" else PHONE,
        org_name=ORG,
        opt_out_url=OPT_OUT,
    )


def test_the_book_has_every_template_for_both_channels(book: TemplateBook) -> None:
    assert set(book.names) >= REQUIRED
    assert book.names == EVERY


@pytest.mark.parametrize(("name", "channel"), EVERY)
@pytest.mark.parametrize(
    ("context", "greeting"),
    [
        (FULL, "Hi Siân,"),
        ({"first_name": "  Siân  "}, "Hi Siân,"),
        ({}, "Hi there,"),
        ({"first_name": "", "area": ""}, "Hi there,"),
    ],
    ids=["full", "padded-name", "nothing", "empty"],
)
def test_every_template_renders_personal_named_and_with_opt_out(
    book: TemplateBook, name: str, channel: str, context: dict[str, str], greeting: str
) -> None:
    message = render(book, name, channel, context)

    assert message.nudge_id == "nudge-123"
    assert message.channel == channel
    assert message.body.startswith(greeting)
    assert ORG in message.body
    assert "{{" not in message.body and "{%" not in message.body
    if channel == "sms":
        assert message.to == PHONE
        assert message.subject is None and message.html is None and message.headers == {}
        assert message.body.endswith(SMS_OPT_OUT)
        assert "\n" not in message.body and "  " not in message.body
        assert sms_segments(message.body) <= MAX_SMS_SEGMENTS
    else:
        assert message.to == EMAIL
        assert message.subject and "\n" not in message.subject
        assert message.body.endswith(f"Unsubscribe at any time: {OPT_OUT}")
        assert "\n\n\n" not in message.body
        assert message.headers == {
            "List-Unsubscribe": f"<{OPT_OUT}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        assert message.html is not None
        assert f'<a href="{OPT_OUT}"' in message.html
        assert ORG in message.html
        assert html.escape(greeting, quote=False) in message.html


def test_area_and_optional_context_appear_when_given(book: TemplateBook) -> None:
    invite = render(book, "invite_next_meeting", "sms", FULL)
    assert "in Newcastle upon Tyne is Wednesday 24 September, 7.30pm" in invite.body

    email = render(book, "invite_next_meeting", "email", FULL)
    assert email.subject == "Join us at the next meeting in Newcastle upon Tyne"
    assert "Details and directions: https://example.org/meetings/byker-housing" in email.body
    assert email.html is not None
    assert 'href="https://example.org/meetings/byker-housing"' in email.html

    bare = render(book, "invite_next_meeting", "email", {})
    assert bare.subject == "Join us at the next meeting"
    assert "Details and directions" not in bare.body
    assert "is coming up soon" in render(book, "invite_next_meeting", "sms", {}).body


def test_sorry_we_missed_you_names_the_meeting_when_known(book: TemplateBook) -> None:
    email = render(book, "sorry_we_missed_you", "email", FULL)
    assert email.subject == "Sorry we missed you in Newcastle upon Tyne"
    assert "We missed you at the Byker housing meeting." in email.body
    assert "a next one, Wednesday 24 September, 7.30pm." in email.body
    assert "Details: https://example.org/meetings/byker-housing" in email.body
    sms = render(book, "sorry_we_missed_you", "sms", FULL)
    assert "The next meeting in Newcastle upon Tyne is Wednesday 24 September, 7.30pm." in sms.body

    bare = render(book, "sorry_we_missed_you", "email", {})
    assert bare.subject == "Sorry we missed you"
    assert "We missed you at the meeting." in bare.body
    assert "Details:" not in bare.body
    assert (
        "The next meeting is coming up soon." in render(book, "sorry_we_missed_you", "sms", {}).body
    )


def test_we_miss_you_names_the_area_when_known(book: TemplateBook) -> None:
    email = render(book, "we_miss_you", "email", FULL)
    assert email.subject == "We miss you in Newcastle upon Tyne"
    assert "since we saw you in Newcastle upon Tyne," in email.body
    assert (
        "We've missed you in Newcastle upon Tyne!" in render(book, "we_miss_you", "sms", FULL).body
    )

    assert render(book, "we_miss_you", "email", {}).subject == "We miss you"
    assert "We've missed you!" in render(book, "we_miss_you", "sms", {}).body


def test_explicit_org_and_opt_out_win_over_the_context(book: TemplateBook) -> None:
    context = {"org_name": "Someone Else", "opt_out_url": "https://evil.example/"}
    message = render(book, "welcome", "email", context)
    assert "Someone Else" not in message.body
    assert message.body.endswith(OPT_OUT)
    assert message.headers["List-Unsubscribe"] == f"<{OPT_OUT}>"


def test_html_escapes_what_people_typed(book: TemplateBook) -> None:
    message = render(book, "welcome", "email", {"first_name": "<b>Bob</b> & co"})
    assert message.html is not None
    assert "<b>Bob</b>" not in message.html
    assert "Hi &lt;b&gt;Bob&lt;/b&gt; &amp; co," in message.html
    assert message.body.startswith("Hi <b>Bob</b> & co,")  # the text part is not HTML


def test_templates_are_gsm7_so_ascii_messages_stay_cheap(book: TemplateBook) -> None:
    for name, channel in book.names:
        if channel == "sms":
            assert is_gsm7(render(book, name, channel, {"first_name": "Bob"}).body)


@given(first_name=st.text(max_size=25))
def test_any_first_name_up_to_25_characters_fits_three_segments(
    book: TemplateBook, first_name: str
) -> None:
    for name, channel in book.names:
        if channel == "sms":
            context = {"first_name": first_name, "area": "Tower Hamlets"}
            body = render(book, name, channel, context).body
            assert sms_segments(body) <= MAX_SMS_SEGMENTS
            assert body.endswith(SMS_OPT_OUT)


def test_an_sms_over_three_segments_is_refused_without_quoting_it(book: TemplateBook) -> None:
    context = {"first_name": "Siân " + "Llewellyn" * 8, "area": "Llanfair" * 10}
    with pytest.raises(MessageTooLong, match=r"invite_next_meeting\.sms.*nudge-123") as caught:
        render(book, "invite_next_meeting", "sms", context)
    assert "Llewellyn" not in str(caught.value)


def test_unknown_template_or_channel_is_a_key_error(book: TemplateBook) -> None:
    with pytest.raises(KeyError, match="no template 'goodbye' for channel 'email'"):
        render(book, "goodbye", "email", {})
    with pytest.raises(KeyError, match="no template 'welcome' for channel 'fax'"):
        render(book, "welcome", "fax", {})


def test_a_bad_recipient_is_refused_without_quoting_it(book: TemplateBook) -> None:
    with pytest.raises(ValueError, match=r"not an E\.164 number") as caught:
        book.render(
            "welcome",
            "sms",
            {},
            nudge_id="n",
            to="07700 900123",
            org_name=ORG,
            opt_out_url=OPT_OUT,
        )
    assert "900123" not in str(caught.value)


@pytest.mark.parametrize(
    ("segments", "text"),
    [
        (1, ""),
        (1, "a" * 160),
        (2, "a" * 161),
        (2, "a" * 306),
        (3, "a" * 307),
        (1, "€" * 80),  # extension characters take two septets
        (2, "€" * 81),
        (2, "a" * 151 + "€" + "a" * 153),
        (3, "a" * 152 + "€" + "a" * 152),  # 306 septets, but the escape pair is never split
        (1, "â" * 70),  # one non-GSM character makes it UCS-2
        (2, "â" * 71),
        (2, "â" * 134),
        (3, "â" * 135),
        (1, "😀" * 35),  # a surrogate pair is two UCS-2 units
        (2, "😀" * 36),
        (2, "a" * 65 + "😀" + "a" * 67),
        (3, "a" * 66 + "😀" + "a" * 66),  # 134 units, but a surrogate pair is never split
    ],
)
def test_sms_segments(segments: int, text: str) -> None:
    assert sms_segments(text) == segments


# ---- a broken template stops the start-up, naming its file --------------------------------


def write_book(tmp_path: Path, filename: str, text: str) -> Path:
    for path in TEMPLATE_DIR.glob("*.j2"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / filename).write_text(text)
    return tmp_path


GOOD_SMS = 'Hi {{ first_name or "there" }}, from {{ org_name }}. {{ sms_opt_out }}'
GOOD_EMAIL = (
    "{% block subject %}Hello from {{ org_name }}{% endblock %}\n"
    "{% block body %}\nHi,\n\n{{ org_name }}\n\nUnsubscribe: {{ opt_out_url }}\n{% endblock %}\n"
)


def test_another_directory_loads_and_falls_back_to_the_package_layout(tmp_path: Path) -> None:
    (tmp_path / "extra.sms.j2").write_text(GOOD_SMS)
    (tmp_path / "extra.email.j2").write_text(GOOD_EMAIL)
    book = TemplateBook(tmp_path)
    assert book.names == [("extra", "email"), ("extra", "sms")]
    message = render(book, "extra", "email", {})
    assert message.subject == f"Hello from {ORG}"
    assert message.body == f"Hi,\n\n{ORG}\n\nUnsubscribe: {OPT_OUT}"
    assert message.html is not None and "<p>Hi,</p>" in message.html
    assert render(book, "extra", "sms", {}).body == f"Hi there, from {ORG}. {SMS_OPT_OUT}"


@pytest.mark.parametrize(
    ("filename", "text", "reason"),
    [
        ("broken.sms.j2", "Hi {{ first_name }, {{ sms_opt_out }}", r"line 1: unexpected '}'"),
        ("broken.email.j2", "{% block subject %}Hi{% endblock %}\n{% if x %}", r"line 2"),
        ("broken.sms.j2", "Hi {{ nickname }}, {{ org_name }}. {{ sms_opt_out }}", "nickname"),
        ("broken.sms.j2", "Hi from {{ org_name }}!", "does not end with 'Reply STOP"),
        ("broken.sms.j2", "Hi there. {{ sms_opt_out }}", "does not name the organisation"),
        (
            "broken.sms.j2",
            "Hi from {{ org_name }}. Reply STOP to opt out",
            "does not end with 'Opt out: https://",
        ),
        ("broken.sms.j2", "We\u2019re {{ org_name }}. {{ sms_opt_out }}", "outside GSM-7"),
        ("broken.sms.j2", "{{ org_name }} " + "word " * 100 + "{{ sms_opt_out }}", "segments"),
        ("broken.email.j2", GOOD_EMAIL.replace("{{ opt_out_url }}", ""), "does not end with"),
        ("broken.email.j2", "{% block body %}{{ org_name }}{% endblock %}", "missing block"),
        ("broken.email.j2", GOOD_EMAIL.replace("Hello from {{ org_name }}", " "), "subject"),
        ("broken.fax.j2", GOOD_SMS, "expected <name>.<channel>.j2"),
    ],
    ids=[
        "syntax",
        "unclosed-if",
        "undefined",
        "no-stop",
        "no-org",
        "stop-only",
        "curly-quote",
        "too-long",
        "no-unsubscribe",
        "no-subject-block",
        "empty-subject",
        "bad-name",
    ],
)
def test_a_broken_template_fails_at_load_naming_the_file(
    tmp_path: Path, filename: str, text: str, reason: str
) -> None:
    directory = write_book(tmp_path, filename, text)
    with pytest.raises(jinja2.TemplateError) as caught:
        TemplateBook(directory)
    message = str(caught.value)
    assert str(directory / filename) in message
    assert re.search(reason, message), message
