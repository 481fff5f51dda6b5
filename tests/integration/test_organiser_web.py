"""The organisers' pages and JSON endpoints, served by the real app under uvicorn on SQLite and
PostgreSQL: sign-in (argon2id, the same answer for an unknown id, the rate limit, the
double-submit token), sessions (expiry, sign-out, a disabled organiser), access control on
every route (another group's ids: 404; no live session: 401 or to the sign-in; no CSRF token:
403), and what the pages show (the queue's order, why it is empty, escalations, the phone only
on a claimed task, never an email)."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
from argon2 import PasswordHasher
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

import engage.webapp
import engage.wiring
from consumers.organising import directory, passwords
from consumers.organising.accounts import current_session, start_session, token_hash
from consumers.organising.web import CSRF_HEADER, NOT_RECOGNISED, SESSION_COOKIE
from consumers.repository import store_tasks
from engage import cli
from engage.organising import organiser_routers
from engage.wiring import engine_for
from infra.db import (
    FollowUpTask,
    LedgerEvent,
    Organiser,
    OrganiserSession,
    Supporter,
    SupporterScore,
    TaskEvent,
    make_engine,
)
from infra.settings import Settings
from schemas.events import TaskCreated
from tests.factories import consent_record

PASSWORD = "correct horse battery staple"
JO, SAM, KIT = (f"sup_{n:032x}" for n in (1, 2, 3))
JO_EMAIL, JO_PHONE, JO_PHONE_DIALLED = "jo.person@example.org", "+447911123001", "07911 123001"
SAM_EMAIL, SAM_PHONE = "sam.person@example.org", "+447911123002"
JO_TASK = f"first_meeting_follow_up:{JO}"
SAM_TASK = f"first_meeting_follow_up:{SAM}"


def created(sid: str, due_at: datetime, kind: str = "first_meeting_follow_up", **extra: Any) -> Any:
    return TaskCreated.model_validate(
        {
            "event_time": due_at - timedelta(hours=48),
            "task_id": f"{kind}:{sid}",
            "supporter_id": sid,
            "kind": kind,
            "reason": "Came to a first meeting: call to thank them",
            "due_at": due_at,
            "area": "Hackney",
            "rule": "first-meeting-follow-up",
            "cause_event_id": uuid.uuid4(),
            **extra,
        }
    )


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """SQLite only: the routes here call consumers.organising, whose every read and write
    test_organisers.py runs on both databases; the access matrix below is about the web layer."""
    return f"sqlite:///{tmp_path / 'engage.db'}"


@pytest.fixture(autouse=True)
def _quick_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """argon2id with small parameters, so that the dozens of sign-ins here take milliseconds
    (the app's own parameters: tests/unit/test_organiser_sign_in.py)."""
    monkeypatch.setattr(
        passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    passwords._dummy_hash.cache_clear()  # an unknown id's dummy hash: made with these too
    yield
    passwords._dummy_hash.cache_clear()


@pytest.fixture
def people(sessions: sessionmaker[Session]) -> None:
    """Hackney owns E8 (Asha leads, Ben organises), Lambeth owns SW9 (Cat leads); Ada is an
    admin in no group. Jo lives in E8, Sam in SW9, each with a first-meeting task due in two
    days; Jo consented to email and texts and is a leader candidate. Everyone's password is
    PASSWORD."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        directory.add_group(session, "hackney", "Hackney", ["E8"], now)
        directory.add_group(session, "lambeth", "Lambeth", ["SW9"], now)
        directory.add_organiser(session, "asha", "Asha", ["hackney"], now, leads=["hackney"])
        directory.add_organiser(session, "ben", "Ben", ["hackney"], now)
        directory.add_organiser(session, "cat", "Cat", ["lambeth"], now, leads=["lambeth"])
        directory.add_organiser(session, "ada", "Ada", [], now, is_admin=True)
        for organiser_id in ("asha", "ben", "cat", "ada"):
            directory.set_password(session, organiser_id, PASSWORD, now)
        session.add_all(
            [
                Supporter(
                    supporter_id=JO,
                    email=JO_EMAIL,
                    phone=JO_PHONE,
                    first_name="Jo",
                    postcode="E8 1AA",
                ),
                Supporter(
                    supporter_id=SAM,
                    email=SAM_EMAIL,
                    phone=SAM_PHONE,
                    first_name="Sam",
                    postcode="SW9 8XY",
                ),
                consent_record(JO, "email", now - timedelta(days=3)),
                consent_record(JO, "sms", now - timedelta(days=3)),
                SupporterScore(
                    supporter_id=JO,
                    score=31.5,
                    rung="leader_candidate",
                    as_of=now,
                    cause_event_id=uuid.uuid4(),
                ),
            ]
        )
        session.flush()
        due = now + timedelta(hours=48)
        assert store_tasks(session, [created(JO, due), created(SAM, due)], now) == 2


class Browser:
    """An organiser's client: a cookie jar, signed in through the JSON endpoint."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, trust_env=False, follow_redirects=False)
        self.csrf = ""

    def sign_in(self, organiser_id: str, password: str = PASSWORD) -> httpx.Response:
        response = self.http.post(
            "/v1/organisers/session", json={"organiser_id": organiser_id, "password": password}
        )
        if response.status_code == 200:
            self.csrf = response.json()["csrf_token"]
        return response

    @property
    def token(self) -> str:
        value = self.http.cookies.get(SESSION_COOKIE)
        assert value
        return value

    def send(self, route: Route, ids: Ids, *, csrf: str | None = "session") -> httpx.Response:
        """``route`` with ``ids``; ``csrf``: the session's token ("session"), none, or this."""
        token = self.csrf if csrf == "session" else csrf
        url = route.url(ids)
        if not route.changes:
            return self.http.request(route.method, url)
        if route.json:
            headers = {CSRF_HEADER: token} if token is not None else {}
            return self.http.request(route.method, url, json=route.body(ids), headers=headers)
        form = {**route.body(ids), **({"csrf_token": token} if token is not None else {})}
        return self.http.request(route.method, url, data=form)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browsers(api: str, people: None) -> Iterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def new() -> Browser:
        made.append(Browser(api))
        return made[-1]

    yield new
    for browser in made:
        browser.close()


def signed_in(browsers: Callable[[], Browser], organiser_id: str) -> Browser:
    browser = browsers()
    assert browser.sign_in(organiser_id).status_code == 200
    return browser


# --- every route an organiser reaches ---------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    task_id: str
    group_id: str
    supporter_id: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    json: bool
    """A JSON endpoint (401 without a session), or a page (to the sign-in)."""
    changes: bool
    """State-changing: refused without the session's CSRF token."""
    takes: str | None
    """Which id it names (task, group, supporter), if any."""
    form: Callable[[Ids], dict[str, Any]] | None = None

    def url(self, ids: Ids) -> str:
        return self.path.replace("{task_id}", quote(ids.task_id, safe="")).replace(
            "{group_id}", ids.group_id
        )

    def body(self, ids: Ids) -> dict[str, Any]:
        return self.form(ids) if self.form else {}

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/queue", json=False, changes=False, takes=None),
    Route("GET", "/queue/items", json=True, changes=False, takes=None),
    Route("GET", "/tasks/{task_id}", json=False, changes=False, takes="task"),
    Route("POST", "/tasks/{task_id}/claim", json=False, changes=True, takes="task"),
    Route("POST", "/tasks/{task_id}/release", json=False, changes=True, takes="task"),
    Route(
        "POST",
        "/tasks/{task_id}/outcome",
        json=False,
        changes=True,
        takes="task",
        form=lambda ids: {"outcome": "reached_committed:host", "note": "keen"},
    ),
    Route("GET", "/leaders", json=False, changes=False, takes=None),
    Route(
        "POST",
        "/leaders/training",
        json=False,
        changes=True,
        takes="supporter",
        form=lambda ids: {"supporter_id": ids.supporter_id, "training": "One-to-ones"},
    ),
    Route("POST", "/sign-out", json=False, changes=True, takes=None),
    Route("DELETE", "/v1/organisers/session", json=True, changes=True, takes=None),
    Route("GET", "/v1/organisers/queue", json=True, changes=False, takes=None),
    Route("GET", "/v1/organisers/tasks/{task_id}", json=True, changes=False, takes="task"),
    Route("POST", "/v1/organisers/tasks/{task_id}/claim", json=True, changes=True, takes="task"),
    Route("POST", "/v1/organisers/tasks/{task_id}/release", json=True, changes=True, takes="task"),
    Route(
        "POST",
        "/v1/organisers/tasks/{task_id}/outcome",
        json=True,
        changes=True,
        takes="task",
        form=lambda ids: {"outcome": "reached_committed", "commitment": "host"},
    ),
    Route("GET", "/v1/organisers/escalations", json=True, changes=False, takes=None),
    Route(
        "GET", "/v1/organisers/groups/{group_id}/leaders", json=True, changes=False, takes="group"
    ),
    Route(
        "POST",
        "/v1/organisers/trainings",
        json=True,
        changes=True,
        takes="supporter",
        form=lambda ids: {"supporter_id": ids.supporter_id, "training": "One-to-ones"},
    ),
]
PUBLIC = {
    ("GET", "/"),
    ("GET", "/sign-in"),
    ("POST", "/sign-in"),
    ("POST", "/v1/organisers/session"),
}
"""The organisers' routes anyone may reach: where to sign in, and signing in."""
HACKNEYS = Ids(task_id=JO_TASK, group_id="hackney", supporter_id=JO)
"""Ids of Hackney's (Asha's and Ben's): another group's to Cat."""


def test_every_organiser_route_is_in_the_access_tests(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A new page or endpoint fails here until it is added to ROUTES (and so to the tests of
    access below) or, if anyone may reach it, to PUBLIC."""
    routers = organiser_routers(settings, sessions, engine_for())
    served = {
        (method, route.path)
        for router in routers
        for route in router.routes
        for method in getattr(route, "methods", ())
        if method != "HEAD"
    }
    assert served == {(r.method, r.path) for r in ROUTES} | PUBLIC


@pytest.mark.parametrize("route", [r for r in ROUTES if r.takes], ids=str)
def test_another_groups_ids_are_not_found_and_nothing_changes(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session], route: Route
) -> None:
    asha = signed_in(browsers, "asha")
    assert (
        asha.http.post(
            f"/v1/organisers/tasks/{JO_TASK}/claim", headers={CSRF_HEADER: asha.csrf}
        ).status_code
        == 200
    )
    before = _task_state(sessions, JO_TASK)
    cat = signed_in(browsers, "cat")

    response = cat.send(route, HACKNEYS)

    assert response.status_code == 404
    if route.json:
        assert response.json()["detail"][0]["reason"].startswith("no ")
    else:
        assert "Not found" in response.text
    assert _task_state(sessions, JO_TASK) == before
    assert _ledger_topics(sessions) == []  # no outcome, no training recorded


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("session", ["expired", "none", "signed_out"])
def test_without_a_live_session_a_page_goes_to_the_sign_in_and_json_is_401(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session], route: Route, session: str
) -> None:
    ben = signed_in(browsers, "ben")
    if session == "expired":
        with sessions.begin() as db:
            db.execute(
                update(OrganiserSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    elif session == "none":
        ben.http.cookies.clear()
    else:
        old = ben.token
        (sign_out,) = (r for r in ROUTES if r.path == "/sign-out")
        assert ben.send(sign_out, HACKNEYS).status_code == 303
        ben.http.cookies.set(SESSION_COOKIE, old)
    before = _task_state(sessions, JO_TASK)

    response = ben.send(route, HACKNEYS)

    if route.json:
        assert response.status_code == 401
        assert "Jo" not in response.text
    else:
        assert response.status_code == 303
        assert response.headers["location"].startswith("/sign-in")
    assert _task_state(sessions, JO_TASK) == before
    assert _ledger_topics(sessions) == []


@pytest.mark.parametrize("route", [r for r in ROUTES if r.changes], ids=str)
@pytest.mark.parametrize("csrf", [None, "wrong", "another session's"])
def test_a_change_without_this_sessions_csrf_token_is_refused(
    browsers: Callable[[], Browser],
    sessions: sessionmaker[Session],
    route: Route,
    csrf: str | None,
) -> None:
    asha = signed_in(browsers, "asha")
    other = signed_in(browsers, "asha").csrf  # Asha signed in on another phone
    token = {None: None, "wrong": "x" * 43, "another session's": other}[csrf]
    before = _task_state(sessions, JO_TASK)

    response = asha.send(route, HACKNEYS, csrf=token)

    assert response.status_code == 403
    assert _task_state(sessions, JO_TASK) == before
    assert _ledger_topics(sessions) == []
    assert asha.http.get("/v1/organisers/queue").status_code == 200  # still signed in


def test_with_the_token_each_change_goes_through(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    """The refusals above are the token's doing: the same requests with it succeed."""
    asha = signed_in(browsers, "asha")
    answers = {
        str(route): asha.send(route, HACKNEYS).status_code
        for route in ROUTES
        if route.changes and route.takes and route.method == "POST" and not route.json
    }
    assert answers == {
        "POST /tasks/{task_id}/claim": 303,
        "POST /tasks/{task_id}/release": 303,
        "POST /tasks/{task_id}/outcome": 303,
        "POST /leaders/training": 303,
    }
    assert _task_state(sessions, JO_TASK)[0] == "done"
    assert _ledger_topics(sessions) == ["task.outcome", "training.completed"]


def _task_state(sessions: sessionmaker[Session], task_id: str) -> tuple[Any, ...]:
    with sessions() as session:
        task = session.get(FollowUpTask, task_id)
        assert task is not None
        changes = session.scalar(
            select(TaskEvent.id).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id.desc())
        )
        return (task.status, task.claimed_by, task.attempts, changes)


def _ledger_topics(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(LedgerEvent.topic).order_by(LedgerEvent.seq)))


# --- signing in --------------------------------------------------------------------------------


def test_the_root_url_leads_to_the_sign_in_and_then_to_the_queue(
    browsers: Callable[[], Browser],
) -> None:
    visitor = browsers()
    first = visitor.http.get("/")
    assert (first.status_code, first.headers["location"]) == (303, "/sign-in")
    form = visitor.http.get("/sign-in")
    assert form.status_code == 200
    assert '<html lang="en">' in form.text
    token = _field(form.text, "csrf_token")

    signed = visitor.http.post(
        "/sign-in",
        data={"csrf_token": token, "organiser_id": "asha", "password": PASSWORD},
    )

    assert (signed.status_code, signed.headers["location"]) == (303, "/queue")
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # the public URL is http here
    assert visitor.http.get("/").headers["location"] == "/queue"
    queue = visitor.http.get("/queue")
    assert queue.status_code == 200 and "<h1>Your queue</h1>" in queue.text


def test_a_page_asked_for_before_signing_in_is_shown_after_it(
    browsers: Callable[[], Browser],
) -> None:
    visitor = browsers()
    path = f"/tasks/{quote(JO_TASK, safe='')}"
    asked = visitor.http.get(path)
    assert asked.headers["location"] == f"/sign-in?next={quote(path, safe='')}"
    form = visitor.http.get(asked.headers["location"])
    mistyped = visitor.http.post(
        "/sign-in",
        data={
            "csrf_token": _field(form.text, "csrf_token"),
            "next": _field(form.text, "next"),
            "organiser_id": "asha",
            "password": "not the password",
        },
    )
    assert mistyped.status_code == 401 and _field(mistyped.text, "next") == path
    signed = visitor.http.post(
        "/sign-in",
        data={
            "csrf_token": _field(mistyped.text, "csrf_token"),
            "next": _field(mistyped.text, "next"),
            "organiser_id": "asha",
            "password": PASSWORD,
        },
    )
    assert signed.headers["location"] == path
    evil = visitor.http.get("/sign-in?next=//evil.example/")
    assert 'name="next"' not in evil.text  # only this site's pages


@pytest.mark.parametrize("token", ["missing", "mismatched"])
def test_the_sign_in_form_needs_its_double_submit_token(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session], token: str
) -> None:
    visitor = browsers()
    form = visitor.http.get("/sign-in")
    given = {"missing": {}, "mismatched": {"csrf_token": "y" * 43}}[token]
    assert _field(form.text, "csrf_token") != "y" * 43

    refused = visitor.http.post(
        "/sign-in", data={**given, "organiser_id": "asha", "password": PASSWORD}
    )

    assert refused.status_code == 403
    assert SESSION_COOKIE not in visitor.http.cookies
    assert _live_sessions(sessions) == 0


def test_an_unknown_id_and_a_wrong_password_get_the_same_answer(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    visitor = browsers()
    unknown = visitor.sign_in("nobody", PASSWORD)
    wrong = visitor.sign_in("asha", "not the password at all")
    with sessions.begin() as db:
        directory.disable_organiser(db, "ben", datetime.now(UTC))
    disabled = visitor.sign_in("ben", PASSWORD)

    assert unknown.status_code == wrong.status_code == disabled.status_code == 401
    assert unknown.json() == wrong.json() == disabled.json()
    assert unknown.json()["detail"][0]["reason"] == NOT_RECOGNISED
    pages = []
    for organiser_id, password in (("nobody", PASSWORD), ("asha", "not the password at all")):
        form = visitor.http.get("/sign-in")
        page = visitor.http.post(
            "/sign-in",
            data={
                "csrf_token": _field(form.text, "csrf_token"),
                "organiser_id": organiser_id,
                "password": password,
            },
        )
        pages.append((page.status_code, _alert(page.text)))
    assert pages == [(401, NOT_RECOGNISED), (401, NOT_RECOGNISED)]
    assert _live_sessions(sessions) == 0


def test_sign_in_is_rate_limited_per_client_with_retry_after(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    """Five failures in 15 minutes from one address: the sixth attempt is refused with 429
    and Retry-After, even with the right password, on the page and the JSON endpoint alike.
    (The per-organiser-id limit is the same counter keyed by id: tests/unit.)"""
    visitor = browsers()
    for n in range(5):
        assert visitor.sign_in(f"guess{n}", "wrong password!").status_code == 401

    refused = visitor.sign_in("asha", PASSWORD)
    form = visitor.http.get("/sign-in")
    page = visitor.http.post(
        "/sign-in",
        data={
            "csrf_token": _field(form.text, "csrf_token"),
            "organiser_id": "asha",
            "password": PASSWORD,
        },
    )

    assert refused.status_code == 429
    assert 14 * 60 < int(refused.headers["retry-after"]) <= 15 * 60
    assert page.status_code == 429 and page.headers["retry-after"]
    assert "Too many failed sign-ins" in _alert(page.text)
    assert _live_sessions(sessions) == 0


def test_passwords_are_stored_as_argon2id_and_never_logged(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    with structlog.testing.capture_logs() as logs:
        assert browsers().sign_in("asha").status_code == 200
        assert browsers().sign_in("asha", "a wrong password").status_code == 401
    with sessions() as db:
        hashes = list(db.scalars(select(Organiser.password_hash)))
        stored_tokens = list(db.scalars(select(OrganiserSession.token_hash)))
    assert len(hashes) == 4 and all(h and h.startswith("$argon2id$") for h in hashes)
    assert all(PASSWORD not in (h or "") for h in hashes)
    assert len(set(hashes)) == 4  # salted
    assert all(re.fullmatch(r"[0-9a-f]{64}", t) for t in stored_tokens)
    text = repr(logs)
    assert PASSWORD not in text and "a wrong password" not in text
    assert [e.get("result") for e in logs if e["event"] == "organiser.sign_in"] == [
        "signed_in",
        "not_recognised",
    ]


def test_a_password_is_too_short_under_ten_characters(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as db:
        directory.add_organiser(db, "dee", "Dee", [], datetime.now(UTC))
        with pytest.raises(ValueError, match="password: at least 10 characters"):
            directory.set_password(db, "dee", "too short", datetime.now(UTC))


# --- sessions ----------------------------------------------------------------------------------


def test_a_session_stores_only_its_tokens_hash_and_expires_after_its_hours(
    sessions: sessionmaker[Session],
) -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with sessions.begin() as db:
        directory.add_organiser(db, "dee", "Dee", [], now)
        started = start_session(db, "dee", now, timedelta(hours=12))
    with sessions() as db:
        (row,) = db.scalars(select(OrganiserSession)).all()
        assert row.token_hash == token_hash(started.token) != started.token
        assert row.expires_at == now + timedelta(hours=12)
    with sessions.begin() as db:
        live = current_session(db, started.token, now + timedelta(hours=11, minutes=59))
        assert live is not None and live.organiser_id == "dee"
    with sessions.begin() as db:
        assert current_session(db, started.token, now + timedelta(hours=12)) is None
    with sessions() as db:
        assert db.scalars(select(OrganiserSession)).all() == []  # deleted on the way


def test_disabling_an_organiser_or_changing_their_password_ends_their_sessions(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    ben, asha = signed_in(browsers, "ben"), signed_in(browsers, "asha")
    with sessions.begin() as db:
        directory.disable_organiser(db, "ben", datetime.now(UTC))
        directory.set_password(db, "asha", "a brand new password", datetime.now(UTC))

    assert ben.http.get("/v1/organisers/queue").status_code == 401
    assert asha.http.get("/queue").headers["location"].startswith("/sign-in")
    assert browsers().sign_in("asha", PASSWORD).status_code == 401
    assert browsers().sign_in("asha", "a brand new password").status_code == 200


def test_signing_out_deletes_the_session(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    asha = signed_in(browsers, "asha")
    token = asha.token
    out = asha.http.post("/sign-out", data={"csrf_token": asha.csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/sign-in?signed_out=1")
    assert (
        'engage_session=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    )
    with sessions() as db:
        assert db.get(OrganiserSession, token_hash(token)) is None
    json_user = signed_in(browsers, "asha")
    gone = json_user.http.delete("/v1/organisers/session", headers={CSRF_HEADER: json_user.csrf})
    assert gone.status_code == 204
    assert json_user.http.get("/v1/organisers/queue").status_code == 401


def test_the_cookie_is_secure_when_the_public_url_is_https(
    settings: Settings, people: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    engines: list[Engine] = []

    def recording_make_engine(url: str, **kwargs: Any) -> Engine:
        engines.append(make_engine(url, **kwargs))
        return engines[-1]

    monkeypatch.setattr(engage.wiring, "make_engine", recording_make_engine)
    app = engage.webapp.create_app(
        settings.model_copy(update={"public_url": "https://organise.example.org"})
    )

    async def sign_in() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://test") as client:
            return await client.post(
                "/v1/organisers/session", json={"organiser_id": "asha", "password": PASSWORD}
            )

    try:
        response = asyncio.run(sign_in())
    finally:
        for made in engines:
            made.dispose()
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_a_json_sign_in_must_be_json(browsers: Callable[[], Browser]) -> None:
    """A cross-site form can post text/plain that looks like JSON; only application/json
    (which such a form cannot send) signs in."""
    visitor = browsers()
    body = '{"organiser_id": "asha", "password": "' + PASSWORD + '"}'
    refused = visitor.http.post(
        "/v1/organisers/session", content=body, headers={"content-type": "text/plain"}
    )
    assert refused.status_code == 415
    assert SESSION_COOKIE not in visitor.http.cookies


# --- what the pages show -----------------------------------------------------------------------


def test_the_phone_only_on_a_task_i_claimed_and_never_an_email(
    browsers: Callable[[], Browser],
) -> None:
    asha = signed_in(browsers, "asha")
    task_page = f"/tasks/{quote(JO_TASK, safe='')}"
    reads = [task_page, "/queue", "/queue/items", "/leaders", f"/v1/organisers/tasks/{JO_TASK}"]
    reads += ["/v1/organisers/queue", "/v1/organisers/escalations"]
    reads += ["/v1/organisers/groups/hackney/leaders"]

    before = {path: asha.http.get(path) for path in reads}
    claimed = asha.http.post(f"{task_page}/claim", data={"csrf_token": asha.csrf})
    after = {path: asha.http.get(path) for path in reads}
    claimed_json = asha.http.post(
        f"/v1/organisers/tasks/{JO_TASK}/claim", headers={CSRF_HEADER: asha.csrf}
    )
    ben_view = signed_in(browsers, "ben").http.get(task_page)

    assert claimed.status_code == 303
    everything = [*before.values(), *after.values(), claimed_json, ben_view]
    assert all(r.status_code == 200 for r in everything)
    for response in everything:
        assert JO_EMAIL not in response.text and "@example.org" not in response.text
    for path, response in before.items():
        assert JO_PHONE not in response.text and JO_PHONE_DIALLED not in response.text, path
    assert f'href="tel:{JO_PHONE}"' in after[task_page].text
    assert JO_PHONE_DIALLED in after[task_page].text
    assert after[f"/v1/organisers/tasks/{JO_TASK}"].json()["item"]["phone"] == JO_PHONE
    assert claimed_json.json()["item"]["phone"] == JO_PHONE
    assert JO_PHONE not in ben_view.text and "Claimed by asha" in ben_view.text


def test_the_page_lists_the_queue_in_the_order_the_operations_give(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    """Overdue first, then by due time, then priority: the page, the fragment it refreshes
    from and the JSON endpoint all keep FollowUps.queue's order."""
    now = datetime.now(UTC)
    more = [f"sup_{n:032x}" for n in range(10, 14)]
    with sessions.begin() as db:
        for n, sid in enumerate(more):
            db.add(Supporter(supporter_id=sid, first_name=f"P{n}", postcode="E8 2BB"))
        db.flush()
        store_tasks(
            db,
            [
                created(more[0], now + timedelta(hours=5), priority="low"),
                created(more[1], now - timedelta(hours=3)),  # overdue
                created(more[2], now + timedelta(hours=5), priority="high"),
                created(more[3], now - timedelta(hours=1), kind="check_in"),  # overdue
            ],
            now,
        )
    asha = signed_in(browsers, "asha")

    expected = [i["task_id"] for i in asha.http.get("/v1/organisers/queue").json()["items"]]
    page = _task_ids(asha.http.get("/queue").text)
    fragment = _task_ids(asha.http.get("/queue/items").text)

    assert expected == [
        f"first_meeting_follow_up:{more[1]}",
        f"check_in:{more[3]}",
        f"first_meeting_follow_up:{more[2]}",
        f"first_meeting_follow_up:{more[0]}",
        JO_TASK,
    ]
    assert page == fragment == expected


def test_an_empty_queue_says_why_and_escalations_are_for_leads(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    ada, ben, asha = (signed_in(browsers, o) for o in ("ada", "ben", "asha"))
    ben.http.post(f"/tasks/{quote(JO_TASK, safe='')}/claim", data={"csrf_token": ben.csrf})

    assert "You are not in any group yet" in ada.http.get("/queue").text
    assert (
        "Everything is claimed: 1 task(s) are with other organisers" in asha.http.get("/queue").text
    )
    assert ">Escalations</h2>" in asha.http.get("/queue").text
    assert ">Escalations</h2>" not in ben.http.get("/queue").text
    assert ben.http.get("/queue?national=1").status_code == 403
    national = ada.http.get("/queue?national=1")
    assert national.status_code == 200 and "National queue" in national.text
    assert ben.http.get("/v1/organisers/escalations").status_code == 403


def test_an_outcome_recorded_on_the_page_reaches_the_log(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    asha = signed_in(browsers, "asha")
    path = f"/tasks/{quote(JO_TASK, safe='')}"
    page = asha.http.get(path).text
    assert 'value="reached_committed:host"' in page and 'value="do_not_contact"' in page

    too_long = asha.http.post(
        f"{path}/outcome",
        data={"csrf_token": asha.csrf, "outcome": "no_answer", "note": "x" * 281},
    )
    done = asha.http.post(
        f"{path}/outcome",
        data={"csrf_token": asha.csrf, "outcome": "reached_committed:host", "note": "keen"},
    )

    assert too_long.status_code == 422 and "note: at most 280 characters" in too_long.text
    assert (done.status_code, done.headers["location"]) == (
        303,
        "/queue?recorded=reached_committed",
    )
    assert "Recorded: Reached: committed." in asha.http.get(done.headers["location"]).text
    assert _task_state(sessions, JO_TASK)[0] == "done"
    with sessions() as db:
        (payload,) = db.scalars(
            select(LedgerEvent.payload).where(LedgerEvent.topic == "task.outcome")
        )
    assert '"commitment":"host"' in payload.replace(" ", "")
    again = asha.http.post(
        f"{path}/outcome", data={"csrf_token": asha.csrf, "outcome": "no_answer"}
    )
    assert again.status_code == 409


def test_the_json_endpoints_work_a_task_from_sign_in_to_outcome(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    asha = browsers()
    signed = asha.sign_in("asha")
    assert signed.status_code == 200
    assert signed.json()["groups"] == ["hackney"] and signed.json()["leads"] == ["hackney"]
    headers = {CSRF_HEADER: asha.csrf}

    queue = asha.http.get("/v1/organisers/queue").json()
    claimed = asha.http.post(f"/v1/organisers/tasks/{JO_TASK}/claim", headers=headers)
    invalid = asha.http.post(
        f"/v1/organisers/tasks/{JO_TASK}/outcome",
        json={"outcome": "reached_not_now", "commitment": "host"},
        headers=headers,
    )
    done = asha.http.post(
        f"/v1/organisers/tasks/{JO_TASK}/outcome",
        json={"outcome": "reached_committed", "commitment": "lead", "note": "wants a team"},
        headers=headers,
    )
    again = asha.http.post(f"/v1/organisers/tasks/{JO_TASK}/claim", headers=headers)
    leaders = asha.http.get("/v1/organisers/groups/hackney/leaders").json()
    training = asha.http.post(
        "/v1/organisers/trainings",
        json={"supporter_id": JO, "training": "One-to-ones", "at": "2026-01-05T18:00:00Z"},
        headers=headers,
    )
    repeat = asha.http.post(
        "/v1/organisers/trainings",
        json={"supporter_id": JO, "training": "one-to-ones", "at": "2026-01-05T19:00:00Z"},
        headers=headers,
    )

    assert [i["task_id"] for i in queue["items"]] == [JO_TASK] and queue["empty_because"] is None
    assert claimed.status_code == 200 and claimed.json()["item"]["claimed_by"] == "asha"
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["field"] == "commitment"
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["commitment"]) == ("done", "lead")
    assert again.status_code == 409 and again.json()["detail"][0]["field"] == "task_id"
    assert [c["first_name"] for c in leaders["candidates"]] == ["Jo"]
    assert training.status_code == 200 and training.json()["new"] is True
    assert repeat.status_code == 200 and repeat.json()["new"] is False
    assert _ledger_topics(sessions) == ["task.outcome", "training.completed"]


def test_a_name_with_markup_is_shown_as_text(
    browsers: Callable[[], Browser], sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as db:
        jo = db.get(Supporter, JO)
        assert jo is not None
        jo.first_name = '<script>alert("x")</script>'
    asha = signed_in(browsers, "asha")
    for path in ("/queue", f"/tasks/{quote(JO_TASK, safe='')}", "/leaders"):
        page = asha.http.get(path).text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_organisers_set_a_password_from_stdin_never_an_argument(
    database_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    saved = structlog.get_config()
    try:
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        assert cli.main(["organisers", "add", "dee", "--name", "Dee", "--password-stdin"]) == 0
        monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
        assert cli.main(["organisers", "password", "dee"]) == 2
        assert "password: at least 10 characters" in capsys.readouterr().err
        monkeypatch.setattr("sys.stdin", io.StringIO("another good password\n"))
        assert cli.main(["organisers", "password", "dee"]) == 0
        assert cli.main(["organisers", "add", "eve", "--name", "Eve"]) == 0
        out = capsys.readouterr().out
    finally:
        structlog.configure(**saved)
    assert "no password (cannot sign in)" in out.splitlines()[-1]
    assert PASSWORD not in out
    with sessions() as db:
        stored = db.get(Organiser, "dee")
        assert stored is not None and stored.password_hash
        assert stored.password_hash.startswith("$argon2id$")
    with pytest.raises(SystemExit):
        cli.main(["organisers", "add", "fay", "--name", "Fay", "--password", PASSWORD])


# --- helpers ----------------------------------------------------------------------------------


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no field {name}"
    return found.group(1)


def _alert(html: str) -> str:
    found = re.search(r'role="alert">([^<]*)<', html)
    return found.group(1) if found else ""


def _task_ids(html: str) -> list[str]:
    return re.findall(r'data-task-id="([^"]+)"', html)


def _live_sessions(sessions: sessionmaker[Session]) -> int:
    with sessions() as db:
        return len(db.scalars(select(OrganiserSession.token_hash)).all())
