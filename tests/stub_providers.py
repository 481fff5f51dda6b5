"""A local stand-in for the SendGrid and Twilio APIs: records requests, answers as scripted,
keeps the messages it accepted (for lookups and exactly-once counts), and can kill the sender."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

SENDGRID_PATH = "/v3/mail/send"
SENDGRID_LOOKUP_PATH = "/v3/messages"
TWILIO_PREFIX = "/2010-04-01/Accounts/"
TWILIO_SUFFIX = "/Messages.json"
_NUDGE_QUERY = re.compile(r"""^\s*unique_args\['nudge_id'\]\s*=\s*"([^"]*)"\s*$""")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it."""

    method: str
    path: str
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        """A header's value, case-insensitively; None when absent."""
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The form-encoded body as a dict (one value per field)."""
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass(frozen=True)
class Scripted:
    """How to answer one request. ``status`` None gives the normal answer, after ``delay_s``."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class AcceptedSend:
    """A message the stub took: what a provider would have on record, and show in lookups.

    ``key`` is what tests count sends by: the ``nudge_id`` custom argument of a SendGrid mail
    (empty when it has none), the ``To`` number of a Twilio message.
    """

    provider: Literal["sendgrid", "twilio"]
    message_id: str
    key: str
    to: str
    sender: str
    body: str
    created_at: datetime
    account_sid: str | None = None


class StubProviders:
    """``with StubProviders() as stub:`` serves on ``stub.url`` (127.0.0.1, a free port).

    Normal answers: SendGrid ``POST /v3/mail/send`` -> 202 with ``X-Message-Id``; Twilio
    ``POST /2010-04-01/Accounts/{sid}/Messages.json`` -> 201 JSON message resource, status
    queued; anything else -> 404. ``script(...)`` queues answers for the next requests.

    A send answered normally (also late, with ``delay_s``) is kept in ``accepted`` the moment
    its request is read, before any answer; a scripted refusal, a ``drop`` or a truncated
    request is not. Kept sends are what the lookups show: SendGrid ``GET /v3/messages?query=
    unique_args['nudge_id']="X"`` (the Email Activity API) and Twilio ``GET .../Messages.json``
    filtered by ``To``, ``From`` and ``DateSent>``. ``kill_on`` SIGKILLs the sender process
    between keeping a send and answering it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._scripted: deque[Scripted] = deque()
        self._accepted: list[AcceptedSend] = []
        self._killer: Callable[[], int | None] | None = None
        self._kill_every = 0
        self._sends_seen = 0
        self._killed: list[AcceptedSend] = []
        self._kill_skips = 0
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def received(self) -> int:
        """How many requests have arrived so far (cheaper than ``len(requests)``)."""
        with self._lock:
            return len(self._requests)

    @property
    def accepted(self) -> list[AcceptedSend]:
        """Every send the stub kept, oldest first (a copy)."""
        with self._lock:
            return list(self._accepted)

    def sends_by_key(self) -> Counter[str]:
        """How many kept sends there are per key (SendGrid: nudge id; Twilio: To number)."""
        with self._lock:
            return Counter(send.key for send in self._accepted)

    def forget(self, key: str) -> int:
        """Drop the kept sends with this key, as if the provider never took them; how many."""
        with self._lock:
            kept = [send for send in self._accepted if send.key != key]
            forgotten = len(self._accepted) - len(kept)
            self._accepted = kept
            return forgotten

    def kill_on(self, pid: Callable[[], int | None], every: int) -> None:
        """From now on, SIGKILL process ``pid()`` on every ``every``-th kept send: after the
        send is kept and before it is answered (the connection is then closed unanswered).
        ``pid()`` returning None skips that kill (counted in ``kill_skips``)."""
        if every < 1:
            raise ValueError("every must be at least 1")
        with self._lock:
            self._killer, self._kill_every, self._sends_seen = pid, every, 0

    def kill_off(self) -> None:
        with self._lock:
            self._killer = None

    @property
    def kills(self) -> int:
        """Processes killed by the ``kill_on`` hook so far."""
        with self._lock:
            return len(self._killed)

    @property
    def killed(self) -> list[AcceptedSend]:
        """The kept sends whose answer never went, because the hook killed their sender."""
        with self._lock:
            return list(self._killed)

    @property
    def kill_skips(self) -> int:
        """Kills that were due when ``pid()`` returned None."""
        with self._lock:
            return self._kill_skips

    def script(
        self,
        status: int | None = None,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | str | dict[str, Any] = b"",
        delay_s: float = 0.0,
        drop: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with ``status``, ``headers`` and ``body``.

        A dict body is sent as JSON. ``status`` None keeps the normal answer (to delay it);
        ``drop`` closes the connection without answering once the request is read.
        """
        if isinstance(body, dict):
            raw = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        else:
            raw = body.encode() if isinstance(body, str) else body
        answer = Scripted(status, dict(headers or {}), raw, delay_s, drop)
        with self._lock:
            self._scripted.extend([answer] * times)

    def __enter__(self) -> StubProviders:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, request: RecordedRequest) -> Scripted | None:
        with self._lock:
            self._requests.append(request)
            return self._scripted.popleft() if self._scripted else None

    def _keep(self, send: AcceptedSend) -> bool:
        """Keep an accepted send; True when the kill hook killed its sender (do not answer)."""
        with self._lock:
            self._accepted.append(send)
            killer = self._killer
            if killer is None:
                return False
            self._sends_seen += 1
            if self._sends_seen % self._kill_every:
                return False
        pid = killer()  # outside the lock: the test's own bookkeeping may take locks
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pid = None
        with self._lock:
            if pid is None:
                self._kill_skips += 1
                return False
            self._killed.append(send)
            return True

    def _sendgrid_messages(self, nudge_id: str, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            found = [s for s in self._accepted if s.provider == "sendgrid" and s.key == nudge_id]
        return [
            {
                "msg_id": s.message_id,
                "from_email": s.sender,
                "to_email": s.to,
                "status": "delivered",
                "opens_count": 0,
                "clicks_count": 0,
                "last_event_time": s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for s in found[:limit]
        ]

    def _twilio_messages(self, account_sid: str, query: dict[str, str]) -> list[AcceptedSend]:
        """Newest first, like Twilio."""
        after = _date_filter(query.get("DateSent>"))
        with self._lock:
            found = [
                s
                for s in self._accepted
                if s.provider == "twilio"
                and s.account_sid == account_sid
                and ("To" not in query or s.to == query["To"])
                and ("From" not in query or s.sender == query["From"])
            ]
        if isinstance(after, datetime):
            found = [s for s in found if s.created_at.replace(microsecond=0) >= after]
        elif after is not None:
            found = [s for s in found if s.created_at.date() >= after]
        return found[::-1]

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the stub closes."""
        self._closing.wait(seconds)


def _date_filter(value: str | None) -> datetime | date | None:
    """Twilio's ``DateSent>`` value: an ISO date, or the SDK's ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not value:
        return None
    if "T" not in value:
        return date.fromisoformat(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _twilio_resource(send: AcceptedSend, listed: bool) -> dict[str, Any]:
    """The Message resource: queued as created, sent (with ``date_sent``) when listed."""
    created = format_datetime(send.created_at.replace(microsecond=0), usegmt=True)
    uri = f"{TWILIO_PREFIX}{send.account_sid}/Messages/{send.message_id}.json"
    return {
        "sid": send.message_id,
        "account_sid": send.account_sid,
        "api_version": "2010-04-01",
        "to": send.to or None,
        "from": send.sender or None,
        "body": send.body or None,
        "status": "sent" if listed else "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "num_media": "0",
        "price": None,
        "price_unit": "USD",
        "error_code": None,
        "error_message": None,
        "date_created": created,
        "date_updated": created,
        "date_sent": created if listed else None,
        "uri": uri,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: StubProviders

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected in these tests; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    # Headers and body go in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (40 ms a request on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        stub = self.server.stub
        scripted = stub._record(RecordedRequest(self.command, self.path, self.headers, body))
        if len(body) < length:  # the client died while writing: nothing to take
            self.close_connection = True
            return
        normal = scripted is None or (scripted.status is None and not scripted.drop)
        given_id = scripted.headers.get("X-Message-Id") if scripted is not None else None
        accepted = self._accept(body, given_id) if normal else None
        if accepted is not None and stub._keep(accepted[0]):
            self.close_connection = True  # its sender was killed before the answer
            return
        if scripted is not None and scripted.delay_s:
            stub._wait(scripted.delay_s)
        if scripted is not None and scripted.drop:
            self.close_connection = True
            return
        if scripted is not None and scripted.status is not None:
            self._answer(scripted.status, scripted.headers, scripted.body)
            return
        status, headers, answer = accepted[1] if accepted is not None else self._normal()
        if scripted is not None:
            headers.update(scripted.headers)
        self._answer(status, headers, answer)

    def _twilio_account(self, path: str) -> str | None:
        if path.startswith(TWILIO_PREFIX) and path.endswith(TWILIO_SUFFIX):
            return path[len(TWILIO_PREFIX) : -len(TWILIO_SUFFIX)]
        return None

    def _accept(
        self, body: bytes, given_id: str | None = None
    ) -> tuple[AcceptedSend, tuple[int, dict[str, str], bytes]] | None:
        """A send request taken: what is kept, and the normal answer (``given_id``: a scripted
        X-Message-Id, kept as the mail's id). None: not a send."""
        path = urllib.parse.urlsplit(self.path).path
        now = datetime.now(UTC)
        if self.command == "POST" and path == SENDGRID_PATH:
            message_id = given_id or f"sg-{uuid.uuid4().hex[:22]}"
            send = _sendgrid_send(body, message_id, now)
            return send, (202, {"X-Message-Id": message_id}, b"")
        account_sid = self._twilio_account(path)
        if self.command == "POST" and account_sid is not None:
            form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
            to = form.get("To", "")
            send = AcceptedSend(
                provider="twilio",
                message_id=f"SM{uuid.uuid4().hex}",
                key=to,
                to=to,
                sender=form.get("From", ""),
                body=form.get("Body", ""),
                created_at=now,
                account_sid=account_sid,
            )
            resource = _twilio_resource(send, listed=False)
            return send, (201, {"Content-Type": "application/json"}, json.dumps(resource).encode())
        return None

    def _normal(self) -> tuple[int, dict[str, str], bytes]:
        """The normal answer to anything but a send: the lookups, else 404."""
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        json_type = {"Content-Type": "application/json"}
        stub = self.server.stub
        if self.command == "GET" and split.path == SENDGRID_LOOKUP_PATH:
            match = _NUDGE_QUERY.match(query.get("query", ""))
            if match is None:
                error = {"errors": [{"field": "query", "message": "invalid query"}]}
                return 400, json_type, json.dumps(error).encode()
            limit = int(query.get("limit") or 10)
            found = {"messages": stub._sendgrid_messages(match.group(1), limit)}
            return 200, json_type, json.dumps(found).encode()
        account_sid = self._twilio_account(split.path)
        if self.command == "GET" and account_sid is not None:
            size = int(query.get("PageSize") or 50)
            listed = stub._twilio_messages(account_sid, query)[:size]
            uri = self.path
            page = {
                "messages": [_twilio_resource(s, listed=True) for s in listed],
                "end": max(0, len(listed) - 1),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": size,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
            return 200, json_type, json.dumps(page).encode()
        missing = {"code": 20404, "message": "The requested resource was not found", "status": 404}
        return 404, json_type, json.dumps(missing).encode()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout tests)


def _sendgrid_send(body: bytes, message_id: str, now: datetime) -> AcceptedSend:
    """What SendGrid keeps of a v3 mail: the first recipient, the ``nudge_id`` custom argument
    (per personalization, else top level), the plain text; blanks for what a body lacks."""
    to = sender = text = nudge_id = ""
    try:
        mail = json.loads(body)
        personalization = mail["personalizations"][0]
        custom = {**(mail.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
        nudge_id = str(custom.get("nudge_id", ""))
        to = str(personalization["to"][0]["email"])
        sender = str(mail["from"]["email"])
        contents = mail.get("content") or []
        text = next((str(c["value"]) for c in contents if c.get("type") == "text/plain"), "")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass  # the mock answers 202 whatever it gets; the test asserts on the request
    return AcceptedSend("sendgrid", message_id, nudge_id, to, sender, text, now)
