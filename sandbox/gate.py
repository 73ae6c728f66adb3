"""The startability gate: after `docker compose up -d`, wait until the slot really works.

Six named checks poll independently and concurrently: the database accepts connections, the
backend answers its health endpoint, all four workers registered, and Jaeger, Prometheus and
Grafana answer. The gate ends as soon as every check passed, when a watched container exited
or is missing (no point waiting for it), or at the timeout. It returns a `GateResult`; it
never raises for a stack that is not ready. Drawing progress is the caller's business
(`on_update`).

Every contact with the outside goes through `Probes`, so tests drive the gate with fakes and a
fake clock: no Docker, no sockets.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from sandbox import compose, docker, slots
from sandbox.errors import SandboxError
from sandbox.runner import Result, run

# Short: a probe that hangs delays nothing else (checks run concurrently), but it does delay its
# own next attempt, and a service that is up answers these endpoints in milliseconds.
HTTP_TIMEOUT = 1.5
# `docker compose exec` pays the Compose CLI's start-up (~0.3-1 s) before pg_isready even runs.
EXEC_TIMEOUT = 10.0
# One `docker ps` for the whole engine costs ~50-100 ms; every 2 s is prompt enough to stop
# waiting for a container that exited, and cheap.
CONTAINER_POLL = 2.0
MAX_BODY = 64 * 1024
DETAIL_CHARS = 160
WILDCARD_ADDRS = ("0.0.0.0", "::", "[::]", "")
# Only exited and dead are final: "created" is a worker waiting for a healthy backend.
EXITED_STATES = ("exited", "dead")
WAITING_DETAIL = "waiting"


class State(Enum):
    WAITING = "waiting"
    PASSED = "passed"
    FAILED = "failed"
    # The gate stopped before this check was decided (another check failed fast): neither
    # passed nor failed, so its service's logs are not blamed.
    NOT_WAITED = "not waited for"


@dataclass
class CheckResult:
    """One check as the gate currently sees it."""

    name: str
    label: str
    state: State
    detail: str
    elapsed: float | None  # seconds from the gate's start until it passed (or failed fast)
    service: str  # the compose service whose logs explain a failure
    # Further services whose logs help (e.g. every worker that did not register).
    log_services: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateResult:
    slot: int
    passed: bool
    checks: list[CheckResult]
    elapsed: float
    urls: dict[str, str]  # label -> URL of the slot's UIs and APIs

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.state is State.FAILED]


HttpGet = Callable[[str, float], tuple[int | None, str]]
Exec = Callable[[Sequence[str], Mapping[str, str]], Result]
ListContainers = Callable[[], Sequence[docker.Container] | None]


@dataclass(frozen=True)
class Probes:
    """The gate's only contacts with the outside world.

    `http_get(url, timeout)` -> (status, body) or (None, why it failed);
    `exec(cmd, env)` -> the finished command; `containers()` -> every container on the engine,
    or None when the engine could not be asked this time.
    """

    http_get: HttpGet
    exec: Exec
    containers: ListContainers


# ----------------------------------------------------------------------------- real probes

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


def _exec(cmd: Sequence[str], env: Mapping[str, str]) -> Result:
    return run(cmd, env=env, timeout=EXEC_TIMEOUT)


def default_probes(environ: Mapping[str, str]) -> Probes:
    def containers() -> list[docker.Container] | None:
        try:
            return docker.containers(environ)
        except SandboxError:
            return None  # an engine hiccup: the checks themselves will say what is wrong

    return Probes(http_get=http_get, exec=_exec, containers=containers)


# ----------------------------------------------------------------------------- addresses


def host(target: compose.Target, environ: Mapping[str, str] | None = None) -> str:
    """Where the slot's published ports are reached from this host.

    KTRDR_BIND_ADDR as Compose sees it (env file, else the exported machine-wide value, else
    127.0.0.1); a wildcard bind is reached on loopback. IPv6 comes back in brackets for URLs.
    """
    addr = compose.bind_address(target, environ or {})
    if addr in WILDCARD_ADDRS:
        return "127.0.0.1"
    return f"[{addr}]" if ":" in addr else addr


def urls(target: compose.Target, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Label -> URL of everything a developer opens on this slot."""
    h = host(target, environ)
    found = {
        "Backend API": f"http://{h}:{target.port('KTRDR_API_PORT')}/api/v1",
        "Jaeger UI": f"http://{h}:{target.port('KTRDR_JAEGER_UI_PORT')}",
        "Prometheus": f"http://{h}:{target.port('KTRDR_PROMETHEUS_PORT')}",
        "Grafana": f"http://{h}:{target.port('KTRDR_GRAFANA_PORT')}",
        "PostgreSQL": f"postgresql://ktrdr@{h}:{target.port('KTRDR_DB_PORT')}/ktrdr",
    }
    for worker in slots.WORKERS:
        found[worker.service] = f"http://{h}:{target.port(worker.port_variable)}/health"
    return found


# ----------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Outcome:
    """One probe's answer."""

    passed: bool
    detail: str
    services: tuple[str, ...] = ()  # when set: the services whose logs explain it


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    service: str
    probe: Callable[[], Outcome]
    # Containers whose exit fails this check at once: waiting for them would be pointless.
    watch: tuple[str, ...] = field(default_factory=tuple)


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


def workers_outcome(status: int | None, body: str) -> Outcome:
    """`GET /api/v1/workers` must be a JSON list holding every expected worker, right type."""
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
    for worker in slots.WORKERS:
        as_type = registered.get(worker.service)
        if as_type is None:
            missing.append(worker.service)
        elif as_type != worker.worker_type:
            missing.append(worker.service)
            problems.append(
                f"{worker.service} registered as {as_type!r}, not {worker.worker_type!r}"
            )
    count = f"{len(slots.WORKERS) - len(missing)}/{len(slots.WORKERS)} registered"
    if not missing:
        return Outcome(True, count)
    absent = [s for s in missing if s not in registered]
    parts = [*([f"missing {', '.join(absent)}"] if absent else []), *problems]
    return Outcome(False, f"{count}: {'; '.join(parts)}", tuple(missing))


def exec_outcome(result: Result) -> Outcome:
    if result.ok:
        return Outcome(True, _one_line(result.stdout) or "ready")
    return Outcome(False, _one_line(result.tail(1)) or f"exit status {result.returncode}")


def pg_isready_command(compose_cmd: Sequence[str], target: compose.Target) -> list[str]:
    return compose.command(
        compose_cmd,
        target,
        "exec",
        "-T",
        "db",
        "pg_isready",
        "-U",
        "ktrdr",
        "-d",
        "ktrdr",
        "-h",
        "127.0.0.1",
    )


def checks(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    probes: Probes,
) -> list[Check]:
    """The gate's checks for `target`, in display order."""
    h = host(target, environ)
    env = compose.environment(target, environ)
    pg_cmd = pg_isready_command(compose_cmd, target)
    api = f"http://{h}:{target.port('KTRDR_API_PORT')}/api/v1"
    workers = tuple(w.service for w in slots.WORKERS)

    def http(url: str) -> Callable[[], Outcome]:
        return lambda: http_outcome(*probes.http_get(url, HTTP_TIMEOUT))

    return [
        Check(
            "database",
            "PostgreSQL accepts connections",
            "db",
            lambda: exec_outcome(probes.exec(pg_cmd, env)),
            ("db",),
        ),
        Check("backend", "Backend API health", "backend", http(f"{api}/health"), ("backend",)),
        Check(
            "workers",
            "Workers registered",
            "backend",
            lambda: workers_outcome(*probes.http_get(f"{api}/workers", HTTP_TIMEOUT)),
            ("backend", *workers),
        ),
        Check(
            "jaeger",
            "Jaeger UI",
            "jaeger",
            http(f"http://{h}:{target.port('KTRDR_JAEGER_UI_PORT')}/"),
            ("jaeger",),
        ),
        Check(
            "prometheus",
            "Prometheus ready",
            "prometheus",
            http(f"http://{h}:{target.port('KTRDR_PROMETHEUS_PORT')}/-/ready"),
            ("prometheus",),
        ),
        Check(
            "grafana",
            "Grafana health",
            "grafana",
            http(f"http://{h}:{target.port('KTRDR_GRAFANA_PORT')}/api/health"),
            ("grafana",),
        ),
    ]


def gone(
    containers: Sequence[docker.Container], project: str, watch: Sequence[str]
) -> tuple[str, str] | None:
    """The first watched service of `project` that cannot come up any more: (service, why).

    Its container exited (or died), or it has none: `up -d` creates every container, so a
    missing one means the stack was taken down meanwhile.
    """
    for service in watch:
        mine = [c for c in containers if c.project == project and c.service == service]
        if not mine:
            return service, "no container"
        for container in mine:
            if container.state in EXITED_STATES:
                status = f" ({container.status})" if container.status else ""
                return service, f"container exited{status}"
    return None


# ----------------------------------------------------------------------------- the loop


def _timed(probe: Callable[[], Outcome], clock: Callable[[], float]) -> tuple[Outcome, float]:
    try:
        outcome = probe()
    except Exception as exc:  # a probe bug must not hang the gate: report it as the check
        outcome = Outcome(False, f"probe error: {type(exc).__name__}: {exc}")
    return outcome, clock()


def run_gate(
    target: compose.Target,
    compose_cmd: list[str],
    environ: Mapping[str, str],
    *,
    timeout: float = 180.0,
    poll: float = 0.25,
    on_update: Callable[[list[CheckResult]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    probes: Probes | None = None,
    sleep: Callable[[float], None] = time.sleep,
    probe_wait: float | None = None,
) -> GateResult:
    """Poll every check every `poll` seconds until all pass, one fails fast, or `timeout`.

    Each check has at most one probe in flight; a slow probe never holds back the others'
    next round. Each round waits up to `probe_wait` real seconds (default `poll`) for the
    probes in flight before moving on; tests with instant fakes set it high so that every
    round sees every answer, whatever the machine's load. `on_update` gets a snapshot of
    every check whenever one changes.
    """
    probes = probes or default_probes(environ)
    plan = checks(target, compose_cmd, environ, probes)
    results = {
        c.name: CheckResult(c.name, c.label, State.WAITING, WAITING_DETAIL, None, c.service)
        for c in plan
    }
    wait_limit = poll if probe_wait is None else probe_wait

    def emit() -> None:
        if on_update is not None:
            on_update([replace(r) for r in results.values()])

    start = clock()
    in_flight: dict[str, futures.Future[tuple[Outcome, float]]] = {}
    ps: futures.Future[Sequence[docker.Container] | None] | None = None
    next_ps = start
    stopped_early = False
    pool = futures.ThreadPoolExecutor(max_workers=len(plan) + 1, thread_name_prefix="gate")
    try:
        emit()
        while True:
            round_start = clock()
            for check in plan:
                if results[check.name].state is State.WAITING and check.name not in in_flight:
                    in_flight[check.name] = pool.submit(_timed, check.probe, clock)
            if ps is None and round_start >= next_ps:
                ps = pool.submit(probes.containers)
                next_ps = round_start + CONTAINER_POLL
            pending: list[futures.Future[Any]] = [*in_flight.values()]
            if ps is not None:
                pending.append(ps)
            futures.wait(pending, timeout=wait_limit)

            changed = False
            for check in plan:
                future = in_flight.get(check.name)
                if future is None or not future.done():
                    continue
                del in_flight[check.name]
                outcome, at = future.result()
                result = results[check.name]
                if outcome.passed:
                    result.state, result.elapsed = State.PASSED, at - start
                    changed = True
                if result.detail != outcome.detail:
                    changed = True
                result.detail = outcome.detail
                if outcome.services:
                    result.service, result.log_services = (
                        outcome.services[0],
                        outcome.services[1:],
                    )
                else:
                    result.service, result.log_services = check.service, ()

            if ps is not None and ps.done():
                # None: the engine could not be asked this time; the checks speak for now.
                seen = ps.result() if ps.exception() is None else None
                ps = None
                for check in plan:
                    result = results[check.name]
                    lost = None if seen is None else gone(seen, target.project, check.watch)
                    if result.state is not State.WAITING or lost is None:
                        continue
                    service, why = lost
                    result.state, result.elapsed = State.FAILED, clock() - start
                    result.detail = why if len(check.watch) == 1 else f"{service}: {why}"
                    result.service, result.log_services = service, ()
                    changed = True

            if changed:
                emit()
            states = [r.state for r in results.values()]
            if all(s is State.PASSED for s in states):
                break
            if State.FAILED in states:
                stopped_early = True
                break
            now = clock()
            if now - start >= timeout:
                break
            sleep(max(0.0, min(poll - (now - round_start), timeout - (now - start))))
    finally:
        # Probes still in flight end by their own short timeouts; nobody waits for them.
        pool.shutdown(wait=False, cancel_futures=True)

    leftover = [r for r in results.values() if r.state is State.WAITING]
    for result in leftover:
        result.state = State.NOT_WAITED if stopped_early else State.FAILED
        if result.detail == WAITING_DETAIL:
            result.detail = "no answer yet"  # its first probe was still in flight
        if stopped_early:
            result.detail = f"{result.detail} (not waited for: another check failed)"
    if leftover:
        emit()
    final = list(results.values())
    return GateResult(
        slot=target.slot,
        passed=all(r.state is State.PASSED for r in final),
        checks=final,
        elapsed=clock() - start,
        urls=urls(target, environ),
    )


# ----------------------------------------------------------------------------- after a failure


def failing_services(result: GateResult) -> list[str]:
    """Every service whose logs explain the failed checks, in check order, once each."""
    found: dict[str, None] = {}
    for check in result.failed:
        for service in (check.service, *check.log_services):
            found.setdefault(service, None)
    return list(found)


def logs_command(
    compose_cmd: Sequence[str], target: compose.Target, service: str, lines: int = 20
) -> list[str]:
    return compose.command(compose_cmd, target, "logs", "--no-color", "--tail", str(lines), service)


def failing_logs(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    services: Sequence[str],
    lines: int = 20,
) -> dict[str, str]:
    """The last `lines` log lines of each service (what the command said when that failed)."""
    env = compose.environment(target, environ)
    tails: dict[str, str] = {}
    for service in dict.fromkeys(services):
        result = run(logs_command(compose_cmd, target, service, lines), env=env, timeout=30)
        text = result.stdout if result.ok else result.tail(lines)
        tails[service] = text.rstrip("\n") or "(no output)"
    return tails
