"""The topic catalogue as the app serves it: /asyncapi.json and /schemas/{topic}.json as the
running pipeline creates its topics (settings' partitions, copies and retention), and the
/topics page, read as a person reads it (headless Chromium, axe-core)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from schemas.asyncapi import asyncapi_document
from schemas.catalogue import DAY_MS, json_schemas
from schemas.components import consumers_of, producers_of
from schemas.examples import example_message

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (docs: shared REFERENCE, browser tests)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the catalogue does not depend on the database."""
    return f"sqlite:///{tmp_path / 'engage.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A pipeline with 6 partitions a topic, 3 copies (2 in sync), and input events kept
    30 days."""
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)
    return Settings(
        home=tmp_path,
        database_url=database_url,
        api_token="test-token",
        identity_key="test-key",
        topic_partitions=6,
        topic_replication_factor=3,
        topic_min_insync_replicas=2,
        retention_events_days=30,
    )


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, trust_env=False, timeout=10.0) as client:
        yield client


def test_the_asyncapi_document_is_the_pipelines_as_configured(
    client: httpx.Client, settings: Settings
) -> None:
    answer = client.get("/asyncapi.json")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document == asyncapi_document(
        settings.topics(), partitions=6, replicas=3, min_insync_replicas=2
    )
    kafka = document["channels"]["petition.signed"]["bindings"]["kafka"]
    assert (kafka["partitions"], kafka["replicas"]) == (6, 3)
    assert kafka["topicConfiguration"]["retention.ms"] == 30 * DAY_MS


def test_each_topics_json_schema_is_served_and_an_unknown_topic_is_404(
    client: httpx.Client, settings: Settings
) -> None:
    expected = json_schemas(settings.topics())
    for topic, schema in expected.items():
        answer = client.get(f"/schemas/{topic}.json")
        assert answer.status_code == 200, topic
        assert answer.json() == schema
    assert expected["event.attended"]["x-retention-ms"] == 30 * DAY_MS

    for unknown in ("analytics.signup", "supporter.signup.v2", "topics"):
        missing = client.get(f"/schemas/{unknown}.json")
        assert missing.status_code == 404
        assert missing.json() == {
            "detail": [{"field": "topic", "reason": "no such topic: see /topics"}]
        }


class _Page(HTMLParser):
    """What the /topics page shows: per topic section, its text by definition term and its
    example; and every URL the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self.loads: list[str] = []
        self.lang: str | None = None
        self._section: dict[str, Any] | None = None
        self._term: str | None = None
        self._into: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "html":
            self.lang = attributes.get("lang")
        if tag in ("script", "img", "iframe") and attributes.get("src"):
            self.loads.append(str(attributes["src"]))
        if tag == "link" and attributes.get("href"):
            self.loads.append(str(attributes["href"]))
        if tag == "section" and "topic" in (attributes.get("class") or ""):
            self._section = {"id": attributes["id"], "terms": {}, "example": "", "title": ""}
            self.sections[str(attributes["id"])] = self._section
        elif self._section is not None:
            if tag == "h2":
                self._into = "title"
            elif tag == "dt":
                self._into, self._term = "term", ""
            elif tag == "dd" and self._term is not None:
                self._into = "definition"
                self._section["terms"][self._term] = ""
            elif tag == "pre":
                self._into = "example"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "dt", "dd", "pre"):
            self._into = None
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        section = self._section
        if section is None or self._into is None:
            return
        if self._into == "term":
            self._term = (self._term or "") + data.strip()
        elif self._into == "definition" and self._term is not None:
            section["terms"][self._term] += " " + " ".join(data.split())
        elif self._into in ("title", "example"):
            section[self._into] += data


def test_the_topics_page_lists_each_topic_with_what_analysts_need(
    client: httpx.Client, settings: Settings
) -> None:
    answer = client.get("/topics")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(answer.text)
    assert page.lang == "en"
    assert page.loads == []  # nothing from elsewhere: no CDN, no script
    specs = settings.topics()
    assert list(page.sections) == [spec.name for spec in specs]
    for spec in specs:
        section = page.sections[spec.name]
        terms = section["terms"]
        assert section["title"] == spec.name
        assert terms["Key"].strip() == spec.key
        assert terms["Partitions"].strip() == "6"
        assert f"version {spec.model.version}" in terms["Event"]
        for component in producers_of(spec.name):
            assert component.title in terms["Produced by"]
        for component in consumers_of(spec.name):
            assert component.title in terms["Consumed by"]
        assert json.loads(section["example"]) == example_message(spec)
    retention = {name: s["terms"]["Retention"] for name, s in page.sections.items()}
    assert retention["supporter.signup"].startswith(" 30 days")
    assert retention["supporter.erased"].startswith(" forever")
    assert "nothing in the pipeline" in page.sections["ladder.changed"]["terms"]["Consumed by"]


def test_the_topics_page_is_left_out_of_the_api_document(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert "/topics" not in paths
    assert {"/asyncapi.json", "/schemas/{topic}.json"} <= set(paths)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 800}], ids=str
)
def test_the_topics_page_reads_well_on_a_phone_and_a_laptop_and_passes_axe(
    api: str, chromium: Any, viewport: dict[str, int], tmp_path: Path
) -> None:
    """No axe-core violation; nothing wider than the screen but the scrollable examples and
    tables; the fields open; a screenshot in the test's temporary directory."""
    from axe_playwright_python.sync_playwright import Axe

    page = chromium.new_page(viewport=viewport)
    try:
        page.goto(f"{api}/topics")
        page.get_by_role("link", name="task.outcome", exact=True).click()
        section = page.locator("section#task\\.outcome")
        section.get_by_text("Fields (", exact=False).click()
        assert section.get_by_role("table").is_visible()
        assert section.get_by_role("cell", name="reached_committed", exact=False).count() >= 1
        page.screenshot(path=str(tmp_path / f"topics-{viewport['width']}.png"), full_page=False)

        results = Axe().run(page)
        overflow = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.close()

    assert results.violations_count == 0, results.generate_report()
    assert overflow <= viewport["width"]
