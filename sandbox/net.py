"""HTTP and addresses on the host side: where a slot's published ports are reached, and one
small HTTP client for the probes of the gate and `inv verify`.

Where ports are published (KTRDR_BIND_ADDR, on the engine's host) and where the client reaches
them are two settings: with a local engine the second follows from the first; with a remote
one it is the engine's host (sandbox/engine.py), or KTRDR_CONNECT_HOST. Only those addresses
are ever asked; nothing here goes through a proxy.

`service_urls` is the one answer to "the URL of this slot's service": the gate, `inv status`
(table and JSON), `inv verify` and `.env.sandbox` all ask it. `inv status` imports this module,
so the HTTP client's modules load only when a request is made.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from sandbox import engine, slots

if TYPE_CHECKING:
    import urllib.request

    from sandbox import compose, docker

MAX_BODY = 64 * 1024
PG_PROTOCOL_3 = 196608  # 3 << 16: the startup packet's protocol version
MAX_PG_ERROR = 2048

# `http_get(url, timeout)` -> (status, body) for any HTTP answer, (None, why) for none.
HttpGet = Callable[[str, float], tuple[int | None, str]]


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    # No proxies: urllib honours http_proxy, which would send 127.0.0.1 probes to a corporate
    # proxy.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def describe_error(exc: BaseException) -> str:
    """A short, stable phrase for why an HTTP request got no answer."""
    import http.client
    import urllib.error

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
    import http.client
    import urllib.error

    try:
        with _opener().open(url, timeout=timeout) as response:
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


def published_bind(containers: Sequence[docker.Container]) -> str | None:
    """The address a slot's running containers publish their ports on, as `docker ps` lists
    it; None when they publish none. The address most ports are published on: the bind
    address has them all, while the bridge gateway of `KTRDR_REACH=bridge` has only the app's.
    As many ports on two addresses (only the app's containers run), loopback or a wildcard
    is the bind address. Docker lists a wildcard bind twice, 0.0.0.0 and ::, and either is
    reached on loopback: IPv4 first."""
    counts = Counter(
        p.host_ip for c in containers if c.running for p in c.ports if p.protocol == "tcp"
    )
    if not counts:
        return None

    def local(address: str) -> bool:
        return engine.is_loopback(address) or engine.is_wildcard(address)

    return min(counts, key=lambda a: (-counts[a], not local(a), ":" in a, a))


def service_urls(
    bind: str, port: Callable[[str], int], where: engine.Engine = engine.LOCAL
) -> dict[str, str]:
    """URL by service (`slots.service_urls`' names: backend, db, jaeger, prometheus, grafana,
    each worker) of a slot whose ports are published on `bind` by the engine `where`; `port`
    gives the host port of a variable. `bind` is the slot's configured address before a start
    and what its containers publish (`published_bind`) once they run."""
    return slots.service_urls(engine.connect_url_host(where, bind), port)


def host(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
) -> str:
    """Where the slot's published ports are reached from this host.

    KTRDR_BIND_ADDR as Compose sees it (env file, else the exported machine-wide value, else
    127.0.0.1), through `engine.connect_url_host` for the engine `where` (detected when None).
    """
    from sandbox import compose

    env = environ or {}
    return engine.connect_url_host(_engine(env, where), compose.bind_address(target, env))


def api_url(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
) -> str:
    """The base URL of the slot's backend API, e.g. http://127.0.0.1:8001/api/v1."""
    from sandbox import compose

    env = environ or {}
    bind = compose.bind_address(target, env)
    return service_urls(bind, target.port, _engine(env, where))["backend"]


def urls(
    target: compose.Target,
    environ: Mapping[str, str] | None = None,
    where: engine.Engine | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> dict[str, str]:
    """Label -> URL of everything a developer opens on this slot (its layout's services; the
    shared stack's UIs on shared observability)."""
    from sandbox import compose

    env = environ or {}
    by_service = service_urls(compose.bind_address(target, env), target.port, _engine(env, where))
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
    from sandbox import compose

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
