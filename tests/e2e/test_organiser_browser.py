"""An organiser works the queue on a phone-sized screen, in headless Chromium (Debian's, driven
by Playwright), against the whole pipeline started as a user starts it (`engage up`): sign in
from the root URL, the queue, a task, claim it, the outcome in two taps, the queue updating,
the supporter's stored score changing as the outcome goes through the ledger, the relay, the
stream and the score sink, a new task appearing without a reload, and a leader candidate
becoming a leader when a training is recorded on the leaders page. Each page is
screenshotted (ENGAGE_ARTEFACTS, default .artefacts/screenshots/) and checked with axe-core:
no violation of serious or critical impact."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import ENGAGE, Pipeline
from tests.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
PASSWORD = "a password for the browser test"
ROOT = Path(__file__).resolve().parents[2]
SERIOUS = {"serious", "critical"}


@pytest.fixture
def artefacts() -> Path:
    where = Path(os.environ.get("ENGAGE_ARTEFACTS") or ROOT / ".artefacts" / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def person(n: int, first_name: str) -> dict[str, Any]:
    return {
        "email": f"organiser.test.{n}@example.org",
        "phone": f"07911 12{n:04d}",
        "first_name": first_name,
        "postcode": f"E8 {n}AA",
        "area": "Hackney",
    }


def first_meeting(who: dict[str, Any], at: datetime) -> list[dict[str, Any]]:
    """A signup with consent and a first meeting attended: the default playbook's
    first-meeting-follow-up rule makes a call task of it."""
    return [
        {
            "type": "supporter.signup",
            "event_time": (at - timedelta(hours=2)).isoformat(),
            "consent_email": True,
            "consent_sms": True,
            "consent_wording": "v1",
            **who,
        },
        {
            "type": "event.attended",
            "event_time": at.isoformat(),
            "meeting_id": "hackney-monthly",
            "meeting_title": "Hackney monthly",
            **{k: who[k] for k in ("email", "phone", "first_name", "postcode")},
        },
    ]


def open_tasks(pipeline: Pipeline, count: int) -> list[dict[str, Any]] | None:
    tasks: list[dict[str, Any]] = pipeline.cli("tasks", "--json")
    return tasks if len(tasks) >= count else None


def check(page: Page, name: str, artefacts: Path) -> None:
    """A screenshot of the page, and axe-core's verdict: nothing serious or critical."""
    page.screenshot(path=str(artefacts / f"{name}.png"), full_page=True)
    violations = Axe().run(page).response["violations"]
    serious = [(v["id"], v["impact"], v["help"]) for v in violations if v["impact"] in SERIOUS]
    assert serious == [], f"{name}: {serious}"


def stored_score(page: Page) -> str:
    return page.locator("#score").inner_text().strip()


def test_an_organiser_works_a_task_end_to_end_on_a_phone(
    pipeline: Pipeline, browser: Browser, artefacts: Path
) -> None:
    subprocess.run(
        [ENGAGE, "groups", "add", "hackney", "--name", "Hackney", "--areas", "E8"],
        env=pipeline.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [
            ENGAGE,
            "organisers",
            "add",
            "asha",
            "--name",
            "Asha",
            "--group",
            "hackney",
            "--lead",
            "hackney",
            "--password-stdin",
        ],
        input=f"{PASSWORD}\n".encode(),
        env=pipeline.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    jo = person(1, "Jo")
    assert pipeline.post(first_meeting(jo, now - timedelta(hours=1))).status_code == 202
    (task,) = wait_until("Jo's follow-up task", lambda: open_tasks(pipeline, 1), 90, 0.5)

    context = browser.new_context(viewport=PHONE, locale="en-GB")
    page = context.new_page()

    # The root URL `engage up` prints leads to the sign-in.
    page.goto(pipeline.url + "/")
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.keyboard.press("Tab")  # the keyboard's first stop skips the header
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    check(page, "01-sign-in", artefacts)
    page.get_by_label("Organiser id").fill("asha")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # The queue: Jo's first-meeting call.
    expect(page).to_have_url(re.compile(r"/queue$"))
    jo_link = page.get_by_role("link", name=re.compile(r"^Jo Thank a first-timer"))
    expect(jo_link).to_be_visible()
    check(page, "02-queue", artefacts)

    # The task: context, no phone until claimed, never the email.
    jo_link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank a first-timer: Jo")
    expect(page.get_by_role("link", name=re.compile("^Call Jo"))).to_have_count(0)
    assert "@example.org" not in page.content()
    check(page, "03-task", artefacts)

    def scored() -> str | None:
        page.reload()
        text = stored_score(page)
        return text if re.fullmatch(r"[0-9.]+", text) else None

    before = float(wait_until("Jo's stored score", scored, 60, 0.5))

    page.get_by_role("button", name="Claim this call").click()
    call = page.get_by_role("link", name=re.compile("^Call Jo: 07911 120001$"))
    expect(call).to_have_attribute("href", "tel:+447911120001")
    assert "@example.org" not in page.content()
    check(page, "04-task-claimed", artefacts)

    # The outcome in two taps: "Reached: committed…", then what to.
    page.get_by_text("Reached: committed…").click()
    page.get_by_role("button", name="Come to a meeting").click()
    expect(page).to_have_url(re.compile(r"/queue\?recorded=reached_committed$"))
    expect(page.get_by_role("status")).to_have_text("Recorded: Reached: committed.")
    expect(page.locator("#queue-items")).to_contain_text("Nothing is due")
    check(page, "05-queue-after-outcome", artefacts)

    # The commitment goes through the ledger, the relay, the stream and the score sink.
    page.goto(f"{pipeline.url}/tasks/{task['task_id']}")
    expect(page.locator(".status")).to_contain_text("Done")

    def risen() -> float | None:
        page.reload()
        text = stored_score(page)
        return float(text) if re.fullmatch(r"[0-9.]+", text) and float(text) > before else None

    after = wait_until("Jo's stored score to rise with the commitment", risen, 60, 0.5)
    assert after == pytest.approx(before + 5, abs=0.2)  # commitment.meeting weighs 5
    check(page, "06-task-done-score-risen", artefacts)

    # A new task appears on the open queue page without a reload.
    page.goto(pipeline.url + "/queue")
    page.evaluate("window.__not_reloaded = true")
    kit = person(2, "Kit")
    kit_came = first_meeting(kit, datetime.now(UTC) - timedelta(minutes=5))
    kit_came[1]["brought_by_email"] = jo["email"]  # Jo brought Kit: credit to Jo
    assert pipeline.post(kit_came).status_code == 202
    kit_link = page.get_by_role("link", name=re.compile(r"^Kit Thank a first-timer"))
    expect(kit_link).to_be_visible(timeout=90_000)
    assert page.evaluate("window.__not_reloaded") is True
    expect(page.locator("#queue-announce")).to_have_text("1 new task. 1 task to call.")
    check(page, "07-queue-new-task", artefacts)

    # Two more meetings make Jo a regular who brought someone: a leader candidate. A training
    # recorded on the leaders page makes them a leader.
    earlier = [
        {
            "type": "event.attended",
            "event_time": (now - timedelta(days=days)).isoformat(),
            "meeting_id": f"hackney-{days}",
            "meeting_title": "Hackney action planning",
            **{k: jo[k] for k in ("email", "phone", "first_name", "postcode")},
        }
        for days in (2, 3)
    ]
    assert pipeline.post(earlier).status_code == 202
    page.get_by_role("link", name="Leaders").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Leaders")
    candidates = page.locator("h3:text-is('Leader candidates') + ul")
    leaders = page.locator("h3:text-is('Leaders') + ul")

    def listed(where: Any) -> bool:
        page.reload()
        return "Jo" in where.inner_text()

    wait_until("Jo among the leader candidates", lambda: listed(candidates), 60, 0.5)
    check(page, "08-leaders", artefacts)
    page.get_by_label("Who").select_option(label="Jo (E8, leader candidate)")
    page.get_by_role("textbox", name="Training").fill("One-to-ones")
    page.get_by_role("button", name="Record the training").click()
    expect(page.get_by_role("status")).to_have_text("Training recorded.")
    wait_until("Jo among the leaders", lambda: listed(leaders), 60, 0.5)
    check(page, "09-leaders-after-training", artefacts)

    page.get_by_role("button", name=re.compile("^Sign out")).click()
    expect(page).to_have_url(re.compile(r"/sign-in\?signed_out=1$"))
    page.goto(pipeline.url + "/queue")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    context.close()
