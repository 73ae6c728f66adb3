"""What a machine holds once for every slot: `inv env` (the env files and the docs' port
tables), `inv init-shared` (the shared directory), `inv observability` (the shared stack)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit
from invoke.tasks import task

from sandbox import slots
from sandbox.cli import common
from sandbox.cli.common import SLOT_HELP, handled, out
from sandbox.errors import Exit, SandboxError

if TYPE_CHECKING:
    from sandbox import compose, engine


@task(
    name="observability",
    positional=["action"],
    help={"action": "up, down or status"},
)
@handled
def observability_task(c: Context, action: str) -> None:
    """The machine's one shared Jaeger, Prometheus and Grafana (for --observability=shared)."""
    from sandbox import observability

    environ = dict(os.environ)
    if action == "up":
        observability.up(common.ROOT, environ)
    elif action == "down":
        observability.down(common.ROOT, environ)
        out().line(f"{observability.PROJECT} is down")
        return
    elif action != "status":
        raise SandboxError(
            f"unknown action {action!r}: use `inv observability up`, `down` or `status`",
            Exit.USAGE,
        )
    out().observability(observability.status(environ))


@task(
    help={
        "slot": SLOT_HELP,
        "export": "print `export NAME=value` lines for eval in a shell",
        "check": "validate every env file (ports distinct and in range, nothing missing)",
        "write": "regenerate env/slot-*.env and the docs' port table from sandbox/slots.py",
    }
)
@handled
def env(
    c: Context,
    slot: str | None = None,
    export: bool = False,
    check: bool = False,
    write: bool = False,
) -> None:
    """Print a slot's env file, or check / regenerate all of them."""
    if write:
        _write_env_files()
    if check:
        _check_env_files()
    if not (write or check):
        _print_env(common.target(slot), export)


def _write_env_files() -> None:
    from sandbox import docs, envfiles

    changed = envfiles.write_all(common.ROOT)
    out().line(f"rewrote {len(changed)} env file(s)" if changed else "env files are up to date")
    if docs.sync(common.ROOT):
        out().line(f"rewrote the port tables in {docs.MANUAL} and {docs.README}")


def _check_env_files() -> None:
    from sandbox import envfiles

    problems = envfiles.check_all(common.ROOT)
    for problem in problems:
        out().line(str(problem))
    if problems:
        raise InvokeExit(f"error: {len(problems)} problem(s) in env/", code=int(Exit.BAD_ENV))
    out().line(f"env/: {len(slots.SLOTS)} files valid, no port shared between slots")


def _print_env(target: compose.Target, export: bool) -> None:
    if not export:
        out().line(target.env_file.read_text().rstrip("\n"))
        return
    for name, value in target.values.items():
        out().line(f"export {name}={shlex.quote(value)}")


@task(
    name="init-shared",
    help={"from": "a KTRDR checkout whose data/, models/, strategies/ to copy (never overwrites)"},
)
@handled
def init_shared(c: Context, from_: str | None = None) -> None:
    """Create ~/.ktrdr/shared/{data,models,strategies}; optionally fill it from a checkout.
    With a remote engine (DOCKER_HOST, a context): on that engine's host, same path."""
    from sandbox import engine, envfiles, shared

    target = envfiles.SHARED_DIR_DEFAULT
    source = shared.check_source(Path(from_).expanduser()) if from_ else None
    environ = dict(os.environ)
    where = engine.detect(environ)
    if not where.local:
        _init_remote_shared(str(target), source, environ, where)
        return
    created = shared.ensure(target)
    out().line("created " + ", ".join(map(str, created)) if created else f"{target} already exists")
    if source is not None:
        report = shared.copy_missing(source, target)
        out().line(
            f"copied {len(report.copied)} file(s) into {target}; "
            f"left {len(report.skipped)} existing file(s) as they were"
        )


def _init_remote_shared(
    directory: str, source: Path | None, environ: Mapping[str, str], where: engine.Engine
) -> None:
    from sandbox import docker
    from sandbox.remote import enginehost

    docker.check_engine(environ)
    image = enginehost.helper_image(common.ROOT, environ)
    done = enginehost.init_shared(directory, source, image, environ)
    made = ", ".join(done.created) if done.created else "nothing (it exists)"
    out().line(f"{directory} on {where.host}: created {made}")
    if source is not None:
        out().line(
            f"streamed {', '.join(done.sent)} of {source} ({done.files} file(s)) into it; "
            "files already there were kept"
        )
