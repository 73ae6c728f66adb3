"""The life cycle of one slot's stack: up (preflight, compose up, gate), down, logs, psql.

Each function returns what happened; the task layer renders it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import compose, docker, gate, preflight, slots
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.runner import display, run

# Long enough for a first start on a slow laptop (db init, image layers), short enough to end.
DEFAULT_TIMEOUT = 180.0
# How long a second `inv up`/`down` of the same slot waits for the first before refusing.
LOCK_WAIT = 300.0


@dataclass
class UpResult:
    preflight: preflight.Preflight
    started: bool  # False when the stack was already running and only the gate ran
    gate: gate.GateResult
    logs: dict[str, str] = field(default_factory=dict)  # failing service -> last log lines
    compose_seconds: float = 0.0


def up_command(compose_cmd: Sequence[str], target: Target) -> list[str]:
    # Images are built by `inv images` (or `inv up --build`), not by Compose: Debian's engine
    # has no BuildKit, which Compose's own builder needs.
    return compose.command(compose_cmd, target, "up", "-d", "--remove-orphans")


def down_command(compose_cmd: Sequence[str], target: Target, volumes: bool) -> list[str]:
    args = ["down", "--remove-orphans"]
    if volumes:
        args.append("--volumes")
    return compose.command(compose_cmd, target, *args)


def logs_command(
    compose_cmd: Sequence[str], target: Target, service: str | None, follow: bool, tail: int
) -> list[str]:
    args = ["logs", "--no-color", "--tail", str(tail)]
    if follow:
        args.append("--follow")
    if service:
        args.append(service)
    return compose.command(compose_cmd, target, *args)


def psql_command(compose_cmd: Sequence[str], target: Target, interactive: bool) -> list[str]:
    exec_args = ["exec"] if interactive else ["exec", "-T"]
    return compose.command(
        compose_cmd, target, *exec_args, "db", "psql", "-U", "ktrdr", "-d", "ktrdr"
    )


def all_running(containers: Sequence[docker.Container]) -> bool:
    """Every service of the stack has a running container."""
    running = {c.service for c in containers if c.running}
    return running >= set(slots.SERVICES)


def up(
    target: Target,
    environ: Mapping[str, str],
    *,
    recreate: bool = False,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    on_preflight: Callable[[preflight.Preflight], None] | None = None,
    on_gate: Callable[[list[gate.CheckResult]], None] | None = None,
    on_busy: Callable[[str], None] | None = None,
    on_compose: Callable[[list[str]], None] | None = None,
    build: Callable[[], object] | None = None,
) -> UpResult | preflight.Preflight:
    """Start `target` and wait until it is really ready.

    `build`, when given, rebuilds images once preflight has passed. A stack whose services
    all run already only gets the gate, unless `recreate` (after such a rebuild). Returns
    the preflight alone with `wait=False`. Raises SandboxError for a refused preflight or a
    failed `compose up`; a failed gate is a result (`.gate.passed`).
    """
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=on_busy):
        checked = preflight.run_preflight(target, environ)
        if on_preflight:
            on_preflight(checked)
        if build is not None:
            build()  # after preflight and under the lock: a refused slot rebuilds nothing
        env = compose.environment(target, environ)
        already = all_running(checked.running) and not recreate
        compose_seconds = 0.0
        if not already:
            cmd = up_command(checked.compose, target)
            if on_compose:
                on_compose(cmd)
            started = time.monotonic()
            result = run(cmd, env=env, cwd=target.root)
            compose_seconds = time.monotonic() - started
            if not result.ok:
                raise SandboxError(
                    f"`docker compose up` failed for slot {target.slot}; the output above says "
                    f"why (`inv logs --slot={target.slot}` for more): {display(cmd)}",
                    Exit.COMMAND,
                    details=result.tail(20),
                )
        if not wait:
            return checked
        outcome = gate.run_gate(
            target, checked.compose, environ, timeout=timeout, on_update=on_gate
        )
        logs = {}
        if not outcome.passed:
            logs = gate.failing_logs(
                target, checked.compose, environ, gate.failing_services(outcome)
            )
        return UpResult(checked, not already, outcome, logs, compose_seconds)


def down(
    target: Target,
    environ: Mapping[str, str],
    *,
    volumes: bool,
    on_busy: Callable[[str], None] | None = None,
) -> list[str]:
    """Stop and remove the slot's containers (and its volumes only when asked).

    Refuses a slot whose containers were started from another checkout: that checkout's
    `inv down` owns them (the message names the plain Compose command for a deleted one).
    """
    docker.check_engine(environ)
    compose_cmd = compose.find_compose(environ)
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=on_busy):
        own = [c for c in docker.sandbox_containers(environ) if c.slot == target.slot]
        elsewhere = preflight.other_checkout(target.root, own)
        if elsewhere is not None:
            raise SandboxError(
                f"slot {target.slot} runs from another checkout ({elsewhere}): run "
                f"`inv down --slot={target.slot}` there; if that checkout is gone, "
                f"`docker compose -p {target.project} down` removes it",
                Exit.OTHER_CHECKOUT,
            )
        cmd = down_command(compose_cmd, target, volumes)
        result = run(cmd, env=compose.environment(target, environ), cwd=target.root)
        if not result.ok:
            raise SandboxError(
                f"`docker compose down` failed for slot {target.slot}: {display(cmd)}",
                Exit.COMMAND,
                details=result.tail(20),
            )
    return cmd
