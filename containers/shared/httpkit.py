"""HTTP serving, signals and logging for the programs that run inside the images.

One module shared by the reference KTRDR backend and worker (`app/ktrdr_reference/`) and the
Jaeger and Grafana stand-ins (`standins/`). Every image that runs one of them copies this file
next to its code, so it is imported as the top-level module `httpkit`. Standard library only.

An app is a function from `Request` to `Response`, so endpoint logic is tested without
sockets; `serve_http` owns the socket details in one place (body limits and decoding, the 503
while shutting down, one-line errors, quiet access logs for health polls). Where the programs
differ, they say so with `Rules`.
"""

from __future__ import annotations

import gzip
import io
import json
import signal
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import Any, TypeVar

# While shutting down every request gets 503 with this Retry-After, as KTRDR's backend does;
# workers wait that long before they try again.
SHUTDOWN_RETRY_AFTER = 5
# How often the main thread looks at the signal flag: bounds the reaction to SIGTERM.
SIGNAL_POLL_SECONDS = 0.1
# How often serve_forever looks at its shutdown request: bounds stop_servers().
SERVE_POLL_SECONDS = 0.2


# --- logging ---------------------------------------------------------------------------------


def log(component: str, message: str) -> None:
    """One line to stdout, flushed at once so `docker logs` shows it as it happens."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {component}: {message}", flush=True)


def one_line(text: object, limit: int = 300) -> str:
    """An error message squeezed onto one line (psycopg2's span several), bounded in length."""
    squeezed = " ".join(str(text).split())
    return squeezed if len(squeezed) <= limit else squeezed[: limit - 3] + "..."


# --- requests and responses ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    query: Mapping[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Request:
        """A request from its method and request target (`/path?query`)."""
        parts = urllib.parse.urlsplit(target)
        return cls(
            method=method.upper(),
            path=parts.path or "/",
            headers={k.lower(): v for k, v in (headers or {}).items()},
            body=body,
            query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
        )


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Headers = ()  # extra headers besides type and length

    def json(self) -> Any:
        """The body parsed as JSON (for tests and callers that built it)."""
        return json.loads(self.body)


App = Callable[[Request], Response]
# How a program words an error it answers itself: (status, message, extra headers).
ErrorShape = Callable[[int, str, Headers], Response]


def json_response(status: int, payload: object, headers: Headers = ()) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), "application/json", headers)


def error_response(status: int, detail: str, headers: Headers = ()) -> Response:
    """An error as FastAPI (and so KTRDR) shapes it: {"detail": "..."}."""
    return json_response(status, {"detail": detail}, headers)


def text_response(
    status: int, text: str, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    return Response(status, text.encode("utf-8"), content_type)


@dataclass(frozen=True)
class Rules:
    """How a server reads request bodies and words the errors it answers itself.

    The defaults are the reference app's: small JSON bodies and errors in FastAPI's shape, as
    KTRDR's backend. The stand-ins take OTLP exports, which can be large, chunked or gzipped.
    """

    # The Server header; {component} becomes the name given to serve_http.
    server_header: str = "ktrdr-sandbox-{component}"
    max_body_bytes: int = 64 * 1024
    # True: chunked and gzip bodies are decoded. False: chunked gets 411, and a body is
    # handed on exactly as sent whatever its Content-Encoding says.
    decode_bodies: bool = False
    # A client that sends nothing for this long loses its connection (one thread each).
    socket_timeout: float = 10.0
    error: ErrorShape = error_response


DEFAULT_RULES = Rules()


# --- request bodies --------------------------------------------------------------------------


class BodyError(Exception):
    """A request body that cannot be read; `status` is the answer (400, 411 or 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_body(headers: Mapping[str, str], rfile: io.BufferedIOBase, rules: Rules) -> bytes:
    """The body of a request with these (lower-case) headers, decoded as `rules` allow."""
    limit = rules.max_body_bytes
    if "chunked" in headers.get("transfer-encoding", "").lower():
        if not rules.decode_bodies:
            raise BodyError(411, "send a Content-Length; chunked bodies are not supported")
        body = _read_chunked(rfile, limit)
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise BodyError(400, "Content-Length is not a number") from None
        if length < 0:
            raise BodyError(400, "Content-Length is negative")
        if length > limit:
            raise BodyError(413, f"request body is larger than {limit} bytes")
        body = rfile.read(length) if length else b""
    if rules.decode_bodies and headers.get("content-encoding", "").lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise BodyError(400, f"body is not valid gzip: {exc}") from None
    return body


def _read_chunked(rfile: io.BufferedIOBase, limit: int) -> bytes:
    """A chunked request body (OTLP exporters may stream without Content-Length)."""
    body = bytearray()
    while True:
        line = rfile.readline(1024).split(b";", 1)[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            raise BodyError(400, "malformed chunk size") from None
        if size == 0:
            while rfile.readline(1024).strip():  # trailer fields, then the blank line
                pass
            return bytes(body)
        if len(body) + size > limit:
            raise BodyError(413, f"request body is larger than {limit} bytes")
        body += rfile.read(size)
        rfile.readline(8)  # the CRLF after each chunk


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


# --- servers ---------------------------------------------------------------------------------


class TcpServer(socketserver.ThreadingTCPServer):
    """Accepts on 0.0.0.0:`port` and runs `handler` for each connection on its own thread."""

    daemon_threads = True  # a stuck client must not hold the process at exit
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, port: int, handler: type[socketserver.BaseRequestHandler], component: str
    ) -> None:
        self.component = component
        super().__init__(("0.0.0.0", port), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or stalled: one line, not socketserver's traceback on stderr.
        exc = sys.exc_info()[1]
        log(self.component, f"connection from {client_address[0]} failed: {one_line(repr(exc))}")


class HttpServer(TcpServer):
    """A `TcpServer` whose connections each carry one HTTP request, answered by `app`."""

    def __init__(
        self,
        port: int,
        app: App,
        shutdown: Shutdown,
        component: str,
        quiet_paths: Collection[str],
        rules: Rules,
    ) -> None:
        self.app = app
        self.shutdown_flag = shutdown
        self.quiet_paths = frozenset(quiet_paths)
        self.rules = rules
        self.server_header = rules.server_header.format(component=component)
        super().__init__(port, _Handler, component)


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a shutdown.
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.rules.socket_timeout)

    def version_string(self) -> str:
        return self.server.server_header

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
        rules = self.server.rules
        if self.server.shutdown_flag.requested:
            retry = (("Retry-After", str(SHUTDOWN_RETRY_AFTER)),)
            return rules.error(503, "shutting down", retry)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = read_body(headers, self.rfile, rules)
        except BodyError as exc:
            return rules.error(exc.status, str(exc), ())
        method = "GET" if self.command == "HEAD" else self.command
        request = Request.from_target(method, self.path, headers, body)
        try:
            return self.server.app(request)
        except Exception as exc:  # one bad request must not take the server down
            log(self.server.component, f"error on {method} {request.path}: {one_line(repr(exc))}")
            return rules.error(500, f"internal error: {one_line(exc)}", ())

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Healthchecks every 2 s would drown everything else: successful polls stay quiet.
        # No `path` yet when the request line itself was bad: send_error(400) logs it too.
        path = urllib.parse.urlsplit(getattr(self, "path", "")).path
        if path in self.server.quiet_paths and str(code).startswith("2"):
            return
        log(self.server.component, f"{self.client_address[0]} {self.requestline!r} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        log(self.server.component, one_line(format % args))


ServerT = TypeVar("ServerT", bound=TcpServer)


def start_serving(server: ServerT) -> ServerT:
    """Run `server`'s loop on a daemon thread; stop it with `stop_servers`."""
    port = server.server_address[1]
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SERVE_POLL_SECONDS},
        name=f"serve-{port}",
        daemon=True,
    ).start()
    return server


def serve_http(
    app: App,
    port: int,
    shutdown: Shutdown,
    component: str,
    quiet_paths: Collection[str] = (),
    rules: Rules = DEFAULT_RULES,
) -> HttpServer:
    """Answer HTTP on 0.0.0.0:`port` from a background thread: `app` normally, 503 once
    `shutdown` is requested. Successful requests to `quiet_paths` are not logged."""
    return start_serving(HttpServer(port, app, shutdown, component, quiet_paths, rules))


def stop_servers(*servers: socketserver.BaseServer) -> None:
    """Stop accepting and close the sockets; requests in flight finish on daemon threads.

    All at once, because each stop waits up to SERVE_POLL_SECONDS for its loop to notice.
    """
    stoppers = [threading.Thread(target=_stop, args=(server,)) for server in servers]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


def _stop(server: socketserver.BaseServer) -> None:
    server.shutdown()
    server.server_close()
