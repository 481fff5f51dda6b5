"""An analyst opens /charts in headless Chromium (Debian's, driven by Playwright), at a phone's
size and a laptop's, over a mart filled with six months of 300 simulated people (stored
through the mart's own writer): each chart has drawn one data mark per row of its data
(counted in its SVG, against the aggregates read from the database here), its text
alternative lists the same rows, axe-core finds nothing serious or critical, and each view is
screenshotted (ENGAGE_ARTEFACTS, default .artefacts/screenshots/). Vega's JavaScript comes from
the app itself: the page asks nothing of any other host."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, sync_playwright

import engage.webapp
from consumers.mart.charts import Figure, figures
from consumers.mart.store import MartBatch, store_batch
from infra.db import make_engine, migrate, session_factory
from infra.settings import Settings
from tests.mart_records import simulated_people
from tests.polling import wait_until

pytestmark = [pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SERIOUS = {"serious", "critical"}
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "laptop": {"width": 1280, "height": 800}}
MARKS = {  # the Vega mark groups that draw each chart's data (the lift's dashed zero is apart)
    "funnel": ["marks"],
    "areas": ["marks"],
    "nudges": ["marks"],
    "lift": ["layer_1_marks", "layer_2_marks"],
}


@dataclass
class Site:
    url: str
    figures: dict[str, Figure]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The app over a SQLite mart of 300 people's 26 weeks, served by uvicorn on loopback."""
    home = tmp_path_factory.mktemp("charts")
    url = f"sqlite:///{home / 'engage.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    batch = MartBatch()
    for record in simulated_people(300, datetime(2026, 1, 5, tzinfo=UTC), 182, seed=3):
        batch.add(record)
    with sessions.begin() as session:
        store_batch(session, batch)
    with sessions() as session:
        expected = {f.id: f for f in figures(session)}
    saved = {k: v for k, v in os.environ.items() if k.startswith("ENGAGE_")}
    for name in saved:
        del os.environ[name]
    try:
        settings = Settings(home=home, database_url=url, api_token="t", identity_key="k")
        app = engage.webapp.create_app(settings)
    finally:
        os.environ.update(saved)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_until("the app to start", lambda: server.started, 20, 0.05)
    try:
        yield Site(base, expected)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artefacts() -> Path:
    where = Path(os.environ.get("ENGAGE_ARTEFACTS") or ROOT / ".artefacts" / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def drawn_marks(page: Page, chart: str) -> dict[str, int]:
    """Per Vega mark group of the chart: how many items it drew in the SVG."""
    found: dict[str, int] = page.evaluate(
        """(chart) => {
            const counts = {};
            const root = document.querySelector(`[data-chart="${chart}"] svg`);
            for (const group of root.querySelectorAll("g.role-mark")) {
                const name = [...group.classList].find((c) => c.endsWith("marks"));
                counts[name] = (counts[name] || 0) + group.children.length;
            }
            return counts;
        }""",
        chart,
    )
    return found


@pytest.mark.parametrize("size", list(VIEWPORTS))
def test_each_chart_draws_its_data_on_a_phone_and_a_laptop(
    site: Site, browser: Browser, artefacts: Path, size: str
) -> None:
    assert all(f.rows for f in site.figures.values()), "the simulated mart fills every chart"
    page = browser.new_page(viewport=VIEWPORTS[size])  # type: ignore[arg-type]
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: elsewhere.append(r.url) if not r.url.startswith(site.url) else None,
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{site.url}/charts")
        page.wait_for_function(
            "document.querySelectorAll('[data-rendered], [data-error]').length === 4",
            timeout=60_000,
        )
        failed = page.eval_on_selector_all("[data-error]", "els => els.map(e => e.dataset.error)")
        assert failed == [] and errors == []
        for chart, groups in MARKS.items():
            figure = site.figures[chart]
            counts = drawn_marks(page, chart)
            assert [counts.get(g, 0) for g in groups] == [figure.marks] * len(groups), chart
            rows = page.locator(f'section:has([data-chart="{chart}"]) tbody tr')
            assert rows.count() == len(figure.rows), chart
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= VIEWPORTS[size]["width"], "no sideways scrolling"
        assert elsewhere == []
        page.screenshot(path=str(artefacts / f"charts-{size}.png"), full_page=True)
        violations = Axe().run(page).response["violations"]
        serious = [(v["id"], v["impact"], v["help"]) for v in violations if v["impact"] in SERIOUS]
        assert serious == [], serious
    finally:
        page.close()


def test_the_page_names_every_chart_and_defines_conversion(site: Site, browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{site.url}/charts")
        titles = page.locator("section.chart h2").all_inner_texts()
        assert titles == [f.title for f in site.figures.values()]
        text = page.locator("#definitions + dl").inner_text()
        assert "within 14 days" in text and "Newcombe" in text
        section = page.locator('section:has([data-chart="lift"])')
        section.locator("summary").click()  # the text alternative opens
        cells = section.locator("tbody tr").first.locator("td").all_inner_texts()
        assert cells == [str(value) for value in site.figures["lift"].rows[0]]
    finally:
        page.close()
