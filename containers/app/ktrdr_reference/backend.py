"""The reference KTRDR backend: `python3 -m ktrdr_reference.backend`, on 0.0.0.0:8000.

Endpoints (the interface of KTRDR's backend that the sandbox relies on, plus two of ours):
  GET  /api/v1/health            200 {"status": "ok", ...}; 503 "degraded" while the DB is away
  POST /api/v1/workers/register  upsert a worker by worker_id; 200 with the stored worker
  GET  /api/v1/workers           JSON list; filters ?worker_type= and ?status=
  GET  /api/v1/data              files seen in the shared data/models/strategies directories
  GET  /metrics                  Prometheus text format

Workers live in their own Postgres table. The server answers from the first second; the table
is created by a background thread that retries every SCHEMA_RETRY_SECONDS until the database
is reachable, and health stays 503 until then, so a database that starts late never makes the
backend crash-loop. A registration that arrives before the database was ever reachable is held
(up to REGISTER_HOLD_SECONDS) until it is, so a worker that starts with the stack registers the
moment the database answers instead of sleeping through a Retry-After.

Environment: KTRDR_DB_HOST/PORT/NAME/USER/PASSWORD (db/5432/ktrdr/ktrdr/localdev),
SLOT_NUMBER, COMPOSE_PROJECT_NAME, KTRDR_DATA_DIR/KTRDR_MODELS_DIR/KTRDR_STRATEGIES_DIR
(/app/data, /app/models, /app/strategies). A bad value exits with status 2.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from httpkit import (
    Request,
    Response,
    Shutdown,
    error_response,
    json_response,
    log,
    one_line,
    serve_http,
    stop_servers,
    text_response,
)

from ktrdr_reference import __version__
from ktrdr_reference.common import (
    WORKER_TYPES,
    ConfigError,
    check_http_url,
    check_worker_id,
    check_worker_type,
    env_int,
    env_optional_int,
    env_text,
    fail_config,
)
from ktrdr_reference.tracing import Tracer

SERVICE = "ktrdr-reference-backend"
COMPONENT = "backend"
PORT = 8000
API = "/api/v1"
LIST_LIMIT = 1000  # entries per shared directory in GET /api/v1/data
# Trying the database costs one refused or accepted connection: often enough that the backend
# is ready a fraction of a second after Postgres, which starts in about a second.
SCHEMA_RETRY_SECONDS = 0.2
LOG_EVERY_N_ATTEMPTS = 25  # about every 5 s while waiting, besides every change of reason
# Below the worker's 5 s request timeout, so a held registration gets an answer.
REGISTER_HOLD_SECONDS = 3.0
# After SIGTERM, answer 503 + Retry-After this long before closing the socket, so callers
# see "shutting down" rather than "connection refused". Well inside Compose's 5 s grace.
DRAIN_SECONDS = 0.5
# libpq's minimum: it treats anything lower (except 0 = wait forever) as 2 seconds.
DB_CONNECT_TIMEOUT_SECONDS = 2
TABLE = "ktrdr_reference_workers"
# KTRDR's worker statuses. This backend stores only "available"; the others are accepted as
# filters so that a client written for KTRDR gets an empty list, not an error.
WORKER_STATUSES = ("available", "busy", "temporarily_unavailable")
REGISTRATION_FIELDS = ("worker_id", "worker_type", "endpoint_url")
DB_RETRY_AFTER = "1"
QUIET_PATHS = (f"{API}/health", "/metrics", f"{API}/workers/register")
# Probes, polled every few seconds by healthchecks and scrapers: no span each.
UNTRACED_ROUTES = (f"{API}/health", "/metrics", "other")


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password: str
    slot: int | None
    project: str | None
    data_dir: Path
    models_dir: Path
    strategies_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from the environment; ConfigError for a bad value."""
        return cls(
            db_host=env_text(env, "KTRDR_DB_HOST", "db"),
            db_port=env_int(env, "KTRDR_DB_PORT", 5432, minimum=1, maximum=65535),
            db_name=env_text(env, "KTRDR_DB_NAME", "ktrdr"),
            db_user=env_text(env, "KTRDR_DB_USER", "ktrdr"),
            db_password=env.get("KTRDR_DB_PASSWORD") or "localdev",
            slot=env_optional_int(env, "SLOT_NUMBER"),
            project=env.get("COMPOSE_PROJECT_NAME", "").strip() or None,
            data_dir=Path(env_text(env, "KTRDR_DATA_DIR", "/app/data")),
            models_dir=Path(env_text(env, "KTRDR_MODELS_DIR", "/app/models")),
            strategies_dir=Path(env_text(env, "KTRDR_STRATEGIES_DIR", "/app/strategies")),
        )

    def shared_dirs(self) -> dict[str, Path]:
        return {"data": self.data_dir, "models": self.models_dir, "strategies": self.strategies_dir}


# --- pure request handling -------------------------------------------------------------------


class RequestError(Exception):
    """A client mistake: becomes a 400 with the message as detail."""


@dataclass(frozen=True)
class Registration:
    worker_id: str
    worker_type: str
    endpoint_url: str
    capabilities: dict[str, Any]


def parse_registration(body: bytes) -> Registration:
    """The registration in a request body, or RequestError saying what is wrong with it."""
    try:
        payload = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {one_line(exc)}") from None
    if not isinstance(payload, dict):
        raise RequestError(
            'request body must be a JSON object: {"worker_id", "worker_type", "endpoint_url", '
            '"capabilities"}'
        )
    missing = [name for name in REGISTRATION_FIELDS if payload.get(name) is None]
    if missing:
        raise RequestError(f"missing field(s): {', '.join(missing)}")
    capabilities = payload.get("capabilities")
    if capabilities is None:
        capabilities = {}
    if not isinstance(capabilities, dict):
        raise RequestError("capabilities must be a JSON object")
    try:
        return Registration(
            worker_id=check_worker_id(payload["worker_id"]),
            worker_type=check_worker_type(payload["worker_type"]),
            endpoint_url=check_http_url(payload["endpoint_url"], "endpoint_url"),
            capabilities=capabilities,
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from None


@dataclass(frozen=True)
class WorkerFilter:
    worker_type: str | None = None
    status: str | None = None


def parse_worker_filter(query: Mapping[str, list[str]]) -> WorkerFilter:
    """?worker_type= and ?status= (last value wins; empty means no filter)."""
    worker_type = (query.get("worker_type") or [""])[-1].strip() or None
    status = (query.get("status") or [""])[-1].strip().lower() or None
    if worker_type is not None and worker_type not in WORKER_TYPES:
        raise RequestError(f"worker_type must be one of {', '.join(WORKER_TYPES)}")
    if status is not None and status not in WORKER_STATUSES:
        raise RequestError(f"status must be one of {', '.join(WORKER_STATUSES)}")
    return WorkerFilter(worker_type, status)


def filter_workers(
    workers: Iterable[Mapping[str, Any]], wanted: WorkerFilter
) -> list[dict[str, Any]]:
    return [
        dict(worker)
        for worker in workers
        if (wanted.worker_type is None or worker.get("worker_type") == wanted.worker_type)
        and (wanted.status is None or worker.get("status") == wanted.status)
    ]


def list_files(root: Path, limit: int = LIST_LIMIT) -> list[str]:
    """Files under `root` as sorted relative POSIX paths, at most `limit` of them.

    Hidden files and directories (.gitkeep, .cache) are skipped; directory symlinks are not
    followed, so a link loop cannot make the walk endless. A missing root lists as empty.
    """
    found: list[str] = []
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(current).relative_to(root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            found.append((base / name).as_posix())
            if len(found) >= limit:
                return sorted(found)
    return sorted(found)


def shared_listing(dirs: Mapping[str, Path], limit: int = LIST_LIMIT) -> dict[str, list[str]]:
    return {name: list_files(path, limit) for name, path in dirs.items()}


# --- metrics ---------------------------------------------------------------------------------


class Metrics:
    """Counters kept in memory; they start from zero with each process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._registrations = 0
        self.started_at = time.time()

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self._requests[(route, status)] += 1

    def count_registration(self) -> None:
        with self._lock:
            self._registrations += 1

    def snapshot(self) -> tuple[dict[tuple[str, int], int], int]:
        with self._lock:
            return dict(self._requests), self._registrations


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(
    requests: Mapping[tuple[str, int], int],
    registrations: int,
    database_up: bool,
    workers: int | None,
    started_at: float,
) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines = [
        "# HELP ktrdr_reference_build_info The reference backend's version (always 1).",
        "# TYPE ktrdr_reference_build_info gauge",
        f'ktrdr_reference_build_info{{service="{SERVICE}",version="{_label(__version__)}"}} 1',
        "# HELP ktrdr_reference_http_requests_total HTTP requests answered, by route and code.",
        "# TYPE ktrdr_reference_http_requests_total counter",
    ]
    for (route, code), count in sorted(requests.items()):
        lines.append(
            f'ktrdr_reference_http_requests_total{{route="{_label(route)}",code="{code}"}} {count}'
        )
    lines += [
        "# HELP ktrdr_reference_worker_registrations_total Registrations accepted, renewals too.",
        "# TYPE ktrdr_reference_worker_registrations_total counter",
        f"ktrdr_reference_worker_registrations_total {registrations}",
        "# HELP ktrdr_reference_database_up Whether the database answered during this scrape.",
        "# TYPE ktrdr_reference_database_up gauge",
        f"ktrdr_reference_database_up {1 if database_up else 0}",
    ]
    if workers is not None:
        lines += [
            "# HELP ktrdr_reference_workers_registered Workers stored in the database.",
            "# TYPE ktrdr_reference_workers_registered gauge",
            f"ktrdr_reference_workers_registered {workers}",
        ]
    lines += [
        "# HELP process_start_time_seconds Start time of the process since the epoch.",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {started_at:.3f}",
    ]
    return "\n".join(lines) + "\n"


# --- storage ---------------------------------------------------------------------------------


class StoreError(Exception):
    """The database could not be reached or refused a statement; the message is one line."""


class WorkerStore(Protocol):
    def ensure_ready(self) -> None:
        """Raise StoreError unless the database answers and the workers table exists."""

    def upsert(self, registration: Registration) -> dict[str, Any]: ...

    def all_workers(self) -> list[dict[str, Any]]: ...


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    worker_id     text PRIMARY KEY,
    worker_type   text NOT NULL,
    endpoint_url  text NOT NULL,
    capabilities  jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    status        text NOT NULL DEFAULT 'available',
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
)
"""
_COLUMNS = "worker_id, worker_type, endpoint_url, capabilities, status, registered_at, last_seen_at"
# Re-registering keeps the first registered_at and refreshes everything else.
_UPSERT = f"""
INSERT INTO {TABLE} (worker_id, worker_type, endpoint_url, capabilities)
VALUES (%s, %s, %s, %s::jsonb)
ON CONFLICT (worker_id) DO UPDATE SET
    worker_type = EXCLUDED.worker_type,
    endpoint_url = EXCLUDED.endpoint_url,
    capabilities = EXCLUDED.capabilities,
    status = 'available',
    last_seen_at = now()
RETURNING {_COLUMNS}
"""
_SELECT = f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY worker_id"


def _psycopg2() -> Any:
    # Imported late so that the pure helpers above import on a host without psycopg2.
    try:
        import psycopg2
        import psycopg2.errors
    except ImportError:
        raise StoreError(
            "psycopg2 is not installed (Debian: apt-get install python3-psycopg2)"
        ) from None
    return psycopg2


def _row_to_worker(row: tuple[Any, ...]) -> dict[str, Any]:
    worker_id, worker_type, endpoint_url, capabilities, status, registered, seen = row
    if isinstance(capabilities, str):  # psycopg2 decodes jsonb itself; be safe if it did not
        capabilities = json.loads(capabilities)
    return {
        "worker_id": worker_id,
        "worker_type": worker_type,
        "endpoint_url": endpoint_url,
        "capabilities": capabilities,
        "status": status,
        "registered_at": registered.isoformat(),
        "last_seen_at": seen.isoformat(),
    }


class PostgresWorkerStore:
    """Workers in Postgres, one short connection per operation.

    Short connections cost a few milliseconds and mean that a database restart or a wiped
    volume needs no reconnect logic: the next request simply connects again.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._schema_lock = threading.Lock()

    def _run(self, work: Callable[[Any], Any]) -> Any:
        psycopg2 = _psycopg2()
        s = self._settings
        try:
            conn = psycopg2.connect(
                host=s.db_host,
                port=s.db_port,
                dbname=s.db_name,
                user=s.db_user,
                password=s.db_password,
                connect_timeout=DB_CONNECT_TIMEOUT_SECONDS,
                application_name=SERVICE,
            )
        except psycopg2.Error as exc:
            raise StoreError(one_line(exc)) from None
        try:
            with conn, conn.cursor() as cur:
                return work(cur)
        finally:
            conn.close()

    def _run_with_table(self, work: Callable[[Any], Any]) -> Any:
        """Run `work`; if the table is gone (database wiped under us), recreate it once."""
        psycopg2 = _psycopg2()
        try:
            try:
                return self._run(work)
            except psycopg2.errors.UndefinedTable:
                self.ensure_ready()
                return self._run(work)
        except psycopg2.Error as exc:
            raise StoreError(one_line(exc)) from None

    def ensure_ready(self) -> None:
        def check(cur: Any) -> None:
            cur.execute("SELECT to_regclass(%s)", (TABLE,))
            if cur.fetchone()[0] is None:
                cur.execute(_SCHEMA)

        psycopg2 = _psycopg2()
        # One creator at a time: concurrent CREATE TABLE IF NOT EXISTS can still collide.
        with self._schema_lock:
            try:
                self._run(check)
            except psycopg2.Error as exc:
                raise StoreError(one_line(exc)) from None

    def upsert(self, registration: Registration) -> dict[str, Any]:
        def work(cur: Any) -> dict[str, Any]:
            r = registration
            cur.execute(
                _UPSERT, (r.worker_id, r.worker_type, r.endpoint_url, json.dumps(r.capabilities))
            )
            return _row_to_worker(cur.fetchone())

        result: dict[str, Any] = self._run_with_table(work)
        return result

    def all_workers(self) -> list[dict[str, Any]]:
        def work(cur: Any) -> list[dict[str, Any]]:
            cur.execute(_SELECT)
            return [_row_to_worker(row) for row in cur.fetchall()]

        result: list[dict[str, Any]] = self._run_with_table(work)
        return result


# --- the app ---------------------------------------------------------------------------------


class Backend:
    """The endpoints, as a function from Request to Response (see `handle`)."""

    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        # Set once the database answered (by prepare_database): until then a failed
        # registration is start-up, not an outage, and is worth holding.
        self.database_ready = threading.Event()
        self.tracer = tracer
        self._known: dict[str, tuple[str, str, str]] = {}
        self._known_lock = threading.Lock()
        self._routes: dict[str, dict[str, Callable[[Request], Response]]] = {
            f"{API}/health": {"GET": self.health},
            f"{API}/workers/register": {"POST": self.register},
            f"{API}/workers": {"GET": self.workers},
            f"{API}/data": {"GET": self.data},
            "/metrics": {"GET": self.prometheus_metrics},
        }

    def handle(self, request: Request) -> Response:
        start = time.time_ns()
        response, route = self._dispatch(request)
        self.metrics.count_request(route, response.status)
        if self.tracer is not None and route not in UNTRACED_ROUTES:
            attributes: dict[str, str | int] = {
                "http.method": request.method,
                "http.route": route,
                "http.status_code": response.status,
            }
            self.tracer.span(f"{request.method} {route}", start, time.time_ns(), attributes)
        return response

    def _dispatch(self, request: Request) -> tuple[Response, str]:
        path = request.path.rstrip("/") or "/"
        methods = self._routes.get(path)
        if methods is None:
            route, response = "other", error_response(404, "Not Found")
        elif request.method not in methods:
            allow = ", ".join(sorted(methods))
            route = path
            response = error_response(405, "Method Not Allowed", (("Allow", allow),))
        else:
            route, response = path, methods[request.method](request)
        return response, route

    def _database_error(self) -> str | None:
        try:
            self.store.ensure_ready()
        except StoreError as exc:
            return str(exc)
        return None

    def health(self, request: Request) -> Response:
        error = self._database_error()
        s = self.settings
        database: dict[str, Any] = {
            "reachable": error is None,
            "host": s.db_host,
            "port": s.db_port,
            "name": s.db_name,
        }
        if error is not None:
            database["error"] = error
        payload = {
            "status": "ok" if error is None else "degraded",
            "version": __version__,
            "service": SERVICE,
            "reference_app": True,
            "slot": s.slot,
            "project": s.project,
            "database": database,
        }
        return json_response(200 if error is None else 503, payload)

    def register(self, request: Request) -> Response:
        try:
            registration = parse_registration(request.body)
        except RequestError as exc:
            return error_response(400, str(exc))
        try:
            stored = self._upsert_when_ready(registration)
        except StoreError as exc:
            return error_response(
                503, f"database unavailable: {exc}", (("Retry-After", DB_RETRY_AFTER),)
            )
        self.metrics.count_registration()
        self._log_if_new(registration)
        return json_response(200, stored)

    def _upsert_when_ready(self, registration: Registration) -> dict[str, Any]:
        try:
            return self.store.upsert(registration)
        except StoreError:
            if self.database_ready.is_set():
                raise  # a real outage: answer now, the worker retries
            if not self.database_ready.wait(REGISTER_HOLD_SECONDS):
                raise
        return self.store.upsert(registration)

    def _log_if_new(self, r: Registration) -> None:
        # Workers renew every few seconds: log only first sightings and changes.
        fingerprint = (r.worker_type, r.endpoint_url, json.dumps(r.capabilities, sort_keys=True))
        with self._known_lock:
            if self._known.get(r.worker_id) == fingerprint:
                return
            self._known[r.worker_id] = fingerprint
        log(COMPONENT, f"worker registered: {r.worker_id} ({r.worker_type}) at {r.endpoint_url}")

    def workers(self, request: Request) -> Response:
        try:
            wanted = parse_worker_filter(request.query)
        except RequestError as exc:
            return error_response(400, str(exc))
        try:
            workers = self.store.all_workers()
        except StoreError as exc:
            return error_response(
                503, f"database unavailable: {exc}", (("Retry-After", DB_RETRY_AFTER),)
            )
        return json_response(200, filter_workers(workers, wanted))

    def data(self, request: Request) -> Response:
        return json_response(200, shared_listing(self.settings.shared_dirs()))

    def prometheus_metrics(self, request: Request) -> Response:
        workers: int | None
        try:
            workers = len(self.store.all_workers())
            database_up = True
        except StoreError:
            workers, database_up = None, False
        requests, registrations = self.metrics.snapshot()
        text = render_metrics(
            requests, registrations, database_up, workers, self.metrics.started_at
        )
        return text_response(200, text, "text/plain; version=0.0.4; charset=utf-8")


def prepare_database(
    store: WorkerStore,
    settings: Settings,
    stopping: threading.Event,
    ready: threading.Event | None = None,
) -> None:
    """Create the workers table, retrying until the database answers or we are stopping;
    then set `ready`."""
    where = f"{settings.db_user}@{settings.db_host}:{settings.db_port}/{settings.db_name}"
    log(COMPONENT, f"waiting for database {where}")
    attempts = 0
    last_error = ""
    while not stopping.is_set():
        attempts += 1
        try:
            store.ensure_ready()
        except StoreError as exc:
            # Say it when the reason changes and every so often, not at every try.
            if str(exc) != last_error or attempts % LOG_EVERY_N_ATTEMPTS == 0:
                log(COMPONENT, f"database not ready (attempt {attempts}): {exc}")
            last_error = str(exc)
            stopping.wait(SCHEMA_RETRY_SECONDS)
            continue
        log(COMPONENT, f"database ready after {attempts} attempt(s); table {TABLE} present")
        if ready is not None:
            ready.set()
        return


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        return fail_config(COMPONENT, exc)
    log(
        COMPONENT,
        f"starting {SERVICE} {__version__} (slot={settings.slot}, project={settings.project})",
    )
    shutdown = Shutdown()
    shutdown.install()
    log(COMPONENT, "SIGTERM/SIGINT handlers installed")
    store = PostgresWorkerStore(settings)
    # service.namespace: the slot's project, so one Jaeger shared by several slots tells them
    # apart (KTRDR's own names are per service, not per slot).
    resource: dict[str, str | int] = {"ktrdr.slot": settings.slot or 0}
    if settings.project:
        resource["service.namespace"] = settings.project
    tracer = Tracer.from_env(os.environ, SERVICE, resource)
    if tracer.endpoint:
        log(COMPONENT, f"exporting a span per API request to {tracer.endpoint} (OTLP/HTTP JSON)")
    backend = Backend(settings, store, tracer=tracer)
    try:
        server = serve_http(backend.handle, PORT, shutdown, COMPONENT, QUIET_PATHS)
    except OSError as exc:
        log(COMPONENT, f"cannot listen on 0.0.0.0:{PORT}: {exc}")
        return 1
    log(COMPONENT, f"listening on 0.0.0.0:{PORT}")
    dirs = ", ".join(f"{name}={path}" for name, path in settings.shared_dirs().items())
    log(COMPONENT, f"shared directories: {dirs}")
    threading.Thread(
        target=prepare_database,
        args=(store, settings, shutdown.stopping, backend.database_ready),
        name="prepare-database",
        daemon=True,
    ).start()

    name = shutdown.wait_for_signal()
    log(COMPONENT, f"{name} received: answering 503 for {DRAIN_SECONDS}s, then stopping")
    time.sleep(DRAIN_SECONDS)
    stop_servers(server)
    log(COMPONENT, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
