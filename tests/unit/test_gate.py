"""The startability gate, driven by fake probes and a fake clock: no Docker, no sockets."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import (
    apps,
    checks,
    compose,
    docker,
    engine,
    envfiles,
    gate,
    gatechecks,
    gateload,
    gateprobes,
    gatewatch,
    net,
    settings,
    slots,
)
from sandbox.checks import CheckResult, State
from sandbox.runner import Result
from tests.unit.support.clock import FakeClock
from tests.unit.support.engine import FakeEngine

ALL_WORKERS = [
    {"worker_id": w.service, "worker_type": w.worker_type, "status": "available"}
    for w in slots.WORKERS
]
# Fakes answer instantly; a generous real wait means every round sees every answer.
WAIT = 5.0


class World:
    """A fake stack: each endpoint becomes ready at a given fake time."""

    def __init__(self, clock: FakeClock, ready_at: Mapping[str, float] | None = None) -> None:
        self.clock = clock
        self.ready_at = {name: 0.0 for name in ("database", "backend", "jaeger", "prometheus")}
        self.ready_at["grafana"] = 0.0
        self.ready_at.update(ready_at or {})
        self.workers_body: str | None = None  # overrides the /workers answer when set
        self.registered_at: dict[str, float] = {w.service: 0.0 for w in slots.WORKERS}
        self.containers = [container(s) for s in slots.SERVICES]
        self.calls: list[str] = []
        self.exec_calls: list[tuple[list[str], dict[str, str]]] = []
        self.pg_calls: list[tuple[str, int]] = []
        self.ps_calls = 0

    def elapsed(self) -> float:
        return self.clock.now - 100.0

    def ready(self, name: str) -> bool:
        return self.elapsed() >= self.ready_at[name]

    def http_get(self, url: str, timeout: float) -> tuple[int | None, str]:
        assert timeout <= 2.0
        self.calls.append(url)
        if url.endswith("/api/v1/health"):
            return (200, '{"status": "ok"}') if self.ready("backend") else (None, "refused")
        if url.endswith("/api/v1/workers"):
            if not self.ready("backend"):
                return None, "connection refused"
            if self.workers_body is not None:
                return 200, self.workers_body
            now = self.elapsed()
            listed = [w for w in ALL_WORKERS if now >= self.registered_at[str(w["worker_id"])]]
            return 200, json.dumps(listed)
        for name in ("jaeger", "prometheus", "grafana"):
            if url == URLS[name]:
                if self.ready(name):
                    return 200, "ok"
                return 503, '{"database": "failing"}'
        raise AssertionError(f"unexpected URL {url}")

    def exec(self, cmd: Sequence[str], env: Mapping[str, str]) -> Result:
        self.exec_calls.append((list(cmd), dict(env)))
        raise AssertionError(f"the gate ran a command it should not: {cmd}")

    def pg(self, host: str, port: int, timeout: float) -> tuple[bool, str]:
        assert timeout <= 2.0
        self.pg_calls.append((host, port))
        if self.ready("database"):
            return True, "accepting connections"
        return False, "the database system is starting up"

    def set_container(self, service: str, state: docker.ContainerState, status: str = "") -> None:
        self.containers = [c for c in self.containers if c.service != service]
        self.containers.append(container(service, state, status))

    def ps(self) -> list[docker.Container] | None:
        self.ps_calls += 1
        return self.containers

    def probes(self) -> gateprobes.Probes:
        return gateprobes.Probes(self.http_get, self.exec, self.ps, pg=self.pg)


URLS = {
    "jaeger": "http://127.0.0.1:16687/",
    "prometheus": "http://127.0.0.1:9091/-/ready",
    "grafana": "http://127.0.0.1:3001/api/health",
}


def container(
    service: str, state: docker.ContainerState = "running", status: str = "Up 5 seconds"
) -> docker.Container:
    return docker.Container(
        id=f"id-{service}",
        name=f"ktrdr-sandbox-1-{service}-1",
        project="ktrdr-sandbox-1",
        service=service,
        state=state,
        status=status,
        working_dir="/checkout",
    )


def run(
    target: compose.Target,
    world: World,
    clock: FakeClock,
    updates: list[list[CheckResult]] | None = None,
    *,
    timeout: float = settings.GATE_TIMEOUT,
    poll: float = settings.GATE_POLL,
    probe_wait: float = WAIT,
    probes: gateprobes.Probes | None = None,
    migration: apps.Migration | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> checks.GateResult:
    """The gate against `world` on the fake clock (`probes`: other probes than the world's)."""
    return gate.run_gate(
        target,
        ["docker", "compose"],
        {"PATH": "/usr/bin", "KTRDR_API_PORT": "9999"},
        clock=clock,
        sleep=clock.sleep,
        probes=probes or world.probes(),
        probe_wait=probe_wait,
        on_update=updates.append if updates is not None else None,
        timeout=timeout,
        poll=poll,
        where=engine.LOCAL,
        migration=migration,
        layout=layout,
    )


def by_name(result: checks.GateResult) -> dict[str, CheckResult]:
    return {c.name: c for c in result.checks}


def test_all_ready_passes_at_once(target: compose.Target) -> None:
    clock = FakeClock()
    result = run(target, World(clock), clock)
    assert result.passed
    assert [c.name for c in result.checks] == [
        "database",
        "backend",
        "workers",
        "jaeger",
        "prometheus",
        "grafana",
    ]
    assert all(c.state is State.PASSED and c.elapsed == 0.0 for c in result.checks)
    assert result.elapsed == 0.0
    assert by_name(result)["workers"].detail == "4/4 registered"
    assert result.urls["Backend API"] == "http://127.0.0.1:8001/api/v1"


def test_passes_on_the_poll_right_after_readiness(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 3.1, "grafana": 7.0, "database": 1.0})
    result = run(target, world, clock, poll=0.25)
    checks = by_name(result)
    assert result.passed
    assert checks["database"].elapsed == 1.0
    assert checks["backend"].elapsed == 3.25  # ready at 3.1; polled at 3.0 and 3.25
    assert checks["workers"].elapsed == 3.25
    assert checks["grafana"].elapsed == 7.0
    assert checks["jaeger"].elapsed == 0.0
    assert result.elapsed == 7.0  # ends as soon as the last check passed


def test_a_passed_check_is_not_polled_again(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"grafana": 5.0})
    run(target, world, clock, poll=0.5)
    assert world.calls.count("http://127.0.0.1:8001/api/v1/health") == 1
    assert world.calls.count(URLS["grafana"]) == 11  # t = 0, 0.5, ..., 5.0
    assert len(world.pg_calls) == 1


def test_never_ready_fails_at_timeout_with_last_error(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"grafana": 1e9})
    result = run(target, world, clock, timeout=5.0)
    checks = by_name(result)
    assert not result.passed
    assert result.elapsed == 5.0
    assert checks["grafana"].state is State.FAILED
    assert checks["grafana"].detail == 'HTTP 503: {"database": "failing"}'
    assert checks["grafana"].elapsed is None
    assert checks["grafana"].service == "grafana"
    assert all(checks[n].state is State.PASSED for n in ("database", "backend", "workers"))
    assert [c.name for c in result.failed] == ["grafana"]


def test_database_check_asks_postgres_on_the_slot_published_port(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"database": 1e9})
    result = run(target, world, clock, timeout=1.0)
    # The slot's own db port from its env file, at the bind address; no command is run.
    assert set(world.pg_calls) == {("127.0.0.1", 5433)}
    assert world.exec_calls == []
    assert by_name(result)["database"].detail == "the database system is starting up"


def test_workers_detail_counts_registrations_while_waiting(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at.update({"training-worker-1": 2.0, "training-worker-2": 4.0})
    updates: list[list[CheckResult]] = []
    result = run(target, world, clock, updates)
    details = [next(c.detail for c in u if c.name == "workers") for u in updates]
    assert "2/4 registered: missing training-worker-1, training-worker-2" in details
    assert "3/4 registered: missing training-worker-2" in details
    assert result.passed
    assert by_name(result)["workers"].elapsed == 4.0


def test_wrapped_workers_response_is_a_failure(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.workers_body = json.dumps({"workers": ALL_WORKERS})
    result = run(target, world, clock, timeout=2.0)
    workers = by_name(result)["workers"]
    assert workers.state is State.FAILED
    assert workers.detail == "expected a JSON list of workers, got a JSON object"


def test_missing_workers_point_at_their_own_logs(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at.update({"backtest-worker-2": 1e9, "training-worker-1": 1e9})
    result = run(target, world, clock, timeout=1.0)
    workers = by_name(result)["workers"]
    assert workers.detail == "2/4 registered: missing backtest-worker-2, training-worker-1"
    assert (workers.service, workers.log_services) == ("backtest-worker-2", ("training-worker-1",))
    assert gate.failing_services(result) == ["backtest-worker-2", "training-worker-1"]


@pytest.mark.parametrize(
    ("body", "passed", "detail"),
    [
        (json.dumps(ALL_WORKERS), True, "4/4 registered"),
        (json.dumps(ALL_WORKERS[:3]), False, "3/4 registered: missing training-worker-2"),
        (
            json.dumps([]),
            False,
            "0/4 registered: missing " + ", ".join(s.service for s in slots.WORKERS),
        ),
        (
            json.dumps({"workers": ALL_WORKERS}),
            False,
            "expected a JSON list of workers, got a JSON object",
        ),
        ("<html>", False, "not JSON: <html>"),
        (
            json.dumps([*ALL_WORKERS[:3], {**ALL_WORKERS[3], "worker_type": "backtesting"}]),
            False,
            "3/4 registered: training-worker-2 registered as 'backtesting', not 'training'",
        ),
        (json.dumps([*ALL_WORKERS, "junk", {"worker_id": 7}]), True, "4/4 registered"),
    ],
)
def test_workers_outcome(body: str, passed: bool, detail: str) -> None:
    outcome = gatechecks.workers_outcome(200, body)
    assert (outcome.passed, outcome.detail) == (passed, detail)


def test_workers_outcome_passes_http_errors_through() -> None:
    assert gatechecks.workers_outcome(None, "connection refused").detail == "connection refused"
    assert gatechecks.workers_outcome(500, "boom").detail == "HTTP 500: boom"


def test_exited_container_fails_fast(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"database": 1e9, "backend": 1e9})
    world.set_container("db", "exited", "Exited (1) 2 seconds ago")
    result = run(target, world, clock, timeout=180.0)
    checks = by_name(result)
    assert not result.passed
    assert result.elapsed < 3.0
    assert checks["database"].state is State.FAILED
    assert checks["database"].detail == "container exited (Exited (1) 2 seconds ago)"
    assert checks["jaeger"].state is State.PASSED
    assert checks["backend"].state is State.NOT_WAITED
    assert checks["backend"].detail.endswith("(not waited for: another check failed)")
    assert gate.failing_services(result) == ["db"]


def test_exited_worker_fails_the_workers_check(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at["training-worker-1"] = 1e9
    world.set_container("training-worker-1", "exited")
    # Another project's exited container of the same service name does not count.
    world.containers.append(
        docker.Container("x", "x", "ktrdr-sandbox-2", "backend", "exited", "Exited (1)", "/x")
    )
    result = run(target, world, clock)
    workers = by_name(result)["workers"]
    assert workers.state is State.FAILED
    assert workers.detail == "training-worker-1: container exited"
    assert workers.service == "training-worker-1"
    assert by_name(result)["backend"].state is State.PASSED


def test_created_containers_are_not_failures_and_ps_runs_every_two_seconds(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"jaeger": 1e9})
    world.set_container("jaeger", "created", "Created")
    result = run(target, world, clock, timeout=10.0)
    assert by_name(result)["jaeger"].detail.startswith("HTTP 503")
    assert world.ps_calls == 6  # t = 0, 2, 4, 6, 8, 10: not once per check per poll


def test_missing_containers_fail_fast(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    world.containers = [c for c in world.containers if c.service not in ("backend", "grafana")]
    world.ready_at["grafana"] = 1e9
    result = run(target, world, clock)
    checks = by_name(result)
    assert (checks["backend"].state, checks["backend"].detail) == (State.FAILED, "no container")
    assert checks["workers"].detail == "backend: no container"
    assert checks["grafana"].detail == "no container"
    assert result.elapsed == 0.0


def test_engine_unreachable_is_not_a_verdict(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1.0})
    world.ps = lambda: None  # type: ignore[method-assign]
    assert run(target, world, clock).passed


def test_a_hung_probe_does_not_hold_back_the_others(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    release = threading.Event()
    real_get = world.http_get

    def hanging(url: str, timeout: float) -> tuple[int | None, str]:
        if url == URLS["prometheus"]:
            release.wait(10)
            return None, "timed out"
        return real_get(url, timeout)

    world.http_get = hanging  # type: ignore[method-assign]
    try:
        result = run(target, world, clock, timeout=0.5, probe_wait=0.2)
    finally:
        release.set()
    checks = by_name(result)
    assert checks["prometheus"].state is State.FAILED
    assert checks["prometheus"].detail == "no answer yet"
    assert all(c.elapsed == 0.0 for c in result.checks if c.name != "prometheus")


def test_a_probe_that_raises_is_a_failed_check(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)

    def broken(host: str, port: int, timeout: float) -> tuple[bool, str]:
        raise RuntimeError("bug")

    world.pg = broken  # type: ignore[method-assign]
    result = run(target, world, clock, timeout=0.5)
    assert by_name(result)["database"].detail == "probe error: RuntimeError: bug"


def test_updates_are_snapshots(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1.0})
    updates: list[list[CheckResult]] = []
    run(target, world, clock, updates)
    assert updates[0][1].state is State.WAITING  # not mutated by later progress
    assert updates[-1][1].state is State.PASSED


def test_wildcard_bind_address_is_probed_on_loopback(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    base = compose.load_target(tmp_path, 1)
    wild = compose.Target(1, tmp_path, {**base.values, "KTRDR_BIND_ADDR": "0.0.0.0"})
    local = engine.LOCAL
    assert net.host(wild, {}, local) == "127.0.0.1"
    v6 = compose.Target(1, tmp_path, {**base.values, "KTRDR_BIND_ADDR": "::1"})
    assert net.urls(v6, {}, local)["Grafana"] == "http://[::1]:3001"
    # The exported machine-wide value counts when the env file does not set one.
    assert net.host(base, {"KTRDR_BIND_ADDR": "10.0.0.5"}, local) == "10.0.0.5"
    assert net.host(base, {}, local) == "127.0.0.1"


def test_a_remote_engines_ports_are_reached_at_its_host(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    base = compose.load_target(tmp_path, 1)
    wild = {"KTRDR_BIND_ADDR": "0.0.0.0"}
    # DOCKER_HOST names the engine: no docker call needed to find it.
    tcp = {**wild, "DOCKER_HOST": "tcp://127.0.0.2:2375"}
    assert net.api_url(base, tcp) == "http://127.0.0.2:8001/api/v1"
    assert net.urls(base, {**wild, "DOCKER_HOST": "ssh://me@[fd00::5]:22"})["Grafana"] == (
        "http://[fd00::5]:3001"
    )
    # KTRDR_CONNECT_HOST (ports forwarded, say) wins, also over a local engine's bind.
    forwarded = {**tcp, "KTRDR_CONNECT_HOST": "localhost"}
    assert net.host(base, forwarded) == "localhost"
    where = engine.resolve({"KTRDR_CONNECT_HOST": "10.1.1.1"}, None)
    assert net.host(base, {}, where) == "10.1.1.1"
    assert engine.connect_url_host(engine.LOCAL, "0.0.0.0") == "127.0.0.1"


def test_url_host_reaches_wildcards_on_loopback_and_brackets_ipv6() -> None:
    assert [engine.url_host(a) for a in ("", "0.0.0.0", "::", "[::]")] == ["127.0.0.1"] * 4
    assert engine.url_host("::1") == "[::1]"
    assert engine.url_host("127.0.0.2") == "127.0.0.2"


def test_urls(target: compose.Target) -> None:
    assert net.urls(target, {}, engine.LOCAL) == {
        "Backend API": "http://127.0.0.1:8001/api/v1",
        "Jaeger UI": "http://127.0.0.1:16687",
        "Prometheus": "http://127.0.0.1:9091",
        "Grafana": "http://127.0.0.1:3001",
        "PostgreSQL": "postgresql://ktrdr@127.0.0.1:5433/ktrdr",
        "backtest-worker-1": "http://127.0.0.1:5010/health",
        "backtest-worker-2": "http://127.0.0.1:5011/health",
        "training-worker-1": "http://127.0.0.1:5012/health",
        "training-worker-2": "http://127.0.0.1:5013/health",
    }


def test_failing_logs_runs_compose_logs_per_service(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:

    def logs_of(args: tuple[str, ...]) -> Result:
        if args[-1] == "grafana":
            return Result(args, 1, "", "no such service\n")
        return Result(args, 0, "db-1  | FATAL: bad\n")

    engine = FakeEngine().install(monkeypatch)
    engine.on(answer=logs_of)  # every command
    logs = gate.failing_logs(target, ["docker", "compose"], {}, ["db", "grafana", "db"])
    seen = [(list(c), dict(o["env"])) for c, o in zip(engine.commands, engine.options, strict=True)]
    assert logs == {"db": "db-1  | FATAL: bad", "grafana": "no such service"}
    assert seen[0][0] == compose.command(
        ["docker", "compose"], target, "logs", "--no-color", "--tail", "20", "db"
    )
    assert seen[0][1]["COMPOSE_PROJECT_NAME"] == "ktrdr-sandbox-1"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
            "connection refused",
        ),
        (ConnectionResetError(), "connection reset"),
        (urllib.error.URLError(TimeoutError()), "timed out"),
        (urllib.error.URLError("unknown url type: htp"), "unknown url type: htp"),
    ],
)
def test_describe_error(exc: BaseException, text: str) -> None:
    assert net.describe_error(exc) == text


def test_http_outcome() -> None:
    assert gatechecks.http_outcome(200, "{}").passed
    assert gatechecks.http_outcome(503, "").detail == "HTTP 503"
    long = gatechecks.http_outcome(500, "x" * 500).detail
    assert long.startswith("HTTP 500: xxx") and long.endswith("...") and len(long) <= 160


# --- an app's migration step ------------------------------------------------------------

MIGRATION = apps.Migration("backend", ("alembic", "upgrade", "head"), "alembic upgrade head")


def migrating(
    target: compose.Target, world: World, clock: FakeClock, answers: list[Result]
) -> tuple[checks.GateResult, list[list[str]]]:
    """The gate with a migration whose runs answer `answers` in turn (the last repeats)."""
    ran: list[list[str]] = []

    def migrate(cmd: Sequence[str], env: Mapping[str, str]) -> Result:
        ran.append(list(cmd))
        return answers[min(len(ran), len(answers)) - 1]

    probes = gateprobes.Probes(world.http_get, world.exec, world.ps, migrate=migrate, pg=world.pg)
    return run(target, world, clock, timeout=30, probes=probes, migration=MIGRATION), ran


def test_the_migration_runs_once_after_the_database_is_ready(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"database": 2.0})
    ok = Result((), 0, "INFO  [alembic] Running upgrade  -> 0001, create workers\n")
    result, ran = migrating(target, world, clock, [ok])
    assert result.passed
    assert [c.name for c in result.checks][:2] == ["database", "migrations"]
    step = result.checks[1]
    assert step.detail == "INFO [alembic] Running upgrade -> 0001, create workers"
    assert step.elapsed is not None and step.elapsed >= 2.0
    assert ran == [gatechecks.migration_command(["docker", "compose"], target, MIGRATION)]
    assert ran[0][-5:] == ["-T", "backend", "alembic", "upgrade", "head"]


def test_the_migration_waits_for_its_container(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    waiting = Result((), 1, "", 'service "backend" is not running\n')
    result, ran = migrating(target, world, clock, [waiting, waiting, Result((), 0, "")])
    assert result.passed
    assert len(ran) == 3
    assert result.checks[1].detail == "applied"


def test_a_failed_migration_fails_the_gate_at_once_with_its_output(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 60.0})
    said = 'Traceback ...\nsqlalchemy.exc.ProgrammingError: relation "x" already exists\n'
    result, ran = migrating(target, world, clock, [Result((), 1, "", said)])
    assert not result.passed
    assert len(ran) == 1
    step = result.checks[1]
    assert step.state is State.FAILED
    assert step.detail.startswith("failed (exit status 1): sqlalchemy.exc.ProgrammingError")
    assert 'relation "x" already exists' in step.output
    assert result.elapsed < 30  # failed fast, not at the timeout
    assert gate.failing_services(result)[0] == "backend"


REFUSED = '2026-11-27 19:00:01 UTC [61] FATAL:  password authentication failed for user "ktrdr"'


def test_a_refused_database_login_fails_the_gate_at_once_in_its_own_words(
    target: compose.Target,
) -> None:
    """KTRDR's health says nothing of its database: the db's log does."""
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    logs: list[str] = []

    def db_log(project: str) -> str:
        logs.append(project)
        return f"database system is ready to accept connections\n{REFUSED}\n"

    result = run(target, world, clock, probes=replace(world.probes(), db_log=db_log))
    backend = by_name(result)["backend"]
    assert not result.passed and result.elapsed < 1.0
    assert backend.state is State.FAILED
    assert backend.detail == (
        'database refused the login: password authentication failed for user "ktrdr"'
    )
    assert backend.service == "db" and logs == ["ktrdr-sandbox-1"]


def test_a_database_log_without_a_refusal_keeps_the_gate_waiting(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 2.0})
    probes = replace(world.probes(), db_log=lambda project: "the database system is starting up")
    result = gate.run_gate(
        target, ["docker", "compose"], {}, clock=clock, sleep=clock.sleep, probes=probes,
        probe_wait=WAIT,
    )  # fmt: skip
    assert result.passed


def test_an_app_process_that_died_under_a_running_container_fails_at_once(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at["training-worker-2"] = 1e9
    world.set_container("training-worker-2", "running", "Up 9 seconds (unhealthy)")
    world.set_container("backend", "running", "Up 9 seconds (healthy)")
    read: list[str] = []
    died = [
        "Process SpawnProcess-1:",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/training/training_worker.py", line 3, in <module>',
        "ImportError: cannot import name 'x'",
    ]

    def app_log(name: str) -> list[str]:
        read.append(name)
        return died if name.endswith("-training-worker-2-1") else ["INFO: Started server process"]

    probes = replace(world.probes(), app_log=app_log)
    result = run(target, world, clock, probes=probes)
    workers = by_name(result)["workers"]
    assert not result.passed
    assert result.elapsed < 3.0
    assert workers.state is State.FAILED
    assert workers.detail == (
        "training-worker-2: process died: ImportError: cannot import name 'x' "
        "(ktrdr/training/training_worker.py:3 in <module>)"
    )
    assert workers.service == "training-worker-2"
    # Healthy containers and services that run no app code are not read.
    assert "ktrdr-sandbox-1-backend-1" not in read
    assert not any(name.endswith(("-db-1", "-jaeger-1")) for name in read)


def test_an_exited_app_container_is_quoted_with_its_last_error(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at["backtest-worker-1"] = 1e9
    world.set_container("backtest-worker-1", "exited", "Exited (1) 1 second ago")

    def app_log(name: str) -> list[str]:
        return [
            "Traceback (most recent call last):",
            '  File "/app/ktrdr/backtesting/backtest_worker.py", line 2, in <module>',
            "NameError: name 'x' is not defined",
        ]

    result = run(target, world, clock, probes=replace(world.probes(), app_log=app_log))
    assert by_name(result)["workers"].detail == (
        "backtest-worker-1: container exited (Exited (1) 1 second ago): NameError: name 'x' is "
        "not defined (ktrdr/backtesting/backtest_worker.py:2 in <module>)"
    )


def test_services_whose_checks_passed_are_not_read(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 9.0, "jaeger": 13.0})
    read: list[tuple[float, str]] = []

    def app_log(name: str) -> list[str]:
        read.append((clock.now - 100.0, name))
        return []

    result = run(target, world, clock, probes=replace(world.probes(), app_log=app_log))
    assert result.passed
    # Polls at t = 0, 2, ... 12: the five app containers (running, not healthy yet) are read at
    # the paced looks while the backend and the workers are undecided (t = 4 and 8), none once
    # they passed (t = 9) though Jaeger was not.
    assert world.ps_calls == 7
    assert sorted({at for at, _ in read}) == [4.0, 8.0]
    assert len(read) == 10


def test_a_quiet_start_reads_no_log(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 3.0})
    read: list[str] = []

    def app_log(name: str) -> list[str]:
        read.append(name)
        return []

    probes = replace(world.probes(), app_log=app_log)
    assert run(target, world, clock, probes=probes).passed
    assert world.ps_calls == 2 and read == []


def test_the_log_of_a_container_still_starting_is_read_at_doubling_gaps() -> None:
    pace = gatewatch.LogPace(100.0)
    looks = [t for t in range(0, 70) if pace.due("backend", 100.0 + t)]
    assert looks == [4, 8, 16, 32, 48, 64]
    assert pace.due("worker", 104.0)  # each container on its own schedule


def test_an_app_process_that_died_while_its_container_is_starting_is_found_at_the_first_look(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    world.set_container("backend", "running", "Up 2 seconds (health: starting)")
    died = ["Process SpawnProcess-1:", "Traceback (most recent call last):", "KeyError: 'x'"]
    probes = replace(world.probes(), app_log=lambda name: died)
    result = run(target, world, clock, probes=probes)
    assert not result.passed
    assert by_name(result)["backend"].detail == "process died: KeyError: 'x'"
    assert 4.0 <= result.elapsed < 6.0


# --- under load: starting is not failing, and the timeout is about progress ------------------


def cpu_growing(clock: FakeClock, per_second: float) -> Any:
    """CPU accounting of a machine where every container uses `per_second` CPU-s a second."""
    return lambda container_id: (clock.now - 100.0) * per_second


def loaded(world: World, cpu: Any, starved: Any = lambda: True) -> gateprobes.Probes:
    """Probes of a machine short of CPU (unless `starved` says otherwise)."""
    return replace(world.probes(), cpu=cpu, starved=starved)


def test_a_service_without_an_answer_is_starting_with_its_cpu_so_far() -> None:
    progress = gateload.Progress()
    progress.note(1.0, [container("backend")], "ktrdr-sandbox-1", lambda _: 4.2)
    said = gateload.starting_detail("connection reset by peer", "backend", progress)
    assert said == "starting, 4 s of CPU so far (connection reset by peer)"
    assert gateload.starting_detail(said, "backend", progress) == said
    # An answer is an answer, and a service not accounted here is not claimed to be starting.
    assert gateload.starting_detail("HTTP 503: down", "backend", progress) == "HTTP 503: down"
    assert gateload.starting_detail("refused", "grafana", progress) == "refused"


def test_progress_needs_cpu_growth_over_the_window() -> None:
    progress = gateload.Progress()
    window = settings.GATE_PROGRESS_WINDOW
    for at, used in ((0.0, 1.0), (window, 1.2)):
        progress.note(at, [container("backend")], "ktrdr-sandbox-1", {"id-backend": used}.get)
    assert not progress.growing(window, {"backend"})  # 0.2 CPU-s in a window: stuck
    progress.note(window + 2, [container("backend")], "ktrdr-sandbox-1", lambda _: 3.0)
    assert progress.growing(window + 2, {"backend"})
    # Only the services still starting count; nothing known is no claim of progress.
    assert not progress.growing(window + 2, {"db"})
    assert not progress.growing(window + 2, set())
    assert not gateload.Progress().growing(100.0, {"backend"})


def test_a_starved_start_goes_on_past_the_timeout_while_its_cpu_grows(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 50.0})
    updates: list[list[CheckResult]] = []
    result = run(
        target, world, clock, updates, timeout=30.0, probes=loaded(world, cpu_growing(clock, 0.1))
    )
    assert result.passed
    assert 50.0 <= result.elapsed < 51.0
    seen = {c.detail for snapshot in updates for c in snapshot if c.name == "backend"}
    assert any(d.startswith("starting, ") and d.endswith("s of CPU so far (refused)") for d in seen)


def test_a_start_whose_cpu_stands_still_fails_at_the_timeout_saying_it_was_starting(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 50.0})
    result = run(target, world, clock, timeout=30.0, probes=loaded(world, lambda _: 2.0))
    assert not result.passed
    assert result.elapsed == 30.0
    assert by_name(result)["backend"].detail == "starting, 2 s of CPU so far (refused)"


def test_the_rest_of_the_slot_using_cpu_does_not_extend_the_gate(
    target: compose.Target,
) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 50.0})

    def others_busy(container_id: str) -> float:
        return 2.0 if container_id == "id-backend" else (clock.now - 100.0) * 0.5

    result = run(target, world, clock, timeout=30.0, probes=loaded(world, others_busy))
    assert not result.passed
    assert result.elapsed == 30.0


def test_cpu_growth_on_a_machine_with_cores_to_spare_is_no_reason_to_wait(
    target: compose.Target,
) -> None:
    """A service in a retry loop or a polling reloader uses CPU too: without a starved
    machine the gate ends at its timeout, and it stops waiting once the machine is not."""
    for starved in (lambda: False, None):
        clock = FakeClock()
        world = World(clock, {"backend": 50.0})
        probes = loaded(world, cpu_growing(clock, 0.1), starved)
        result = run(target, world, clock, timeout=30.0, probes=probes)
        assert not result.passed
        assert result.elapsed == 30.0
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    start = clock.now
    result = run(
        target,
        world,
        clock,
        timeout=30.0,
        probes=loaded(world, cpu_growing(clock, 0.1), lambda: clock.now - start < 40.0),
    )
    assert not result.passed
    assert 40.0 <= result.elapsed <= 42.0


def test_progress_never_goes_past_the_hard_cap(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    result = run(target, world, clock, timeout=30.0, probes=loaded(world, cpu_growing(clock, 0.1)))
    assert not result.passed
    assert result.elapsed == 30.0 * settings.GATE_HARD_CAP_FACTOR == 60.0


def test_a_failure_under_load_still_fails_at_once(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock, {"backend": 1e9})
    world.set_container("backtest-worker-1", "exited", "Exited (1) 1 second ago")
    result = run(target, world, clock, timeout=30.0, probes=loaded(world, cpu_growing(clock, 0.1)))
    assert not result.passed
    assert result.elapsed < 5.0
    assert "backtest-worker-1: container exited" in by_name(result)["workers"].detail
