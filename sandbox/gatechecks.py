"""What the gate checks: one `Check` per named condition (database, migrations, backend,
workers, Jaeger, Prometheus, Grafana), each a probe that answers with an `Outcome`, and the pure
functions that read a probe's raw answer (HTTP status and body, a migration's exit)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import apps, compose, diagnose, engine, net, slots
from sandbox.gateprobes import Probes
from sandbox.runner import Result
from sandbox.settings import (
    FAILING_LOG_LINES,
    GATE_HTTP_TIMEOUT,
)

DETAIL_CHARS = 160


@dataclass(frozen=True)
class Outcome:
    """One probe's answer."""

    passed: bool
    detail: str
    services: tuple[str, ...] = ()  # when set: the services whose logs explain it
    # A failure that trying again cannot mend (a migration that failed): the gate stops.
    final: bool = False
    output: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    service: str
    probe: Callable[[], Outcome]
    # Containers whose exit fails this check at once: waiting for them would be pointless.
    watch: tuple[str, ...] = field(default_factory=tuple)
    # A check that must pass before this one is probed at all (migrations need the database).
    after: str | None = None


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_CHARS else flat[: DETAIL_CHARS - 3] + "..."


def http_outcome(status: int | None, body: str) -> Outcome:
    """200 passes; anything else is the last error, e.g. "HTTP 503: {...}"."""
    if status == 200:
        return Outcome(True, "HTTP 200")
    if status is None:
        return Outcome(False, body)
    return Outcome(False, _one_line(f"HTTP {status}: {body}") if body.strip() else f"HTTP {status}")


def workers_outcome(
    status: int | None, body: str, workers: Sequence[slots.Worker] = slots.WORKERS
) -> Outcome:
    """`GET /api/v1/workers` must be a JSON list holding every expected worker (the slot's
    profile's), right type."""
    if status != 200:
        return http_outcome(status, body)
    try:
        data = json.loads(body)
    except ValueError:
        return Outcome(False, _one_line(f"not JSON: {body}"))
    if not isinstance(data, list):
        kind = type(data).__name__.replace("dict", "object")
        return Outcome(False, f"expected a JSON list of workers, got a JSON {kind}")
    registered: dict[str, str] = {}
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("worker_id"), str):
            registered[item["worker_id"]] = str(item.get("worker_type", ""))
    problems: list[str] = []
    missing: list[str] = []
    for worker in workers:
        as_type = registered.get(worker.service)
        if as_type is None:
            missing.append(worker.service)
        elif as_type != worker.worker_type:
            missing.append(worker.service)
            problems.append(
                f"{worker.service} registered as {as_type!r}, not {worker.worker_type!r}"
            )
    count = f"{len(workers) - len(missing)}/{len(workers)} registered"
    if not missing:
        return Outcome(True, count)
    absent = [s for s in missing if s not in registered]
    parts = [*([f"missing {', '.join(absent)}"] if absent else []), *problems]
    return Outcome(False, f"{count}: {'; '.join(parts)}", tuple(missing))


# Compose's words when `exec` finds no running container: the service has not started yet.
_NOT_RUNNING = re.compile(r"is not running|no container found|is restarting", re.IGNORECASE)


def migration_outcome(result: Result) -> Outcome:
    """A migration ran once: passed, not yet possible (its container is not up), or failed
    for good, with its output."""
    if result.ok:
        last = result.stdout.strip().splitlines()[-1:] or ["applied"]
        return Outcome(True, _one_line(last[0]))
    if _NOT_RUNNING.search(result.stderr):
        return Outcome(False, "waiting for its container to run")
    return Outcome(
        False,
        f"failed (exit status {result.returncode}): {_one_line(result.tail(1))}",
        final=True,
        output=result.tail(FAILING_LOG_LINES),
    )


def migration_command(
    compose_cmd: Sequence[str], target: compose.Target, migration: apps.Migration
) -> list[str]:
    return compose.command(compose_cmd, target, "exec", "-T", migration.service, *migration.command)


def migration_check(
    target: compose.Target,
    compose_cmd: Sequence[str],
    env: Mapping[str, str],
    probes: Probes,
    migration: apps.Migration,
) -> Check:
    cmd = migration_command(compose_cmd, target, migration)
    run = probes.migrate or probes.exec
    return Check(
        "migrations",
        f"Migrations ({migration.label})",
        migration.service,
        lambda: migration_outcome(run(cmd, env)),
        (migration.service,),
        after="database",
    )


def checks(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    probes: Probes,
    migration: apps.Migration | None = None,
    where: engine.Engine | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> list[Check]:
    """The gate's checks for `target`, in display order; the app's migration step right after
    the database when it has one; the layout's workers; the slot's own observability, or the
    shared stack's when the slot uses it. URLs reach the engine `where` (detected when None)."""
    where = where or engine.detect(environ)
    h = net.host(target, environ, where)
    env = compose.environment(target, environ)
    db_port = target.port("KTRDR_DB_PORT")
    api = net.api_url(target, environ, where)
    steps = [migration_check(target, compose_cmd, env, probes, migration)] if migration else []
    return [
        Check(
            "database",
            "PostgreSQL accepts connections",
            "db",
            # Over the published port, as pg_isready would: a `compose exec` every 0.25 s costs
            # the Compose CLI's start-up each time, on the cores the slot is starting on.
            lambda: Outcome(*probes.pg(h, db_port, GATE_HTTP_TIMEOUT)),
            ("db",),
        ),
        *steps,
        backend_check(probes, api, target.project),
        workers_check(probes, api, layout),
        *observability_checks(target, environ, probes, layout, where),
    ]


def backend_check(probes: Probes, api: str, project: str) -> Check:
    """The backend answers its health endpoint; a login the database refused (said by the
    backend, or logged by the database) fails it at once."""

    def backend() -> Outcome:
        status, body = probes.http_get(f"{api}/health", GATE_HTTP_TIMEOUT)
        if status == 200:
            return http_outcome(status, body)
        refused = diagnose.login_failure(status, body)
        if refused is None and probes.db_log is not None:
            refused = diagnose.login_failure_in_text(probes.db_log(project))
        if refused is not None:
            # Trying again cannot mend a password: fail now, in the database's own words.
            return Outcome(False, f"database refused the login: {refused}", ("db",), final=True)
        return http_outcome(status, body)

    return Check("backend", "Backend API health", "backend", backend, ("backend",))


def workers_check(probes: Probes, api: str, layout: slots.Layout) -> Check:
    """Every worker of the layout registered with the backend; any of their containers (or the
    backend's) exiting fails it."""
    workers = layout.worker_list

    def listed() -> Outcome:
        return workers_outcome(*probes.http_get(f"{api}/workers", GATE_HTTP_TIMEOUT), workers)

    return Check(
        "workers",
        f"Workers registered ({layout.workers}: {len(workers)})",
        "backend",
        listed,
        ("backend", *(w.service for w in workers)),
    )


def _http(probes: Probes, url: str) -> Callable[[], Outcome]:
    return lambda: http_outcome(*probes.http_get(url, GATE_HTTP_TIMEOUT))


def observability_checks(
    target: compose.Target,
    environ: Mapping[str, str],
    probes: Probes,
    layout: slots.Layout,
    where: engine.Engine,
) -> list[Check]:
    """Jaeger, Prometheus and Grafana answer: the slot's own (their containers watched), or
    the shared stack's on its fixed ports (another project's: nothing of this slot to watch)."""
    if layout.shared:
        urls = net.shared_urls(environ, where)
        jaeger, prometheus = urls["Shared Jaeger UI"], urls["Shared Prometheus"]
        grafana = urls["Shared Grafana"]
    else:
        own = net.service_urls(compose.bind_address(target, environ), target.port, where)
        jaeger, prometheus, grafana = own["jaeger"], own["prometheus"], own["grafana"]
    rows = (
        ("jaeger", "Jaeger UI", f"{jaeger}/"),
        ("prometheus", "Prometheus ready", f"{prometheus}/-/ready"),
        ("grafana", "Grafana health", f"{grafana}/api/health"),
    )
    if layout.shared:
        return [
            Check(f"{name}-shared", f"Shared {label}", name, _http(probes, url))
            for name, label, url in rows
        ]
    return [Check(name, label, name, _http(probes, url), (name,)) for name, label, url in rows]
