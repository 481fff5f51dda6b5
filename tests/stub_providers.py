"""A local stand-in for the SendGrid and Twilio APIs: records requests, answers as scripted."""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SENDGRID_PATH = "/v3/mail/send"
TWILIO_PREFIX = "/2010-04-01/Accounts/"
TWILIO_SUFFIX = "/Messages.json"


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


class StubProviders:
    """``with StubProviders() as stub:`` serves on ``stub.url`` (127.0.0.1, a free port).

    Normal answers: SendGrid ``POST /v3/mail/send`` -> 202 with ``X-Message-Id``; Twilio
    ``POST /2010-04-01/Accounts/{sid}/Messages.json`` -> 201 JSON message resource, status
    queued; anything else -> 404. ``script(...)`` queues answers for the next requests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._scripted: deque[Scripted] = deque()
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

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the stub closes."""
        self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: StubProviders

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected in these tests; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

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
        if scripted is not None and scripted.delay_s:
            stub._wait(scripted.delay_s)
        if scripted is not None and scripted.drop:
            self.close_connection = True
            return
        if scripted is not None and scripted.status is not None:
            self._answer(scripted.status, scripted.headers, scripted.body)
            return
        status, headers, answer = self._normal(body)
        if scripted is not None:
            headers.update(scripted.headers)
        self._answer(status, headers, answer)

    def _normal(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        path = urllib.parse.urlsplit(self.path).path
        if self.command == "POST" and path == SENDGRID_PATH:
            return 202, {"X-Message-Id": f"sg-{uuid.uuid4().hex[:22]}"}, b""
        if (
            self.command == "POST"
            and path.startswith(TWILIO_PREFIX)
            and path.endswith(TWILIO_SUFFIX)
        ):
            account_sid = path[len(TWILIO_PREFIX) : -len(TWILIO_SUFFIX)]
            form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
            sid = f"SM{uuid.uuid4().hex}"
            resource = {
                "sid": sid,
                "account_sid": account_sid,
                "api_version": "2010-04-01",
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "num_media": "0",
                "price": None,
                "price_unit": "USD",
                "error_code": None,
                "error_message": None,
                "date_created": self.date_time_string(),
                "date_updated": self.date_time_string(),
                "date_sent": None,
                "uri": f"{path[: -len('.json')]}/{sid}.json",
            }
            return 201, {"Content-Type": "application/json"}, json.dumps(resource).encode()
        error = {"code": 20404, "message": "The requested resource was not found", "status": 404}
        return 404, {"Content-Type": "application/json"}, json.dumps(error).encode()

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
