"""What the Jaeger and Grafana stand-ins share: HTTP serving, request bodies, signals, banner.

Copied next to each stand-in in its image. Stand-ins are placeholders for upstream images that
no reachable registry ships; they answer the ports and health endpoints the sandbox checks,
and say plainly, in every page and at start, that they are not the real thing.
"""

from __future__ import annotations

import gzip
import json
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

MAX_BODY_BYTES = 16 * 1024 * 1024
SIGNAL_POLL_SECONDS = 0.1
SERVE_POLL_SECONDS = 0.2
SOCKET_TIMEOUT_SECONDS = 30.0


def log(name: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {name}: {message}", flush=True)


def banner(name: str, imitates: str, ports: Mapping[int, str]) -> None:
    """Say at start, in words nobody can miss, what this program is and is not."""
    log(name, "=" * 72)
    log(name, f"ktrdr-sandbox STAND-IN for {imitates}. This is NOT {imitates}.")
    log(name, "It answers the ports and health checks the sandbox needs, nothing more.")
    for port, role in sorted(ports.items()):
        log(name, f"  port {port}: {role}")
    log(name, "=" * 72)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


@dataclass(frozen=True)
class Incoming:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


Route = Callable[[Incoming], Reply]


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _read_chunked(rfile: Any) -> bytes:
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
        if len(body) + size > MAX_BODY_BYTES:
            raise BodyError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body += rfile.read(size)
        rfile.readline(8)  # the CRLF after each chunk


def read_body(headers: Mapping[str, str], rfile: Any) -> bytes:
    """The request body, de-chunked and gunzipped; BodyError for what cannot be read."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(rfile)
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise BodyError(400, "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise BodyError(413, f"Content-Length must be 0..{MAX_BODY_BYTES}")
        body = rfile.read(length) if length else b""
    if headers.get("content-encoding", "").lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise BodyError(400, f"body is not valid gzip: {exc}") from None
    return body


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str, route: Route, quiet: Iterable[str]) -> None:
        self.name = name
        self.route = route
        self.quiet = frozenset(quiet)
        super().__init__(("0.0.0.0", port), _HttpHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log(self.name, f"connection from {client_address[0]} failed: {sys.exc_info()[1]!r}")


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = SOCKET_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        return f"{self.server.name} (ktrdr-sandbox stand-in)"

    def _serve(self, send_body: bool = True) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = read_body(headers, self.rfile)
            method = "GET" if self.command == "HEAD" else self.command
            reply = self.server.route(Incoming(method, self.path.split("?", 1)[0], headers, body))
        except BodyError as exc:
            reply = Reply(exc.status, json.dumps({"message": str(exc)}).encode())
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(reply.body)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.path.split("?", 1)[0] in self.server.quiet and str(code).startswith("2"):
            return
        log(self.server.name, f"{self.client_address[0]} {self.requestline!r} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        log(self.server.name, format % args)


def serve_http(port: int, name: str, route: Route, quiet: Iterable[str] = ()) -> Closer:
    """Answer HTTP on 0.0.0.0:`port` from a background thread."""
    server = _HttpServer(port, name, route, quiet)
    return _start(server)


def serve_tcp(port: int, name: str, handler: type[socketserver.BaseRequestHandler]) -> Closer:
    """Accept TCP connections on 0.0.0.0:`port`; each one runs `handler` on its own thread."""

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            log(name, f"connection from {client_address[0]} failed: {sys.exc_info()[1]!r}")

    return _start(Server(("0.0.0.0", port), handler))


class Closer:
    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _start(server: socketserver.BaseServer) -> Closer:
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SERVE_POLL_SECONDS},
        daemon=True,
    ).start()
    return Closer(server)


class _Signals:
    """Handlers only set a flag (handlers that take locks can deadlock the main thread);
    installed explicitly because PID 1 in a container ignores signals it has no handler for."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum


def run_until_signal(name: str, start: Callable[[], list[Closer]]) -> int:
    """Install SIGTERM/SIGINT handlers, start the servers, wait for a signal, stop them."""
    signals = _Signals()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signals)
    try:
        servers = start()
    except OSError as exc:
        log(name, f"cannot listen: {exc}")
        return 1
    log(name, "ready")
    while signals.received is None:
        time.sleep(SIGNAL_POLL_SECONDS)
    log(name, f"{signal.Signals(signals.received).name} received: stopping")
    # Close all at once: each close waits up to SERVE_POLL_SECONDS for its serving loop.
    closers = [threading.Thread(target=server.close) for server in servers]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()
    log(name, "stopped")
    return 0


def html_page(title: str, paragraphs: Iterable[str]) -> bytes:
    """A plain HTML page; `paragraphs` are trusted HTML snippets written in this code."""
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    ).encode()
