"""Checks for ktrdr-sandbox: `nox -l` lists them, `nox` runs them all, `nox -s e2e` the E2E.

Fast sessions need no Docker engine and run in seconds; `config` needs only the Compose CLI
(rendering a file needs no engine); `e2e` and `remote` need a real engine and fail, never skip,
without one (`remote` also fails when its simulated remote host cannot start, `swarm` when its three
Docker-in-Docker nodes cannot).
Every session installs the project with one of its extras (pyproject.toml), never a list of its
own. `nox -s lint -- sandbox/gate.py` and `nox -s typecheck -- tasks` check just those files.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.needs_version = ">=2024.4"

PACKAGE = "sandbox"
PYTHON_FILES = [PACKAGE, "tasks.py", "noxfile.py", "tests", "containers", "benchmarks"]
# Strict mypy everywhere; the one relaxation (psycopg2 has no types) is in pyproject.toml.
TYPED_FILES = PYTHON_FILES
SHELL_FILES = [
    "scripts/bootstrap.sh",
    "scripts/build-debian-base.sh",
    "scripts/init-shared-data-dir.sh",
    "scripts/provision-docker.sh",
    "scripts/remote-host.sh",
    "containers/images/remote-host/entrypoint.sh",
    "containers/images/postgres-debian/docker-entrypoint.sh",
    "containers/app/http-ok.sh",
    ".ci/run",
]

nox.options.sessions = ["lint", "typecheck", "tests", "config", "e2e", "remote", "swarm"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def install(session: nox.Session, extra: str) -> None:
    """The project, editable, with one of its extras."""
    session.install("-e", f".[{extra}]")


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint and format check) over the Python, shellcheck over the shell scripts."""
    install(session, "lint")
    files = session.posargs or PYTHON_FILES
    session.run("ruff", "check", *files)
    session.run("ruff", "format", "--check", *files)
    session.run("shellcheck", *SHELL_FILES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy in strict mode over the package, tasks, noxfile, tests, containers and benchmarks."""
    install(session, "typecheck")
    session.run("mypy", *(session.posargs or TYPED_FILES))


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests: no Docker needed, seconds."""
    install(session, "test")
    args = session.posargs or ["tests/unit", "containers/app/tests"]
    session.run("pytest", "-m", "not docker", *args)


@nox.session
def config(session: nox.Session) -> None:
    """Every env file through the real `docker compose config`; generated files vs the scheme."""
    install(session, "test")
    session.run("pytest", *(session.posargs or ["tests/config"]))


@nox.session
def e2e(session: nox.Session) -> None:
    """Two slots side by side on a real engine, through the Invoke tasks (builds images)."""
    if shutil.which("docker") is None:
        session.error("e2e needs Docker: no `docker` CLI on PATH (run scripts/bootstrap.sh)")
    install(session, "test")
    env = {"KTRDR_E2E": "1", "CI": os.environ.get("CI", "")}
    session.run("inv", "images", env=env)
    # The slowest tests in the log: where CI's minutes go.
    args = session.posargs or ["--durations=15", "tests/e2e"]
    session.run("pytest", "-m", "docker", *args, env=env)


@nox.session
def remote(session: nox.Session) -> None:
    """Slots on a simulated remote engine (Docker-in-Docker on 127.0.0.2) through `inv`."""
    if shutil.which("docker") is None:
        session.error("remote needs Docker: no `docker` CLI on PATH (run scripts/bootstrap.sh)")
    install(session, "test")
    # The remote host's volume keeps the inner engine's images for the next run (about 1.4 GB
    # not streamed again); the suite empties it of everything else when it starts, and
    # `scripts/remote-host.sh stop` removes it.
    env = {
        "CI": os.environ.get("CI", ""),
        "KTRDR_REMOTE_KEEP_IMAGES": os.environ.get("KTRDR_REMOTE_KEEP_IMAGES", "1"),
    }
    session.run("inv", "images", env=env)
    session.run("pytest", "-m", "remote", *(session.posargs or ["tests/remote"]), env=env)


@nox.session
def swarm(session: nox.Session) -> None:
    """Two slots on a three-node Docker-in-Docker swarm through `inv up --swarm`."""
    if shutil.which("docker") is None:
        session.error("swarm needs Docker: no `docker` CLI on PATH (run scripts/bootstrap.sh)")
    install(session, "test")
    # The nodes' volumes keep their images and the registry's blobs for the next run (1.5 GB
    # not sent and pushed again); the suite empties them of everything else when it starts,
    # and `python -m tests.support.swarmnodes stop` removes them.
    env = {
        "CI": os.environ.get("CI", ""),
        "KTRDR_SWARM_KEEP_IMAGES": os.environ.get("KTRDR_SWARM_KEEP_IMAGES", "1"),
    }
    session.run("inv", "images", env=env)
    session.run("pytest", "-s", "-m", "swarm", *(session.posargs or ["tests/swarm"]), env=env)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Cold-start, gate-lag and `inv status` numbers on a real engine (not run by default)."""
    install(session, "test")
    session.run("inv", "images")
    session.run("python", "benchmarks/bench_slots.py", *session.posargs)


@nox.session(name="bench-fleet", default=False)
def bench_fleet(session: nox.Session) -> None:
    """Fixture slots requested at once: time to ready, CPU against the machine's limit, idle CPU."""
    install(session, "test")
    session.run("inv", "images")
    session.run("python", "benchmarks/bench_fleet.py", *session.posargs)
