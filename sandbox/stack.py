"""The life cycle of one slot's stack: up (preflight, compose up, gate), down, logs, psql.

Each function returns what happened; the task layer renders it.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import (
    apps,
    checkouts,
    checks,
    compose,
    diagnose,
    docker,
    gate,
    lastup,
    observability,
    ownership,
    pause,
    preflight,
    reach,
    runner,
    slotfiles,
    slots,
    upsteps,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.images import provenance
from sandbox.lock import slot_lock
from sandbox.remote import codesync
from sandbox.runner import display
from sandbox.settings import GATE_TIMEOUT, LOCK_WAIT


@dataclass
class UpResult:
    preflight: preflight.UpPlan
    started: bool  # False when the stack was already running and only the gate ran
    gate: checks.GateResult | None  # None with `wait=False`: the gate did not run
    logs: dict[str, str] = field(default_factory=dict)  # failing service -> last log lines
    compose_seconds: float = 0.0
    queued_seconds: float = 0.0  # in line for the machine-wide admission before compose up


def gate_timeout(cli: str | None, target: Target, environ: Mapping[str, str]) -> float:
    """The gate's timeout: `--timeout`, else KTRDR_GATE_TIMEOUT from the env file, else from
    the calling shell, else `GATE_TIMEOUT`."""
    settings = {**environ, **target.values}
    raw = compose.resolve("KTRDR_GATE_TIMEOUT", cli, settings, str(GATE_TIMEOUT))
    return slots.parse_seconds(raw, "--timeout")


def up_command(
    compose_cmd: Sequence[str],
    target: Target,
    overrides: Sequence[Path] = (),
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> list[str]:
    # Images are built by `inv images` (or `inv up --build`), not by Compose: Debian's engine
    # has no BuildKit, which Compose's own builder needs. Services the layout leaves out are
    # scaled to 0: the compose file stays one file for every profile, and a container left
    # from an earlier profile is removed.
    scale = [f"--scale={service}=0" for service in layout.left_out]
    return compose.command(
        compose_cmd, target, "up", "-d", "--remove-orphans", *scale, overrides=overrides
    )


def down_command(compose_cmd: Sequence[str], target: Target, volumes: bool) -> list[str]:
    return compose.command(compose_cmd, target, *compose.down_args(volumes))


def psql_command(compose_cmd: Sequence[str], target: Target, interactive: bool) -> list[str]:
    exec_args = ["exec"] if interactive else ["exec", "-T"]
    return compose.command(
        compose_cmd, target, *exec_args, "db", "psql", "-U", "ktrdr", "-d", "ktrdr"
    )


# bash when the image has it (KTRDR's do), else sh: found inside the container, in one exec.
SHELL = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"]


def exec_command(
    compose_cmd: Sequence[str],
    target: Target,
    service: str,
    argv: Sequence[str],
    interactive: bool,
) -> list[str]:
    """`docker compose exec` of `argv` in `service`; -T (no terminal) when stdin is not one."""
    flags = [] if interactive else ["-T"]
    return compose.command(compose_cmd, target, "exec", *flags, service, *argv)


def after_double_dash(argv: Sequence[str], remainder: str) -> list[str]:
    """The words after the first `--` of the command line, exactly as given. Invoke keeps them
    only joined with spaces (`Context.remainder`), which loses quoting (`sh -c 'a b'`), so they
    are taken from `argv` when that is the same command line, else split from `remainder`.
    No words at all: SandboxError(USAGE)."""
    words = list(argv[list(argv).index("--") + 1 :]) if "--" in argv else []
    if not words or " ".join(words) != remainder:
        words = shlex.split(remainder)
    if not words:
        raise SandboxError(
            "which command? put it after `--`: `inv exec --slot=N --service=S -- CMD ARGS...`",
            Exit.USAGE,
        )
    return words


def all_running(
    containers: Sequence[docker.Container], layout: slots.Layout = slots.DEFAULT_LAYOUT
) -> bool:
    """Every service of the layout has a running container."""
    running = {c.service for c in containers if c.running}
    return running >= set(layout.services)


@dataclass(frozen=True)
class Hooks:
    """What `up` tells its caller as it goes, and what it asks of it; all optional.

    `preflight` hears the checks, `busy` that another command holds the slot, `compose` the
    command it runs, `gate` each round of the gate, `step` any other step (a copy to a remote
    engine). `build` rebuilds images once preflight has passed; `app_image` gets (or builds)
    the image a source checkout runs on; `fresh(slot)` confirms recreating the database;
    `queue` hears that the start waits for its turn (sandbox/admission.py).
    """

    preflight: Callable[[preflight.UpPlan], None] | None = None
    busy: Callable[[str], None] | None = None
    compose: Callable[[list[str]], None] | None = None
    gate: Callable[[list[checks.CheckResult]], None] | None = None
    step: Callable[[str, str], None] | None = None
    build: Callable[[], object] | None = None
    app_image: Callable[[apps.Source], str | None] | None = None
    fresh: Callable[[int], bool] | None = None
    # Hears why the start waits before its heavy phase, and its place in line as it changes.
    queue: Callable[[str], None] | None = None


def up(
    target: Target,
    environ: Mapping[str, str],
    *,
    source: apps.Source = apps.BUILT_IN,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    recreate: bool = False,
    wait: bool = True,
    timeout: float = GATE_TIMEOUT,
    hooks: Hooks = Hooks(),
    reload: str = apps.RELOAD_BACKEND,
    other_checkouts: bool = False,
) -> UpResult:
    """Start `target` running `source` and wait until it is really ready.

    A stack whose services all run already only gets the gate, unless `recreate` (after a
    rebuild, `hooks.build`). With `wait=False` the gate does not run (`.gate` is None). On a
    remote engine a source checkout is copied to its host first (sandbox/remote/codesync.py).
    `hooks.fresh`, when given, recreates the slot's database volume once preflight has passed
    and it confirmed (another checkout's only with `other_checkouts`).
    `reload` (apps.RELOAD_*) says which app services reload on edits.
    Raises SandboxError for a refused preflight, a failed build or a failed `compose up` (and
    for Ctrl-C, Exit.INTERRUPTED); a failed gate is a result (`.gate.passed`). Whatever ends
    a start once preflight passed is recorded for `inv status` (sandbox/lastup.py).
    """
    target = compose.configured(target, environ)
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=hooks.busy):
        plan = _preflight(target, environ, source, layout, hooks, other_checkouts)
        # After a start that did not finish, Compose runs again even over running containers:
        # they may carry what made it fail (say a password since put right).
        previous = lastup.read(target.root, target.slot)
        recreate = recreate or (previous is not None and previous.outcome != lastup.READY)
        start = _Start(target, environ, plan, hooks, reload, recreate)

        def run(begin: Callable[[], None]) -> UpResult:
            # The heavy phase (compose up and the gate) holds a turn of the machine-wide
            # admission, entered by _start when it has containers to start.
            with contextlib.ExitStack() as heavy:
                result = _start(start, heavy, begin)
                if wait:
                    result.gate, result.logs = _gate(target, plan, environ, timeout, hooks.gate)
            return result

        result = _recorded(target, run)
        _record_gate(target, result.gate)
        return result


def _preflight(
    target: Target,
    environ: Mapping[str, str],
    source: apps.Source,
    layout: slots.Layout,
    hooks: Hooks,
    other_checkouts: bool,
) -> preflight.UpPlan:
    """The preflight's plan, its steps and `reach`'s lines told to `hooks.preflight`; a
    `--fresh` the user then declines changes nothing."""
    fresh = hooks.fresh is not None
    plan = preflight.run_preflight(
        target, environ, source=source, layout=layout, fresh=fresh, other_checkouts=other_checkouts
    )
    plan.steps.extend(upsteps.reach_steps(target, environ, source))
    if hooks.preflight:
        hooks.preflight(plan)
    if hooks.fresh is not None and not hooks.fresh(target.slot):
        raise SandboxError(f"kept slot {target.slot}'s database: nothing was changed", Exit.USAGE)
    return plan


def _recorded(target: Target, run: Callable[[Callable[[], None]], UpResult]) -> UpResult:
    """`run(begin)`, its end recorded for `inv status`. STARTING is written when `run` calls
    `begin`, once the start has its turn (or needs none): a start that waits in line has
    changed nothing of the slot, so Ctrl-C or a kill there must leave the slot's previous
    record as it was (a ready slot stays ready, and is not recreated by the next `up`)."""
    begun = False

    def begin() -> None:
        nonlocal begun
        begun = True
        lastup.write(target.root, target.slot, lastup.STARTING)

    try:
        return run(begin)
    except KeyboardInterrupt:
        lastup.write(target.root, target.slot, lastup.INTERRUPTED)
        raise SandboxError(
            f"interrupted: slot {target.slot} may be half started; `inv up "
            f"--slot={target.slot}` finishes it, `inv down --slot={target.slot}` stops it",
            Exit.INTERRUPTED,
        ) from None
    except SandboxError as exc:
        if begun or exc.code is not Exit.INTERRUPTED:  # not Ctrl-C in line
            lastup.write(target.root, target.slot, lastup.FAILED, str(exc))
        raise


@dataclass(frozen=True)
class _Start:
    """What `_start` works from: the slot's configuration, the preflight's plan, the caller's
    hooks, what reloads, and whether Compose must run even over running containers."""

    target: Target
    environ: Mapping[str, str]
    plan: preflight.UpPlan
    hooks: Hooks
    reload: str
    recreate: bool


def _start(start: _Start, heavy: contextlib.ExitStack, begin: Callable[[], None]) -> UpResult:
    """Everything of `up` between preflight and the gate. Before anything of the slot is
    created it waits for its admission turn, entered into `heavy` (held by the caller through
    the gate), then calls `begin` (which records the start)."""
    target, environ, plan, hooks = start.target, start.environ, start.plan, start.hooks
    if hooks.build is not None:
        hooks.build()  # after preflight and under the lock: a refused slot rebuilds nothing
    image = hooks.app_image(plan.source) if hooks.app_image is not None else None
    running = upsteps.heal_network(target, environ, plan, hooks.step)
    running = pause.thaw_slot(target, running, environ, hooks.step)
    source = upsteps.applied_torch(plan.source)
    copied_to = upsteps.copy_source(target, environ, plan, source, hooks.step)
    upsteps.prepare_files(target, source, plan.where, hooks.step)
    override = upsteps.write_override(target, source, image, plan.layout, copied_to, start.reload)
    reach.adjust_override(override, target, environ)
    fresh = hooks.fresh is not None
    already = (
        all_running(running, plan.layout)
        and as_wanted(running, source, image, upsteps.place(target), start.reload)
        and not start.recreate
        and not fresh
    )
    queued = 0.0 if already else upsteps.wait_turn(target.slot, environ, hooks.queue, heavy)
    begin()
    ensure_volume(target, plan, fresh)
    compose_seconds = (
        0.0 if already else _compose_up(target, plan, environ, hooks.compose, override)
    )
    if plan.layout.shared:
        observability.refresh_targets(environ)  # the shared Prometheus scrapes this slot
    checkouts.write_env_sandbox(source, upsteps.env_sandbox(target, environ, plan, source))
    return UpResult(plan, not already, None, compose_seconds=compose_seconds, queued_seconds=queued)


def as_wanted(
    containers: Sequence[docker.Container],
    source: apps.Source,
    image: str | None,
    where: slotfiles.Place,
    reload: str = apps.RELOAD_BACKEND,
) -> bool:
    """The running app containers have what this `up` asks for: its app image, its torch, its
    shared and models directories, what reloads (labels; a container from before a label was
    recorded says nothing of it). Otherwise Compose must run again, and recreates what
    changed: `--models=slot` or another `--reload` on a running slot must not only be said."""
    wanted = {"shared": str(where.shared_dir), "models": str(where.models(source))}
    for container in containers:
        if container.service not in slotfiles.APP_SERVICES:
            continue
        if image is not None and container.image != image:
            return False
        if source.kind.image == "uv" and container.torch != source.torch:
            return False
        if {"shared": container.shared, "models": container.models} != wanted:
            return False
        if container.reload and container.reload != reload:
            return False
    return True


def _record_gate(target: Target, outcome: checks.GateResult | None) -> None:
    if outcome is None or outcome.passed:
        lastup.write(target.root, target.slot, lastup.READY)
        return
    failed = "; ".join(f"{c.name}: {c.detail}" for c in outcome.failed)
    lastup.write(target.root, target.slot, lastup.FAILED, f"gate: {failed}"[:300])


def ensure_volume(target: Target, plan: preflight.UpPlan, fresh: bool) -> None:
    """Create the slot's database volume stamped with where it came from (before Compose
    would make it unstamped); with `fresh`, first remove the slot's containers and exactly
    that one volume (sandbox/images/provenance.py says why the labels live on a volume we
    create)."""
    if not fresh and plan.volume is not provenance.Kind.MISSING:
        return
    if plan.expected is None:
        raise SandboxError("preflight did not look at the slot's database volume", Exit.FAILED)
    steps = provenance.fresh_plan(target.slot, plan.expected.labels(), plan.compose)
    if not fresh or plan.volume is provenance.Kind.MISSING:
        steps = steps[-1:]
    else:
        # `down` through this checkout's compose file rather than by project name alone.
        steps[0] = down_command(plan.compose, target, volumes=False)
    for cmd in steps:
        runner.run(
            cmd,
            env=dict(target.env),
            cwd=target.root,
            check=f"preparing slot {target.slot}'s database failed: {display(cmd)}",
        )


def _compose_up(
    target: Target,
    plan: preflight.UpPlan,
    environ: Mapping[str, str],
    on_compose: Callable[[list[str]], None] | None,
    override: Path,
) -> float:
    """`docker compose up -d`; how long it took. SandboxError with its output when it fails."""
    cmd = up_command(plan.compose, target, [override], plan.layout)
    if on_compose:
        on_compose(cmd)
    started = time.monotonic()
    runner.run(
        cmd,
        env=reach.compose_environment(target.env, target.root, environ),
        cwd=target.root,
        check=f"`docker compose up` failed for slot {target.slot}; the output above says "
        f"why (`inv logs --slot={target.slot}` for more): {display(cmd)}",
    )
    return time.monotonic() - started


def _gate(
    target: Target,
    plan: preflight.UpPlan,
    environ: Mapping[str, str],
    timeout: float,
    on_gate: Callable[[list[checks.CheckResult]], None] | None,
) -> tuple[checks.GateResult, dict[str, str]]:
    """The gate's result, and when it did not pass what explains it: a failed step's own
    output (a migration's), then the failing services' last log lines."""
    outcome = gate.run_gate(
        target,
        plan.compose,
        environ,
        timeout=timeout,
        on_update=on_gate,
        migration=plan.source.kind.migration,
        where=plan.where,
        layout=plan.layout,
    )
    if outcome.passed:
        return outcome, {}
    for check in outcome.failed:
        words = diagnose.login_failure_in_text(check.detail)
        if words is not None:
            raise SandboxError(diagnose.login_failure_message(target.slot, words), Exit.BAD_ENV)
    said = {c.label: c.output for c in outcome.failed if c.output}
    services = gate.failing_services(outcome)
    return outcome, {**said, **gate.failing_logs(target, plan.compose, environ, services)}


def down(
    target: Target,
    environ: Mapping[str, str],
    *,
    volumes: bool,
    on_busy: Callable[[str], None] | None = None,
    on_orphan: Callable[[str], None] | None = None,
    other_checkouts: bool = False,
) -> list[str]:
    """Stop and remove the slot's containers (and its volumes only when asked).

    Refuses a slot whose containers were started from another checkout: that checkout's
    `inv down` owns them. An orphaned slot (its checkout is gone) is taken down from here,
    after `on_orphan(its old checkout)`. With `volumes`, a database another checkout created
    (or an orphan's) is removed only with `other_checkouts`, as `up --fresh` recreates one.
    """
    docker.check_engine(environ)
    compose_cmd = compose.find_compose(environ)
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=on_busy):
        own = [c for c in docker.sandbox_containers(environ) if c.slot == target.slot]
        orphan = _down_allowed(target, environ, own, volumes, other_checkouts)
        if orphan is not None and on_orphan:
            on_orphan(orphan)
        cmd = down_command(compose_cmd, target, volumes)
        runner.run(
            cmd,
            env=compose.environment(target, environ),
            cwd=target.root,
            check=f"`docker compose down` failed for slot {target.slot}: {display(cmd)}",
        )
        lastup.clear(target.root, target.slot)
        if volumes:
            codesync.remove_volume(target, environ)
            forget(target, own)
        if any(c.layout.shared for c in own):
            # Stop scraping what is gone; the slot is down either way, so a shared stack that
            # cannot be told only keeps a stale target (the next shared `up` rewrites them).
            with contextlib.suppress(SandboxError):
                observability.refresh_targets(environ)
    return cmd


def _down_allowed(
    target: Target,
    environ: Mapping[str, str],
    own: Sequence[docker.Container],
    volumes: bool,
    other_checkouts: bool,
) -> str | None:
    """Refuse `down` of another checkout's slot, and with `volumes` of another checkout's
    database (unless `other_checkouts`); the checkout an orphaned slot was started from, or
    None."""
    elsewhere = ownership.other_checkout(target.root, own)
    gone = elsewhere is not None and elsewhere.gone
    if elsewhere is not None and not gone:
        raise SandboxError(
            f"slot {target.slot} runs from another checkout ({elsewhere}): run "
            f"`inv down --slot={target.slot}` there; if that checkout is gone, "
            f"`docker compose -p {target.project} down` removes it",
            Exit.OTHER_CHECKOUT,
        )
    if volumes:
        ownership.check_database_owner(
            target, environ, own,
            command=f"inv down --slot={target.slot} --volumes",
            action="remove it anyway", other_checkouts=other_checkouts,
        )  # fmt: skip
    return str(elsewhere) if gone else None


def forget(target: Target, containers: Sequence[docker.Container]) -> list[Path]:
    """After `down --volumes`: remove the `.env.sandbox` this tool wrote into the slot's
    source checkout, and the slot's override and secrets here. Nothing else is touched."""
    sources = {c.source for c in containers if c.source}
    sources |= {slotfiles.recorded_source(target.root, target.slot)} - {""}
    removed = [p for s in sources if (p := checkouts.remove_env_sandbox(Path(s))) is not None]
    return removed + slotfiles.remove_state(target.root, target.slot)
