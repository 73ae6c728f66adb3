"""What the Jaeger and Grafana stand-ins share beyond `httpkit`: their HTTP rules, the banner,
the run loop, a plain TCP server and the HTML page.

Copied next to each stand-in in its image, with `shared/httpkit.py`. Stand-ins are
placeholders for upstream images that no reachable registry ships; they answer the ports and
health endpoints the sandbox checks, and say plainly, in every page and at start, that they
are not the real thing.
"""

from __future__ import annotations

import socketserver
from collections.abc import Callable, Iterable, Mapping

from httpkit import (
    Headers,
    Response,
    Rules,
    Shutdown,
    TcpServer,
    json_response,
    log,
    start_serving,
    stop_servers,
)

# OTLP exporters batch spans: a request can be megabytes, chunked and gzipped.
MAX_BODY_BYTES = 16 * 1024 * 1024


def message_error(status: int, message: str, headers: Headers = ()) -> Response:
    """An error as Grafana and Jaeger shape theirs: {"message": "..."}."""
    return json_response(status, {"message": message}, headers)


HTTP_RULES = Rules(
    server_header="{component} (ktrdr-sandbox stand-in)",
    max_body_bytes=MAX_BODY_BYTES,
    decode_bodies=True,
    socket_timeout=30.0,
    error=message_error,
)


def banner(name: str, imitates: str, ports: Mapping[int, str]) -> None:
    """Say at start, in words nobody can miss, what this program is and is not."""
    log(name, "=" * 72)
    log(name, f"ktrdr-sandbox STAND-IN for {imitates}. This is NOT {imitates}.")
    log(name, "It answers the ports and health checks the sandbox needs, nothing more.")
    for port, role in sorted(ports.items()):
        log(name, f"  port {port}: {role}")
    log(name, "=" * 72)


def serve_tcp(port: int, name: str, handler: type[socketserver.BaseRequestHandler]) -> TcpServer:
    """Accept TCP connections on 0.0.0.0:`port`; each one runs `handler` on its own thread."""
    return start_serving(TcpServer(port, handler, name))


def run_until_signal(name: str, start: Callable[[Shutdown], list[TcpServer]]) -> int:
    """Install SIGTERM/SIGINT handlers, start the servers, wait for a signal, stop them."""
    shutdown = Shutdown()
    shutdown.install()
    try:
        servers = start(shutdown)
    except OSError as exc:
        log(name, f"cannot listen: {exc}")
        return 1
    log(name, "ready")
    log(name, f"{shutdown.wait_for_signal()} received: stopping")
    stop_servers(*servers)
    log(name, "stopped")
    return 0


def html_page(title: str, paragraphs: Iterable[str]) -> bytes:
    """A plain HTML page; `paragraphs` are trusted HTML snippets written in this code."""
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    ).encode()
