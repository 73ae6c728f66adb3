"""The startability gate: after `docker compose up -d`, wait until the slot really works.

Six named checks poll independently and concurrently: the database accepts connections, the
backend answers its health endpoint, every worker of the slot's profile registered (four for
`full`, two for `light`, none for `none`), and Jaeger, Prometheus and Grafana answer: the
slot's own, or the shared stack's on `--observability=shared`. The gate ends as soon as every
check passed, when a watched container exited or is missing (no point waiting for it), or at
the timeout. It returns a `GateResult`; it
never raises for a stack that is not ready. Drawing progress is the caller's business
(`on_update`).

Every contact with the outside goes through `Probes`, so tests drive the gate with fakes and a
fake clock: no Docker, no sockets.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from sandbox import apps, compose, cpuuse, crashes, diagnose, docker, engine, net, runner, slots
from sandbox.checks import CheckResult, GateResult, State
from sandbox.errors import SandboxError
from sandbox.runner import Result
from sandbox.settings import (
    CONTAINER_POLL,
    ENGINE_QUERY_TIMEOUT,
    FAILING_LOG_LINES,
    GATE_EXEC_TIMEOUT,
    GATE_HARD_CAP_FACTOR,
    GATE_HTTP_TIMEOUT,
    GATE_POLL,
    GATE_PROGRESS_CPU,
    GATE_PROGRESS_WINDOW,
    GATE_TIMEOUT,
    MIGRATION_TIMEOUT,
)

DETAIL_CHARS = 160
DB_LOG_EVERY = 2.0  # seconds between two reads of the db's log while the backend is not up
DB_LOG_LINES = 50
APP_LOG_LINES = 80  # enough for a traceback through an import chain
# Only exited and dead are final: "created" is a worker waiting for a healthy backend.
EXITED_STATES = ("exited", "dead")
WAITING_DETAIL = "waiting"


HttpGet = net.HttpGet
Exec = Callable[[Sequence[str], Mapping[str, str]], Result]
PgProbe = Callable[[str, int, float], tuple[bool, str]]
ListContainers = Callable[[], Sequence[docker.Container] | None]


@dataclass(frozen=True)
class Probes:
    """The gate's only contacts with the outside world.

    `http_get(url, timeout)` -> (status, body) or (None, why it failed);
    `exec(cmd, env)` -> the finished command; `containers()` -> every container on the engine,
    or None when the engine could not be asked this time; `pg(host, port, timeout)` ->
    (accepting connections, why not).
    """

    http_get: HttpGet
    exec: Exec
    containers: ListContainers
    # One-shot steps that may take long (migrations); `exec` when not given.
    migrate: Exec | None = None
    pg: PgProbe = net.pg_ready
    # `db_log(project)` -> the last lines the project's database logged ("" for none).
    db_log: Callable[[str], str] | None = None
    # `app_log(container name)` -> its last log lines in the order written ([] for none):
    # how the gate sees an app process that died under a reloader that keeps running.
    app_log: Callable[[str], list[str]] | None = None
    # `cpu(container id)` -> CPU-seconds its processes used so far, None when unknown (not a
    # local engine): how the gate tells a service still starting on a busy machine from one
    # that is stuck.
    cpu: Callable[[str], float | None] | None = None
    # `starved()` -> whether this machine is short of CPU now (sandbox/cpuuse.py): the gate
    # goes on past its timeout only then; None: never.
    starved: Callable[[], bool] | None = None


# ----------------------------------------------------------------------------- real probes


def _exec(cmd: Sequence[str], env: Mapping[str, str]) -> Result:
    return runner.run(cmd, env=env, timeout=GATE_EXEC_TIMEOUT)


def default_probes(environ: Mapping[str, str]) -> Probes:
    def containers() -> list[docker.Container] | None:
        try:
            return docker.containers(environ)
        except SandboxError:
            return None  # an engine hiccup: the checks themselves will say what is wrong

    return Probes(
        http_get=net.http_get,
        exec=_exec,
        containers=containers,
        migrate=_migrate,
        db_log=_db_log(environ),
        cpu=cpuuse.cpu_seconds,
        starved=cpuuse.starved,
        app_log=_app_log(environ),
    )


def _db_log(environ: Mapping[str, str]) -> Callable[[str], str]:
    """The db container's last log lines, read at most every DB_LOG_EVERY seconds: Postgres
    logs every login it refuses, whatever the app (KTRDR's health says nothing of its db)."""
    last: dict[str, tuple[float, str]] = {}

    def read(project: str) -> str:
        now = time.monotonic()
        if project in last and now - last[project][0] < DB_LOG_EVERY:
            return last[project][1]
        cmd = ["docker", "logs", "--tail", str(DB_LOG_LINES), f"{project}-db-1"]
        result = runner.run(cmd, env=dict(environ), timeout=GATE_EXEC_TIMEOUT)
        text = result.stdout + result.stderr if result.ok else ""
        last[project] = (now, text)
        return text

    return read


def _app_log(environ: Mapping[str, str]) -> Callable[[str], list[str]]:
    def read(name: str) -> list[str]:
        cmd = ["docker", "logs", "--timestamps", "--tail", str(APP_LOG_LINES), name]
        result = runner.run(cmd, env=dict(environ), timeout=GATE_EXEC_TIMEOUT)
        return crashes.merge_streams(result.stdout, result.stderr) if result.ok else []

    return read


def _migrate(cmd: Sequence[str], env: Mapping[str, str]) -> Result:
    return runner.run(cmd, env=env, timeout=MIGRATION_TIMEOUT)


# ----------------------------------------------------------------------------- the checks


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
    workers = layout.worker_list
    services = tuple(w.service for w in workers)

    def listed(status: int | None, body: str) -> Outcome:
        return workers_outcome(status, body, workers)

    def backend() -> Outcome:
        status, body = probes.http_get(f"{api}/health", GATE_HTTP_TIMEOUT)
        if status == 200:
            return http_outcome(status, body)
        refused = diagnose.login_failure(status, body)
        if refused is None and probes.db_log is not None:
            refused = diagnose.login_failure_in_text(probes.db_log(target.project))
        if refused is not None:
            # Trying again cannot mend a password: fail now, in the database's own words.
            return Outcome(False, f"database refused the login: {refused}", ("db",), final=True)
        return http_outcome(status, body)

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
        Check("backend", "Backend API health", "backend", backend, ("backend",)),
        Check(
            "workers",
            f"Workers registered ({layout.workers}: {len(workers)})",
            "backend",
            lambda: listed(*probes.http_get(f"{api}/workers", GATE_HTTP_TIMEOUT)),
            ("backend", *services),
        ),
        *observability_checks(target, environ, probes, layout, where),
    ]


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


def crashed(
    containers: Sequence[docker.Container],
    project: str,
    services: Sequence[str],
    app_log: Callable[[str], list[str]] | None,
) -> dict[str, str]:
    """Services of `project` whose app process died: service -> what it died of, in its own
    words. A running container (a reloader outlived its child) is read unless healthy; an
    exited one for the error it exited with. One `docker logs` each; `services` are those
    whose checks are still undecided, so a slot that passed reads none."""
    if app_log is None:
        return {}
    found: dict[str, str] = {}
    for container in containers:
        if container.project != project or container.service not in services:
            continue
        if container.state == "running" and container.health != "healthy":
            crash = crashes.find_crash(app_log(container.name))
            if crash is not None:
                found[container.service] = crash.describe()
        elif container.state in EXITED_STATES:
            error = crashes.last_error(app_log(container.name))
            if error is not None:
                status = f" ({container.status})" if container.status else ""
                found[container.service] = f"container exited{status}: {error.describe_error()}"
    return found


@dataclass(frozen=True)
class Seen:
    """One poll of the engine: every container, and the app processes found dead."""

    containers: Sequence[docker.Container]
    crashes: Mapping[str, str]


def look(probes: Probes, project: str, services: Sequence[str]) -> Seen | None:
    """The container poll: None when the engine could not be asked this time."""
    containers = probes.containers()
    if containers is None:
        return None
    return Seen(containers, crashed(containers, project, services, probes.app_log))


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


# ----------------------------------------------------------------------------- under load

# How a probe says it got no answer at all (as opposed to an HTTP status): a process that has
# not bound its port yet, or one too starved of CPU to answer in time.
_NO_ANSWER = re.compile(
    r"reset|refused|timed out|timeout|closed|eof|unreachable|no answer|starting up|not accepting",
    re.IGNORECASE,
)


@dataclass
class Progress:
    """The CPU the slot's running containers have used, as the gate's container polls see it:
    what tells a start that is slow (CPU still growing) from one that is stuck."""

    by_service: dict[str, float] = field(default_factory=dict)
    # (at, service -> CPU-seconds), the last two windows' worth
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def note(
        self,
        at: float,
        containers: Sequence[docker.Container],
        project: str,
        cpu: Callable[[str], float | None],
    ) -> None:
        used = {c.service: cpu(c.id) for c in containers if c.project == project and c.running}
        known = {service: seconds for service, seconds in used.items() if seconds is not None}
        if not known:
            return  # not accounted here (a remote engine): nothing is claimed
        self.by_service = known
        self.samples = [s for s in self.samples if s[0] >= at - 2 * GATE_PROGRESS_WINDOW]
        self.samples.append((at, known))

    def growing(self, now: float, services: Collection[str]) -> bool:
        """Whether `services` used at least GATE_PROGRESS_CPU together over the last window.
        Only the services still starting count: the rest of an idle slot (workers renewing
        their registration, the database) uses about that much on its own."""
        older = [used for at, used in self.samples if at <= now - GATE_PROGRESS_WINDOW]
        if not older or not services:
            return False
        latest = self.samples[-1][1]
        grown = sum(latest.get(s, 0.0) - older[-1].get(s, latest.get(s, 0.0)) for s in services)
        return grown >= GATE_PROGRESS_CPU


def starting_detail(detail: str, service: str, progress: Progress) -> str:
    """A waiting check that got no answer, said as what it is when its service's container
    runs and is accounted: "starting, 4 s of CPU so far (connection reset)"."""
    seconds = progress.by_service.get(service)
    if seconds is None or not _NO_ANSWER.search(detail) or detail.startswith("starting,"):
        return detail
    return f"starting, {seconds:.0f} s of CPU so far ({detail})"


def starting(plan: Sequence[Check], results: Mapping[str, CheckResult]) -> set[str]:
    """The services of the checks still waiting without an answer (said as "starting")."""
    return {
        check.service
        for check in plan
        if results[check.name].state is State.WAITING
        and results[check.name].detail.startswith("starting,")
    }


def _deadline(
    progress: Progress,
    start: float,
    now: float,
    timeout: float,
    services: Collection[str],
    starved: Callable[[], bool] | None,
) -> float:
    """When the gate gives up: at `timeout`, or later while the machine is short of CPU
    (`starved`) and the `services` still starting keep using CPU, never past
    GATE_HARD_CAP_FACTOR times it. CPU growth alone is no progress: a service in a retry loop
    or a polling reloader uses CPU too, and the start holds its admission turn meanwhile.
    A failed check ends the gate before either."""
    if now - start < timeout or not progress.growing(now, services):
        return start + timeout
    if starved is None or not starved():
        return start + timeout
    return start + timeout * GATE_HARD_CAP_FACTOR


# ----------------------------------------------------------------------------- the loop


def _timed(probe: Callable[[], Outcome], clock: Callable[[], float]) -> tuple[Outcome, float]:
    try:
        outcome = probe()
    except Exception as exc:  # a probe bug must not hang the gate: report it as the check
        outcome = Outcome(False, f"probe error: {type(exc).__name__}: {exc}")
    return outcome, clock()


@dataclass
class _Round:
    """The gate's state between rounds: what each check says, and what is still in flight."""

    target: compose.Target
    plan: list[Check]
    probes: Probes
    clock: Callable[[], float]
    start: float
    results: dict[str, CheckResult]
    in_flight: dict[str, futures.Future[tuple[Outcome, float]]] = field(default_factory=dict)
    ps: futures.Future[Seen | None] | None = None
    next_ps: float = 0.0
    app_services: tuple[str, ...] = ()
    progress: Progress = field(default_factory=Progress)

    def submit(self, pool: futures.Executor, now: float) -> list[futures.Future[Any]]:
        """Start a probe for every undecided check without one in flight, and the container
        poll when it is due; return everything in flight."""
        for check in self.plan:
            if self.results[check.name].state is State.WAITING and check.name not in self.in_flight:
                if check.after and self.results[check.after].state is not State.PASSED:
                    continue
                self.in_flight[check.name] = pool.submit(_timed, check.probe, self.clock)
        if self.ps is None and now >= self.next_ps:
            undecided = {
                service
                for check in self.plan
                if self.results[check.name].state is State.WAITING
                for service in check.watch
            }
            services = tuple(s for s in self.app_services if s in undecided)
            self.ps = pool.submit(look, self.probes, self.target.project, services)
            self.next_ps = now + CONTAINER_POLL
        return [*self.in_flight.values(), *([self.ps] if self.ps is not None else [])]

    def collect(self) -> bool:
        """Apply every probe that finished; whether anything shown changed."""
        changed = False
        for check in self.plan:
            future = self.in_flight.get(check.name)
            if future is None or not future.done():
                continue
            del self.in_flight[check.name]
            result = self.results[check.name]
            before = result.detail
            moved = _apply(check, result, *future.result(), self.start)
            if result.state is State.WAITING:
                result.detail = starting_detail(result.detail, check.service, self.progress)
                moved = _differs(before, result.detail)
            changed = moved or changed
        return changed

    def apply_containers(self) -> bool:
        """Fail at once every undecided check whose watched container is gone or whose app
        process died under a running container; whether any."""
        if self.ps is None or not self.ps.done():
            return False
        # None: the engine could not be asked this time; the checks speak for now.
        seen = self.ps.result() if self.ps.exception() is None else None
        self.ps = None
        if seen is None:
            return False
        if self.probes.cpu is not None:
            self.progress.note(self.clock(), seen.containers, self.target.project, self.probes.cpu)
        changed = False
        for check in self.plan:
            result = self.results[check.name]
            lost = _died(seen, check) or gone(seen.containers, self.target.project, check.watch)
            if result.state is not State.WAITING or lost is None:
                continue
            service, why = lost
            result.state, result.elapsed = State.FAILED, self.clock() - self.start
            result.detail = why if len(check.watch) == 1 else f"{service}: {why}"
            result.service, result.log_services = service, ()
            changed = True
        return changed


_CPU_FIGURE = re.compile(r"^starting, \d+ s of CPU so far")


def _differs(before: str, after: str) -> bool:
    """Whether a waiting check's detail changed in more than its CPU figure (which grows every
    round: redrawing the gate for it every round would be noise)."""
    return _CPU_FIGURE.sub("starting", before) != _CPU_FIGURE.sub("starting", after)


def _died(seen: Seen, check: Check) -> tuple[str, str] | None:
    """The first watched service whose app process died: (service, what it died of)."""
    return next(((s, seen.crashes[s]) for s in check.watch if s in seen.crashes), None)


def _apply(check: Check, result: CheckResult, outcome: Outcome, at: float, start: float) -> bool:
    """One probe's answer into its check; whether anything shown changed."""
    changed = result.detail != outcome.detail
    if outcome.passed or outcome.final:
        result.state = State.PASSED if outcome.passed else State.FAILED
        result.elapsed, result.output = at - start, outcome.output
        changed = True
    result.detail = outcome.detail
    if outcome.services:
        result.service, result.log_services = outcome.services[0], outcome.services[1:]
    else:
        result.service, result.log_services = check.service, ()
    return changed


class _Verdict(Enum):
    GO_ON = "go on"
    PASSED = "passed"
    FAILED_FAST = "failed fast"  # a check failed: the others are not waited for


def _decide(results: Mapping[str, CheckResult]) -> _Verdict:
    states = [r.state for r in results.values()]
    if all(s is State.PASSED for s in states):
        return _Verdict.PASSED
    if State.FAILED in states:
        return _Verdict.FAILED_FAST
    return _Verdict.GO_ON


def _settle(results: Mapping[str, CheckResult], stopped_early: bool) -> bool:
    """Decide every check still waiting: failed at the timeout, not waited for after a fast
    failure. Whether there was any."""
    leftover = [r for r in results.values() if r.state is State.WAITING]
    for result in leftover:
        result.state = State.NOT_WAITED if stopped_early else State.FAILED
        if result.detail == WAITING_DETAIL:
            result.detail = "no answer yet"  # its first probe was still in flight
        if stopped_early:
            result.detail = f"{result.detail} (not waited for: another check failed)"
    return bool(leftover)


def run_gate(
    target: compose.Target,
    compose_cmd: list[str],
    environ: Mapping[str, str],
    *,
    timeout: float = GATE_TIMEOUT,
    poll: float = GATE_POLL,
    on_update: Callable[[list[CheckResult]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    probes: Probes | None = None,
    sleep: Callable[[float], None] = time.sleep,
    probe_wait: float | None = None,
    migration: apps.Migration | None = None,
    where: engine.Engine | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> GateResult:
    """Poll every check every `poll` seconds until all pass, one fails fast, or `timeout`.

    Each check has at most one probe in flight; a slow probe never holds back the others'
    next round. Each round waits up to `probe_wait` real seconds (default `poll`) for the
    probes in flight before moving on; tests with instant fakes set it high so that every
    round sees every answer, whatever the machine's load. `on_update` gets a snapshot of
    every check whenever one changes.
    """
    probes = probes or default_probes(environ)
    where = where or engine.detect(environ)
    plan = checks(target, compose_cmd, environ, probes, migration, where, layout)
    results = {
        c.name: CheckResult(c.name, c.label, State.WAITING, WAITING_DETAIL, None, c.service)
        for c in plan
    }

    def emit() -> None:
        if on_update is not None:
            on_update([replace(r) for r in results.values()])

    start = clock()
    state = _Round(
        target,
        plan,
        probes,
        clock,
        start,
        results,
        next_ps=start,
        app_services=layout.app_services,
    )
    wait_limit = poll if probe_wait is None else probe_wait
    pool = futures.ThreadPoolExecutor(max_workers=len(plan) + 1, thread_name_prefix="gate")
    try:
        emit()
        verdict = _poll(state, pool, emit, timeout, poll, wait_limit, sleep)
    finally:
        # Probes still in flight end by their own short timeouts; nobody waits for them.
        pool.shutdown(wait=False, cancel_futures=True)
    if _settle(results, verdict is _Verdict.FAILED_FAST):
        emit()
    final = list(results.values())
    return GateResult(
        slot=target.slot,
        passed=all(r.state is State.PASSED for r in final),
        checks=final,
        elapsed=clock() - start,
        urls=net.urls(target, environ, where, layout),
    )


def _poll(
    state: _Round,
    pool: futures.Executor,
    emit: Callable[[], None],
    timeout: float,
    poll: float,
    wait_limit: float,
    sleep: Callable[[float], None],
) -> _Verdict:
    """Rounds until every check passed, one failed fast, or `timeout` (GO_ON then); past
    `timeout` only while the machine is short of CPU and the services still starting keep
    using CPU (`_deadline`)."""
    clock, start = state.clock, state.start
    while True:
        round_start = clock()
        futures.wait(state.submit(pool, round_start), timeout=wait_limit)
        changed = state.collect()
        changed = state.apply_containers() or changed
        if changed:
            emit()
        verdict = _decide(state.results)
        if verdict is not _Verdict.GO_ON:
            return verdict
        now = clock()
        busy = starting(state.plan, state.results)
        deadline = _deadline(state.progress, start, now, timeout, busy, state.probes.starved)
        if now >= deadline:
            return verdict
        sleep(max(0.0, min(poll - (now - round_start), deadline - now)))


# ----------------------------------------------------------------------------- after a failure


def failing_services(result: GateResult) -> list[str]:
    """Every service whose logs explain the failed checks, in check order, once each."""
    found: dict[str, None] = {}
    for check in result.failed:
        for service in (check.service, *check.log_services):
            found.setdefault(service, None)
    return list(found)


def logs_command(
    compose_cmd: Sequence[str], target: compose.Target, service: str, lines: int = FAILING_LOG_LINES
) -> list[str]:
    return compose.command(compose_cmd, target, "logs", "--no-color", "--tail", str(lines), service)


def failing_logs(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    services: Sequence[str],
    lines: int = FAILING_LOG_LINES,
) -> dict[str, str]:
    """The last `lines` log lines of each service (what the command said when that failed)."""
    env = compose.environment(target, environ)
    tails: dict[str, str] = {}
    for service in dict.fromkeys(services):
        result = runner.run(
            logs_command(compose_cmd, target, service, lines), env=env, timeout=ENGINE_QUERY_TIMEOUT
        )
        text = result.stdout if result.ok else result.tail(lines)
        tails[service] = text.rstrip("\n") or "(no output)"
    return tails
