"""`inv psql`, `inv shell`, `inv exec`: a terminal or a command inside a slot's service."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from sandbox import slots
from sandbox.cli import common
from sandbox.cli.common import SLOT_HELP, handled

if TYPE_CHECKING:
    from sandbox import compose


@task(help={"slot": SLOT_HELP})
@handled
def psql(c: Context, slot: str | None = None) -> None:
    """Open psql on a slot's database (as ktrdr, database ktrdr)."""
    from sandbox import compose, runner, stack
    from sandbox.swarm import record

    target = common.target(slot)
    environ = dict(os.environ)
    if record.selected_record(common.ROOT, target.slot, environ) is not None:
        _exec(target, "db", ["psql", "-U", "ktrdr", "ktrdr"])
        return
    cmd = stack.psql_command(common.compose_cli(environ), target, sys.stdin.isatty())
    env = compose.environment(target, environ)
    failed = f"psql on slot {target.slot} failed; is it up? (`inv status --slot={target.slot}`)"
    runner.run(cmd, env=env, capture=False, check=failed)


@task(help={"slot": SLOT_HELP, "service": "the service (default backend)"})
@handled
def shell(c: Context, slot: str | None = None, service: str = "backend") -> None:
    """An interactive shell in a slot's service: bash, else sh."""
    from sandbox import stack

    _exec(common.target(slot), slots.parse_service(service), stack.SHELL)


@task(
    name="exec",
    help={"slot": SLOT_HELP, "service": "the service (default backend)"},
)
@handled
def exec_(c: Context, slot: str | None = None, service: str = "backend") -> None:
    """Run a command in a slot's service: `inv exec --slot=N --service=S -- CMD ARGS...`."""
    from sandbox import stack

    argv = stack.after_double_dash(sys.argv, c.remainder)
    _exec(common.target(slot), slots.parse_service(service), argv)


def _exec(target: compose.Target, service: str, argv: list[str]) -> None:
    from sandbox import compose, runner, stack
    from sandbox.swarm import access, record

    environ = dict(os.environ)
    deployed = record.selected_record(common.ROOT, target.slot, environ)
    if deployed is not None:
        done = access.run_exec(deployed, service, argv, environ, sys.stdin.isatty())
        if not done.ok:
            raise common.exit_with(done.returncode)
        return
    cmd = stack.exec_command(common.compose_cli(environ), target, service, argv, sys.stdin.isatty())
    result = runner.run(cmd, env=compose.environment(target, environ), capture=False)
    if not result.ok:  # the command's own status; Compose or the command said why
        raise common.exit_with(result.returncode)
