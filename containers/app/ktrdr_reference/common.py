"""What the backend, the worker and the probe share: env reading, validation, HTTP, signals.

The HTTP side is a deliberately tiny framework: an app is a function from `Request` to
`Response`, so the endpoint logic is tested without sockets, and `serve_http` owns the socket
details (body limits, shutdown answers, quiet access logs) in one place.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

WORKER_TYPES = ("backtesting", "training")
WORKER_ID_MAX = 128
URL_MAX = 2048
MAX_BODY_BYTES = 64 * 1024
# While shutting down every request gets 503 with this Retry-After, as KTRDR's backend does;
# workers wait that long before they try again.
SHUTDOWN_RETRY_AFTER = 5
# How often the main thread looks at the signal flag: bounds the reaction to SIGTERM.
SIGNAL_POLL_SECONDS = 0.1
# How often serve_forever looks at its shutdown request: bounds server.shutdown().
SERVE_POLL_SECONDS = 0.2
# A client that sends nothing for this long loses its connection (one thread each).
SOCKET_TIMEOUT_SECONDS = 10.0


class ConfigError(Exception):
    """The environment is missing a variable or holds a bad value. Exit status 2."""


# --- logging ---------------------------------------------------------------------------------


def log(component: str, message: str) -> None:
    """One line to stdout, flushed at once so `docker logs` shows it as it happens."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {component}: {message}", flush=True)


def one_line(text: object, limit: int = 300) -> str:
    """An error message squeezed onto one line (psycopg2's span several), bounded in length."""
    squeezed = " ".join(str(text).split())
    return squeezed if len(squeezed) <= limit else squeezed[: limit - 3] + "..."


# --- environment -----------------------------------------------------------------------------


def env_text(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A variable's value, stripped; `default` when unset or empty; ConfigError if neither."""
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} is not set: the container needs it in its environment")
    return default


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """A whole number from the environment, within [minimum, maximum] when given."""
    text = env_text(env, name, None if default is None else str(default))
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else str(minimum)
        high = "inf" if maximum is None else str(maximum)
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def env_optional_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    """A whole number, or None when the variable is unset or empty."""
    if not env.get(name, "").strip():
        return None
    return env_int(env, name, minimum=minimum)


# --- validation shared by the backend (HTTP 400) and the worker (exit 2) ---------------------


def check_worker_id(value: object) -> str:
    """A worker id: a non-empty string of letters, digits, '.', '_' or '-'."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("worker_id must be a non-empty string")
    if len(value) > WORKER_ID_MAX:
        raise ValueError(f"worker_id is longer than {WORKER_ID_MAX} characters")
    if not all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in value):
        raise ValueError(f"worker_id {value!r} may hold only letters, digits, '.', '_' and '-'")
    return value


def check_worker_type(value: object) -> str:
    if not isinstance(value, str) or value not in WORKER_TYPES:
        raise ValueError(f"worker_type must be one of {', '.join(WORKER_TYPES)}, not {value!r}")
    return value


def check_http_url(value: object, name: str) -> str:
    """An absolute http(s) URL with a host; trailing slashes removed."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > URL_MAX:
        raise ValueError(f"{name} is longer than {URL_MAX} characters")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, not {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError:
        raise ValueError(f"{name} has an invalid port: {value!r}") from None
    return value.strip().rstrip("/")


# --- HTTP: apps are functions from Request to Response ---------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Request:
        """A request from its method and request target (`/path?query`)."""
        parts = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        return cls(method.upper(), parts.path or "/", query, lowered, body)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # extra headers besides type and length

    def json(self) -> Any:
        """The body parsed as JSON (for tests and callers that built it)."""
        return json.loads(self.body)


App = Callable[[Request], Response]


Headers = tuple[tuple[str, str], ...]


def json_response(status: int, payload: object, headers: Headers = ()) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), "application/json", headers)


def error_response(status: int, detail: str, headers: Headers = ()) -> Response:
    """An error as FastAPI (and so KTRDR) shapes it: {"detail": "..."}."""
    return json_response(status, {"detail": detail}, headers)


def text_response(
    status: int, text: str, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    return Response(status, text.encode("utf-8"), content_type)


def shutting_down_response() -> Response:
    return error_response(503, "shutting down", (("Retry-After", str(SHUTDOWN_RETRY_AFTER)),))


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not hold the process at exit
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        port: int,
        app: App,
        shutdown: Shutdown,
        component: str,
        quiet_paths: Collection[str],
    ) -> None:
        self.app = app
        self.shutdown_flag = shutdown
        self.component = component
        self.quiet_paths = frozenset(quiet_paths)
        super().__init__(("0.0.0.0", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or stalled: one line, not socketserver's traceback on stderr.
        exc = sys.exc_info()[1]
        log(self.component, f"connection from {client_address[0]} failed: {one_line(repr(exc))}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT_SECONDS
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a shutdown.
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        return f"ktrdr-sandbox-{self.server.component}"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def do_POST(self) -> None:
        self._dispatch(send_body=True)

    def do_PUT(self) -> None:
        self._dispatch(send_body=True)

    def do_PATCH(self) -> None:
        self._dispatch(send_body=True)

    def do_DELETE(self) -> None:
        self._dispatch(send_body=True)

    def _dispatch(self, send_body: bool) -> None:
        response = self._respond()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def _respond(self) -> Response:
        if self.server.shutdown_flag.requested:
            return shutting_down_response()
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return error_response(411, "send a Content-Length; chunked bodies are not supported")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return error_response(400, "Content-Length is not a number")
        if length < 0:
            return error_response(400, "Content-Length is negative")
        if length > MAX_BODY_BYTES:
            return error_response(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length) if length else b""
        method = "GET" if self.command == "HEAD" else self.command
        request = Request.from_target(method, self.path, dict(self.headers.items()), body)
        try:
            return self.server.app(request)
        except Exception as exc:  # one bad request must not take the server down
            log(self.server.component, f"error on {method} {request.path}: {one_line(repr(exc))}")
            return error_response(500, f"internal error: {one_line(exc)}")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Healthchecks every 2 s would drown everything else: successful polls stay quiet.
        path = urllib.parse.urlsplit(self.path).path
        if path in self.server.quiet_paths and str(code).startswith("2"):
            return
        log(self.server.component, f"{self.client_address[0]} {self.requestline!r} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        log(self.server.component, one_line(format % args))


def serve_http(
    app: App,
    port: int,
    shutdown: Shutdown,
    component: str,
    quiet_paths: Collection[str] = (),
) -> ThreadingHTTPServer:
    """Start answering on 0.0.0.0:`port` in a background thread; stop with `stop_http`."""
    server = _Server(port, app, shutdown, component, quiet_paths)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SERVE_POLL_SECONDS},
        name=f"http-{port}",
        daemon=True,
    )
    thread.start()
    return server


def stop_http(server: ThreadingHTTPServer) -> None:
    """Stop accepting and close the socket; requests in flight finish on daemon threads."""
    server.shutdown()
    server.server_close()


# --- HTTP client -----------------------------------------------------------------------------

# No proxies: everything these programs call is on the Compose network or loopback, and an
# HTTP_PROXY that the engine injects into containers would otherwise swallow those calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def http_request(
    url: str,
    *,
    method: str = "GET",
    payload: object | None = None,
    timeout: float,
    user_agent: str = "ktrdr-reference",
) -> HttpReply:
    """One HTTP exchange. Any status comes back as a reply; no answer at all raises OSError
    (or http.client.HTTPException for a garbled one): see `describe_error`."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    headers = {"Accept": "application/json", "User-Agent": user_agent}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return HttpReply(reply.status, _lower(reply.headers.items()), reply.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpReply(err.code, _lower(err.headers.items()), err.read())


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed HTTP exchange ('connection refused', 'timed out')."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return one_line(exc.reason)
    return one_line(exc) or type(exc).__name__


# --- signals ---------------------------------------------------------------------------------


class Shutdown:
    """SIGTERM and SIGINT, turned into something every thread can look at.

    Handlers are installed explicitly because a process that is PID 1 in a container (no
    `init: true`) gets no default action for SIGTERM: without a handler it would ignore it.

    The handler only sets a boolean. Handlers run in the main thread between bytecodes,
    possibly while it holds a lock, so setting an Event from one can deadlock; instead the
    main thread polls in `wait_for_signal` and then sets `stopping` for the other threads.
    """

    def __init__(self) -> None:
        self._signal: int | None = None
        self.stopping = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signum

    @property
    def requested(self) -> bool:
        return self._signal is not None or self.stopping.is_set()

    def wait_for_signal(self) -> str:
        """Block the main thread until a signal arrives; return its name."""
        while self._signal is None and not self.stopping.is_set():
            time.sleep(SIGNAL_POLL_SECONDS)
        self.stopping.set()
        return signal.Signals(self._signal).name if self._signal is not None else "stop"


def fail_config(component: str, exc: ConfigError) -> int:
    """Report a bad environment as one line on stderr; the caller exits with what it returns."""
    print(f"{component}: configuration error: {exc}", file=sys.stderr, flush=True)
    return 2
