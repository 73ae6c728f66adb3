"""The gate's contacts with the outside world, and the real ones.

Every probe the gate runs goes through a `Probes`, so tests drive the gate with fakes and a
fake clock: no Docker, no sockets. `default_probes` are the real ones: HTTP and the database's
startup packet on the published ports, `docker ps`, `docker logs`, the cgroup's CPU figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sandbox import cpuuse, crashes, docker, net, runner
from sandbox.errors import SandboxError
from sandbox.runner import Result
from sandbox.settings import (
    GATE_EXEC_TIMEOUT,
    MIGRATION_TIMEOUT,
)

DB_LOG_EVERY = 2.0  # seconds between two reads of the db's log while the backend is not up
DB_LOG_LINES = 50
APP_LOG_LINES = 80  # enough for a traceback through an import chain


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
