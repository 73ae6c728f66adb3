"""`inv up` and `inv down`: a slot's stack started (one engine or a swarm) and taken down."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit
from invoke.tasks import task

from sandbox import slots
from sandbox.cli import common
from sandbox.cli.common import (
    MODELS_HELP,
    NO_WAIT_HELP,
    OTHERS_HELP,
    RELOAD_HELP,
    SLOT_HELP,
    SOURCE_HELP,
    TIMEOUT_HELP,
    TORCH_HELP,
    handled,
    out,
)
from sandbox.errors import Exit, SandboxError

if TYPE_CHECKING:
    from sandbox import apps, compose, launch, stack


@task(
    help={
        "slot": SLOT_HELP + "; auto: the lowest free one from 1 (printed before anything starts)",
        "source": SOURCE_HELP,
        "torch": TORCH_HELP,
        "models": MODELS_HELP,
        "workers": "worker profile: full (default: two backtest and two training workers), "
        "light (one of each) or none",
        "observability": "own (default: the slot runs its own Jaeger, Prometheus, Grafana) or "
        "shared (the machine's one stack; `inv observability up` first)",
        "reload": RELOAD_HELP,
        "build": "rebuild the reference app image before starting",
        "no-wait": NO_WAIT_HELP,
        "timeout": TIMEOUT_HELP,
        "fresh": "recreate the slot's database (everything in it is lost); asks first",
        "yes": "with --fresh: do not ask (for scripts)",
        "swarm": "deploy the slot as a stack on the swarm DOCKER_HOST manages (also "
        "KTRDR_SWARM=1, or KTRDR_SWARM=auto when the engine is a manager)",
        "other-checkouts": "with --fresh: " + OTHERS_HELP,
    }
)
@handled
def up(
    c: Context,
    slot: str | None = None,
    source: str | None = None,
    torch: str | None = None,
    models: str = "shared",
    workers: str | None = None,
    observability: str | None = None,
    reload: str | None = None,
    build: bool = False,
    no_wait: bool = False,
    timeout: str | None = None,
    fresh: bool = False,
    yes: bool = False,
    swarm_: bool = False,
    other_checkouts: bool = False,
) -> None:
    """Start a slot's stack: preflight, `docker compose up -d`, then the startability gate."""
    from sandbox import apps, launch
    from sandbox.swarm import cluster

    reloads = apps.parse_reload(reload)
    run = launch.read_options(source, torch, models, workers, observability)
    environ = dict(os.environ)
    if (swarm_ or os.environ.get("KTRDR_SWARM")) and cluster.wanted(environ, swarm_):
        _swarm_up(slot, run, environ, wait=not no_wait, timeout=timeout)
        return
    with launch.chosen_slot(common.ROOT, environ, common.slot_choice(slot), out().line) as chosen:
        # A claimed slot is free: it has no database for --fresh to recreate.
        wipe = functools.partial(_confirm_fresh, yes) if fresh and not chosen.claimed else None
        start(
            chosen.target,
            run.source,
            environ,
            build=build,
            wait=not no_wait,
            timeout=timeout,
            layout=run.layout,
            fresh=wipe,
            reload=reloads,
            other_checkouts=other_checkouts,
        )


def start(
    target: compose.Target,
    source: apps.Source,
    environ: dict[str, str],
    *,
    build: bool = False,
    wait: bool = True,
    timeout: str | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    fresh: Callable[[int], bool] | None = None,
    reload: str | None = None,
    other_checkouts: bool = False,
) -> None:
    """`inv up`'s body for one slot: stack.up with the renderer's callbacks, then its report.
    `fresh`: recreate the slot's database once preflight passed and it says yes."""
    from sandbox import apps, stack, upsteps
    from sandbox.snapshots import database

    with out().gate_progress(target.slot) as on_gate:
        hooks = stack.Hooks(
            preflight=out().preflight,
            busy=out().line,
            compose=out().compose_up,
            gate=on_gate,
            step=out().step,
            build=functools.partial(_rebuild, environ) if build else None,
            app_image=lambda src: upsteps.app_image(src, common.ROOT, environ, out().step),
            fresh=fresh,
            queue=out().line,
        )
        result = stack.up(
            target,
            environ,
            source=source,
            layout=layout,
            recreate=build,
            wait=wait,
            timeout=stack.gate_timeout(timeout, target, environ),
            hooks=hooks,
            reload=apps.parse_reload(reload),
            other_checkouts=other_checkouts,
        )
    database.recover_interrupted(target, environ, out().line)
    _report_up(target.slot, result)


def _swarm_up(
    slot: str | None,
    run: launch.Launch,
    environ: dict[str, str],
    *,
    wait: bool,
    timeout: str | None,
) -> None:
    """`inv up` on a swarm: the slot as the stack ktrdr-sandbox-N (sandbox/swarm/); with
    --slot=auto, the lowest free slot while the swarm has room (sandbox/swarm/capacity.py)."""
    from sandbox import compose
    from sandbox.swarm import capacity

    if slot is None or slot.strip().lower() != "auto":
        _swarm_start(common.target(slot), run, environ, wait=wait, timeout=timeout)
        return
    with capacity.claim(common.ROOT, environ, out().line) as number:
        out().line(f"slot {number}: the lowest free slot on the swarm (--slot=auto)")
        target = compose.load_target(common.ROOT, number, environ)
        _swarm_start(target, run, environ, wait=wait, timeout=timeout)


def _swarm_start(
    target: compose.Target,
    run: launch.Launch,
    environ: dict[str, str],
    *,
    wait: bool,
    timeout: str | None,
) -> None:
    """`inv up --swarm`'s body for one slot: the deploy with the renderer's callbacks, then
    its report."""
    from sandbox import stack
    from sandbox.swarm import deploy

    with out().gate_progress(target.slot) as on_gate:
        gate_timeout = stack.gate_timeout(timeout, target, environ)
        options = deploy.Options(run.source, run.layout, wait, gate_timeout)
        hooks = stack.Hooks(
            busy=out().line,
            gate=on_gate,
            step=out().step,
            app_image=lambda src: deploy.app_image(src, common.ROOT, environ, out().step),
        )
        result = deploy.up(target, environ, options, hooks)
    out().step("stack", f"`docker stack deploy` took {result.compose_seconds:.1f}s")
    if result.gate is None:
        out().line(
            f"slot {target.slot} deployed without waiting; `inv status --slot={target.slot}`"
        )
        return
    out().step("nodes", deploy.summary(result))
    out().gate_summary(result.gate, result.logs)
    if not result.gate.passed:
        raise InvokeExit(
            f"error: slot {target.slot} did not become ready on the swarm; failing checks and "
            f"their logs are above (`inv logs --slot={target.slot}` for more)",
            code=int(Exit.FAILED),
        )


def _confirm_fresh(yes: bool, slot: int) -> bool:
    """`--fresh` deletes a database: asked on a terminal, `--yes` in scripts (sandbox/ask.py)."""
    from sandbox import ask

    return ask.confirm(
        f"recreate slot {slot}'s database? everything in it is lost",
        yes,
        f"--fresh deletes slot {slot}'s database: add --yes to confirm it when not on a terminal",
    )


def _rebuild(environ: Mapping[str, str]) -> None:
    from sandbox.images import build as images

    out().step("build", "reference app image")
    images.build_app(common.ROOT, environ)


def _report_up(slot: int, result: stack.UpResult) -> None:
    if result.gate is None:
        out().line(f"slot {slot} started without waiting; check it with `inv verify`")
        return
    out().up_result(result)
    if not result.gate.passed:
        raise InvokeExit(
            f"error: slot {slot} did not become ready; failing checks and their logs "
            f"are above (`inv logs --slot={slot}` for more)",
            code=int(Exit.FAILED),
        )


@task(
    help={
        "slot": SLOT_HELP,
        "volumes": "also remove the database volume(s) (data lost)",
        "all": "every slot of this engine, orphans included (lists them and asks first)",
        "yes": "with --all: do not ask (for scripts; without a terminal it is required)",
        "other-checkouts": "with --volumes: " + OTHERS_HELP,
    }
)
@handled
def down(
    c: Context,
    slot: str | None = None,
    volumes: bool = False,
    all_: bool = False,
    yes: bool = False,
    other_checkouts: bool = False,
) -> None:
    """Stop and remove a slot's containers (or every slot's, --all); volumes only with --volumes."""
    from sandbox import stack
    from sandbox.swarm import record, teardown

    if all_:
        _down_all(slot, volumes, yes, other_checkouts)
        return
    target = common.target(slot)
    deployed = record.selected_record(common.ROOT, target.slot, os.environ)
    if deployed is not None:
        teardown.down(target, dict(os.environ), deployed, volumes=volumes)
        kept = "removed its volumes" if volumes else "kept its volumes"
        out().line(f"slot {target.slot} (stack {deployed.stack}) is down on the swarm; {kept}")
        return
    stack.down(
        target,
        dict(os.environ),
        volumes=volumes,
        on_busy=out().line,
        on_orphan=lambda old: out().line(
            f"slot {target.slot} was started from {old}, which no longer exists (orphaned); "
            "taking it down from here"
        ),
        other_checkouts=other_checkouts,
    )
    kept = "removed its volumes" if volumes else "kept its volumes"
    out().line(f"slot {target.slot} ({target.project}) is down; {kept}")


def _down_all(slot: str | None, volumes: bool, yes: bool, others: bool) -> None:
    from sandbox import teardown

    if slot is not None:
        raise SandboxError("pass --slot=N or --all, not both", Exit.USAGE)
    environ = dict(os.environ)
    compose_cmd = common.compose_cli(environ)
    found = teardown.survey(environ, common.ROOT)
    # With --volumes a database that stays (another checkout's) is listed too, as kept.
    shown = [e for e in found if e.acts(volumes, others) or (volumes and e.volumes)]
    entries = [e for e in shown if e.acts(volumes, others)]
    for entry in shown:
        out().line(entry.describe(volumes, others))
    if not entries:
        out().line("no slot has containers" + ("" if volumes else " (volumes are kept)"))
        return
    if not teardown.confirm_or_refuse(entries, yes):
        raise InvokeExit("nothing taken down", code=int(Exit.FAILED))
    for entry in entries:
        removes = volumes and (entry.ours or others)
        teardown.take_down(entry, compose_cmd, environ, volumes=removes, root=common.ROOT)
        kept = "" if removes or not entry.volumes else "; kept its volumes"
        out().line(f"slot {entry.slot} ({entry.project}) is down{kept}")


@task(help={"slot": SLOT_HELP})
@handled
def pause(c: Context, slot: str | None = None) -> None:
    """Freeze an idle slot's containers (`docker pause`): no CPU at all, memory and state kept.

    `inv resume` (or `inv up`, `inv verify`) thaws it in about a second. `inv status` shows it
    as `paused`."""
    from sandbox import pause as pausing

    target = common.target(slot)
    out().line(pausing.pause(target, dict(os.environ)).describe("paused"))


@task(help={"slot": SLOT_HELP})
@handled
def resume(c: Context, slot: str | None = None) -> None:
    """Thaw a slot frozen by `inv pause`: its processes carry on where they stopped."""
    from sandbox import pause as pausing

    target = common.target(slot)
    out().line(pausing.resume(target, dict(os.environ)).describe("resumed"))
