"""HTTP and addresses on the host side: where a slot's published ports are reached, and one
small HTTP client for the probes of the gate and `inv verify`.

Where ports are published (KTRDR_BIND_ADDR, on the engine's host) and where the client reaches
them are two settings: with a local engine the second follows from the first; with a remote
one it is the engine's host (sandbox/engine.py), or KTRDR_CONNECT_HOST. Only those addresses
are ever asked; nothing here goes through a proxy.
"""

from __future__ import annotations

import http.client
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from sandbox import compose, engine, slots

MAX_BODY = 64 * 1024
PG_PROTOCOL_3 = 196608  # 3 << 16: the startup packet's protocol version
MAX_PG_ERROR = 2048

# `http_get(url, timeout)` -> (status, body) for any HTTP answer, (None, why) for none.
HttpGet = Callable[[str, float], tuple[int | None, str]]

# No proxies: urllib honours http_proxy, which would send 127.0.0.1 probes to a corporate proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def describe_error(exc: BaseException) -> str:
    """A short, stable phrase for why an HTTP request got no answer."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return describe_error(exc.reason)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        # Docker's port proxy accepts while nothing listens inside the container yet.
        return "connection closed without a response"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def http_get(url: str, timeout: float) -> tuple[int | None, str]:
    """GET `url`: (status, body) for any HTTP answer, (None, reason) for none."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status: int = response.status
            return status, response.read(MAX_BODY).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            body = ""
        return exc.code, body
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, describe_error(exc)


def pg_ready(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """What pg_isready asks, over TCP from here: does the server answer a startup packet with
    an authentication request ('R')? (False, why) for an error ('E', e.g. "the database system
    is starting up") or no answer. Costs one connection, not a `docker compose exec`."""
    params = b"user\0ktrdr\0database\0ktrdr\0\0"
    packet = struct.pack("!ii", 8 + len(params), PG_PROTOCOL_3) + params
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as conn:
            conn.sendall(packet)
            kind = conn.recv(1)
            if kind == b"R":
                return True, "accepting connections"
            if kind == b"E":
                return False, _pg_error(conn.recv(MAX_PG_ERROR))
            return False, "closed without an answer"
    except OSError as exc:
        return False, describe_error(exc)


def _pg_error(body: bytes) -> str:
    """The message field ('M') of a Postgres ErrorResponse (after its 4-byte length)."""
    for field in body[4:].split(b"\0"):
        if field[:1] == b"M":
            return field[1:].decode("utf-8", "replace")
    return "refused"


def _engine(environ: Mapping[str, str], where: engine.Engine | None) -> engine.Engine:
    # Callers that run many probes resolve the engine once and pass it; the rest ask here.
    return where if where is not None else engine.detect(environ)


def host(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
) -> str:
    """Where the slot's published ports are reached from this host.

    KTRDR_BIND_ADDR as Compose sees it (env file, else the exported machine-wide value, else
    127.0.0.1), through `engine.connect_url_host` for the engine `where` (detected when None).
    """
    env = environ or {}
    return engine.connect_url_host(_engine(env, where), compose.bind_address(target, env))


def api_url(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
) -> str:
    """The base URL of the slot's backend API, e.g. http://127.0.0.1:8001/api/v1."""
    return f"http://{host(target, environ, where)}:{target.port('KTRDR_API_PORT')}/api/v1"


def urls(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> dict[str, str]:
    """Label -> URL of everything a developer opens on this slot (its layout's services; the
    shared stack's UIs on shared observability)."""
    by_service = slots.service_urls(host(target, environ, where), target.port)
    found = {"Backend API": by_service["backend"]}
    if layout.shared:
        shared = shared_urls(environ or {}, where)
        found |= {k: v for k, v in shared.items() if "OTLP" not in k}
    else:
        found |= {
            "Jaeger UI": by_service["jaeger"],
            "Prometheus": by_service["prometheus"],
            "Grafana": by_service["grafana"],
        }
    found["PostgreSQL"] = by_service["db"]
    for worker in layout.worker_list:
        found[worker.service] = by_service[worker.service]
    return found


def shared_urls(environ: Mapping[str, str], where: engine.Engine | None = None) -> dict[str, str]:
    """Label -> URL of the shared observability stack (its ports are the engine's, fixed), on
    the machine-wide bind address, at the engine's host like a slot's."""
    bind = (environ.get("KTRDR_BIND_ADDR") or compose.DEFAULT_BIND_ADDR).strip("[]")
    h = engine.connect_url_host(_engine(environ, where), bind)
    ports = slots.observability_ports()
    return {
        "Shared Jaeger UI": f"http://{h}:{ports['KTRDR_OBS_JAEGER_UI_PORT']}",
        "Shared OTLP gRPC": f"http://{h}:{ports['KTRDR_OBS_OTLP_GRPC_PORT']}",
        "Shared OTLP HTTP": f"http://{h}:{ports['KTRDR_OBS_OTLP_HTTP_PORT']}/v1/traces",
        "Shared Prometheus": f"http://{h}:{ports['KTRDR_OBS_PROMETHEUS_PORT']}",
        "Shared Grafana": f"http://{h}:{ports['KTRDR_OBS_GRAFANA_PORT']}",
    }
