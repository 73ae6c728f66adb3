"""The life cycle of one slot's stack: up (preflight, compose up, gate), down, logs, psql.

Each function returns what happened; the task layer renders it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import compose, docker, gate, preflight, runner, slots
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.runner import display
from sandbox.settings import GATE_TIMEOUT, LOCK_WAIT

DEFAULT_TIMEOUT = GATE_TIMEOUT  # kept under this name: callers and tests use it


@dataclass
class UpResult:
    preflight: preflight.Preflight
    started: bool  # False when the stack was already running and only the gate ran
    gate: gate.GateResult | None  # None with `wait=False`: the gate did not run
    logs: dict[str, str] = field(default_factory=dict)  # failing service -> last log lines
    compose_seconds: float = 0.0


def gate_timeout(cli: str | None, target: Target, environ: Mapping[str, str]) -> float:
    """The gate's timeout: `--timeout`, else KTRDR_GATE_TIMEOUT from the env file, else from
    the calling shell, else `DEFAULT_TIMEOUT`."""
    settings = {**environ, **target.values}
    raw = compose.resolve("KTRDR_GATE_TIMEOUT", cli, settings, str(DEFAULT_TIMEOUT))
    return slots.parse_seconds(raw, "--timeout")


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
) -> UpResult:
    """Start `target` and wait until it is really ready.

    `build`, when given, rebuilds images once preflight has passed. A stack whose services
    all run already only gets the gate, unless `recreate` (after such a rebuild). With
    `wait=False` the gate does not run (`.gate` is None). Raises SandboxError for a refused
    preflight or a failed `compose up`; a failed gate is a result (`.gate.passed`).
    """
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=on_busy):
        checked = preflight.run_preflight(target, environ)
        if on_preflight:
            on_preflight(checked)
        if build is not None:
            build()  # after preflight and under the lock: a refused slot rebuilds nothing
        already = all_running(checked.running) and not recreate
        compose_seconds = 0.0 if already else _compose_up(target, checked, environ, on_compose)
        result = UpResult(checked, not already, None, compose_seconds=compose_seconds)
        if wait:
            result.gate, result.logs = _gate(target, checked, environ, timeout, on_gate)
        return result


def _compose_up(
    target: Target,
    checked: preflight.Preflight,
    environ: Mapping[str, str],
    on_compose: Callable[[list[str]], None] | None,
) -> float:
    """`docker compose up -d`; how long it took. SandboxError with its output when it fails."""
    cmd = up_command(checked.compose, target)
    if on_compose:
        on_compose(cmd)
    started = time.monotonic()
    runner.run(
        cmd,
        env=compose.environment(target, environ),
        cwd=target.root,
        check=f"`docker compose up` failed for slot {target.slot}; the output above says "
        f"why (`inv logs --slot={target.slot}` for more): {display(cmd)}",
    )
    return time.monotonic() - started


def _gate(
    target: Target,
    checked: preflight.Preflight,
    environ: Mapping[str, str],
    timeout: float,
    on_gate: Callable[[list[gate.CheckResult]], None] | None,
) -> tuple[gate.GateResult, dict[str, str]]:
    """The gate's result, and the failing services' last log lines when it did not pass."""
    outcome = gate.run_gate(target, checked.compose, environ, timeout=timeout, on_update=on_gate)
    if outcome.passed:
        return outcome, {}
    services = gate.failing_services(outcome)
    return outcome, gate.failing_logs(target, checked.compose, environ, services)


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
        runner.run(
            cmd,
            env=compose.environment(target, environ),
            cwd=target.root,
            check=f"`docker compose down` failed for slot {target.slot}: {display(cmd)}",
        )
    return cmd
