"""The life cycle of one slot's stack: up (preflight, compose up, gate), down, logs, psql.

Each function returns what happened; the task layer renders it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import (
    admission,
    apps,
    checks,
    compose,
    diagnose,
    docker,
    engine,
    gate,
    lastup,
    net,
    observability,
    ownership,
    preflight,
    reach,
    runner,
    shared,
    slots,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.images import app as appimages
from sandbox.images import build as images
from sandbox.images import provenance
from sandbox.images import send as imagesend
from sandbox.lock import slot_lock
from sandbox.remote import codesync, enginehost
from sandbox.runner import display
from sandbox.settings import GATE_TIMEOUT, LOCK_WAIT
from sandbox.status import checkout_gone

DEFAULT_TIMEOUT = GATE_TIMEOUT  # kept under this name: callers and tests use it


@dataclass
class UpResult:
    preflight: preflight.Preflight
    started: bool  # False when the stack was already running and only the gate ran
    gate: checks.GateResult | None  # None with `wait=False`: the gate did not run
    logs: dict[str, str] = field(default_factory=dict)  # failing service -> last log lines
    compose_seconds: float = 0.0
    queued_seconds: float = 0.0  # in line for the machine-wide admission before compose up


def gate_timeout(cli: str | None, target: Target, environ: Mapping[str, str]) -> float:
    """The gate's timeout: `--timeout`, else KTRDR_GATE_TIMEOUT from the env file, else from
    the calling shell, else `DEFAULT_TIMEOUT`."""
    settings = {**environ, **target.values}
    raw = compose.resolve("KTRDR_GATE_TIMEOUT", cli, settings, str(DEFAULT_TIMEOUT))
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

    preflight: Callable[[preflight.Preflight], None] | None = None
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
    timeout: float = DEFAULT_TIMEOUT,
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
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=hooks.busy):
        fresh = hooks.fresh is not None
        checked = preflight.run_preflight(
            target,
            environ,
            source=source,
            layout=layout,
            fresh=fresh,
            other_checkouts=other_checkouts,
        )
        checked.steps.extend(reach_steps(target, environ, source))
        if hooks.preflight:
            hooks.preflight(checked)
        if hooks.fresh is not None and not hooks.fresh(target.slot):
            raise SandboxError(
                f"kept slot {target.slot}'s database: nothing was changed", Exit.USAGE
            )
        # After a start that did not finish, Compose runs again even over running containers:
        # they may carry what made it fail (say a password since put right).
        previous = lastup.read(target.root, target.slot)
        recreate = recreate or (previous is not None and previous.outcome != lastup.READY)
        # Another --reload is another command for the workers: Compose recreates them.
        recreate = recreate or reload_changed(checked.running, reload)
        # STARTING is written once the start has its turn (or needs none): a start that
        # waits in line has changed nothing of the slot, so Ctrl-C or a kill there must leave
        # the slot's previous record as it was (a ready slot stays ready, and is not
        # recreated by the next `up`).
        begun = False

        def begin() -> None:
            nonlocal begun
            begun = True
            lastup.write(target.root, target.slot, lastup.STARTING)

        try:
            # The heavy phase (compose up and the gate) holds a turn of the machine-wide
            # admission, entered by _start when it has containers to start.
            with contextlib.ExitStack() as heavy:
                shape = (layout, reload)
                result = _start(
                    target, environ, checked, source, shape, recreate, hooks, (heavy, begin)
                )
                if wait:
                    result.gate, result.logs = _gate(
                        target, checked, environ, timeout, hooks.gate, source.kind.migration, layout
                    )
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
        _record_gate(target, result.gate)
        return result


def _start(
    target: Target,
    environ: Mapping[str, str],
    checked: preflight.Preflight,
    source: apps.Source,
    shape: tuple[slots.Layout, str],
    recreate: bool,
    hooks: Hooks,
    turn: tuple[contextlib.ExitStack, Callable[[], None]],
) -> UpResult:
    """Everything of `up` between preflight and the gate; `shape`: the layout and what
    reloads. Before anything of the slot is created it waits for its admission turn, entered
    into `turn`'s stack (held by the caller through the gate), then calls `turn`'s `begin`
    (which records the start)."""
    layout, reload = shape
    heavy, begin = turn
    if hooks.build is not None:
        hooks.build()  # after preflight and under the lock: a refused slot rebuilds nothing
    image = hooks.app_image(source) if hooks.app_image is not None else None
    checked = _heal_network(target, environ, checked, layout, hooks.step)
    source = applied_torch(source)
    copied_to = _copy_source(target, environ, checked, source, hooks.step)
    _prepare_files(target, source, checked.where, hooks.step)
    override = write_override(target, source, image, layout, copied_to, reload)
    reach.adjust_override(override, target.values, environ, compose.bind_address(target, environ))
    fresh = hooks.fresh is not None
    already = (
        all_running(checked.running, layout)
        and as_wanted(checked.running, source, image, place(target))
        and not recreate
        and not fresh
    )
    queued = 0.0 if already else _wait_turn(target.slot, environ, hooks.queue, heavy)
    begin()
    ensure_volume(target, environ, checked, source, fresh)
    compose_seconds = (
        0.0 if already else _compose_up(target, checked, environ, hooks.compose, override, layout)
    )
    if layout.shared:
        observability.refresh_targets(environ)  # the shared Prometheus scrapes this slot
    apps.write_env_sandbox(source, env_sandbox(target, environ, checked.where, source))
    return UpResult(
        checked, not already, None, compose_seconds=compose_seconds, queued_seconds=queued
    )


def as_wanted(
    containers: Sequence[docker.Container],
    source: apps.Source,
    image: str | None,
    where: apps.Place,
) -> bool:
    """The running app containers have what this `up` asks for: its app image, its torch, its
    shared and models directories (labels). Otherwise Compose must run again, and recreates
    what changed: `--models=slot` on a running slot must not only be said."""
    wanted = {"shared": str(where.shared_dir), "models": str(where.models(source))}
    for container in containers:
        if container.service not in apps.APP_SERVICES:
            continue
        if image is not None and container.image != image:
            return False
        if source.kind.image == "uv" and container.torch != source.torch:
            return False
        if {"shared": container.shared, "models": container.models} != wanted:
            return False
    return True


def reload_changed(running: Sequence[docker.Container], reload: str) -> bool:
    """Whether the slot's app containers run with another `--reload` than `reload` (those
    from before it was recorded say nothing)."""
    return any(c.reload and c.reload != reload for c in running)


def _wait_turn(
    slot: int,
    environ: Mapping[str, str],
    on_wait: Callable[[str], None] | None,
    heavy: contextlib.ExitStack,
) -> float:
    """Wait for the slot's admission turn, held in `heavy`; seconds waited. Ctrl-C in line:
    SandboxError(INTERRUPTED) saying that nothing was started (the line keeps no trace)."""
    try:
        turn = heavy.enter_context(admission.turn(slot, environ, on_wait=on_wait))
    except KeyboardInterrupt:
        raise SandboxError(
            f"interrupted while slot {slot} waited for its turn to start: nothing of it was "
            f"started; `inv up --slot={slot}` queues again",
            Exit.INTERRUPTED,
        ) from None
    if turn.queued and on_wait is not None:
        on_wait(f"slot {slot}: its turn to start after {turn.waited:.1f} s in line")
    return turn.waited


def place(target: Target) -> apps.Place:
    return apps.Place(target.slot, target.shared_dir)


def _prepare_files(
    target: Target,
    source: apps.Source,
    where: engine.Engine,
    on_step: Callable[[str, str], None] | None,
) -> None:
    """The slot's files in the shared directory: its own models directory (`--models=slot`,
    made here so that it belongs to the user, not to the engine's root), and the checkout's
    strategies when the shared directory has none yet. Says what it did; on a remote engine
    the shared directory is on the engine's host and only the models line is said (Docker
    makes the directory there)."""
    say = on_step or (lambda name, detail: None)
    models = place(target).models(source)
    if source.models == "slot":
        if where.local:
            shared.ensure_directory(models)
        say("models", f"{models} (this slot's own: --models=slot)")
    else:
        say("models", f"{models} (shared by every slot: a `*_latest` model may be another's)")
    if source.path is None or not source.kind.seeds or not where.local:
        return
    copied = shared.seed(source.path, target.shared_dir, source.kind.seeds).copied
    if copied:
        names = ", ".join(source.kind.seeds)
        say("seeded", f"{len(copied)} file(s) of {names} from {source.path} (none were there)")


def applied_torch(source: apps.Source) -> apps.Source:
    """`source` with the torch choice that applies to its image (sandbox/images/app.py): what
    the slot's label records and `inv status` shows."""
    if source.path is None or source.kind.image != "uv":
        return source
    torch = appimages.effective_torch(source.path, source.kind.extras, source.torch)
    return dataclasses.replace(source, torch=torch)


def _heal_network(
    target: Target,
    environ: Mapping[str, str],
    checked: preflight.Preflight,
    layout: slots.Layout,
    on_step: Callable[[str, str], None] | None,
) -> preflight.Preflight:
    """A shared slot whose containers are attached to a shared network since removed (its
    `inv observability down` ran while the slot was stopped) could not start again: those
    containers are removed here, and Compose makes them anew. The preflight without them."""
    if not layout.shared or not checked.running:
        return checked
    removed = observability.heal(checked.running, environ)
    if not removed:
        return checked
    if on_step:
        on_step(
            "healed",
            f"removed {len(removed)} container(s) of slot {target.slot} attached to a shared "
            f"network that no longer exists ({', '.join(removed)}); Compose makes them anew",
        )
    kept = [c for c in checked.running if c.name not in removed]
    return dataclasses.replace(checked, running=kept)


def _copy_source(
    target: Target,
    environ: Mapping[str, str],
    checked: preflight.Preflight,
    source: apps.Source,
    on_step: Callable[[str, str], None] | None,
) -> str | None:
    """On a remote engine, the checkout's copy on its host (sandbox/remote/codesync.py), brought up
    to date: where the override binds from. None on this machine's engine."""
    if source.path is None or checked.where.local:
        return None
    helper = enginehost.helper_image(target.root, environ)
    synced = codesync.send(target, environ, source, helper, create=True)
    if on_step:
        on_step("source", synced.describe(checked.where.host))
    return synced.volume.mountpoint


def _record_gate(target: Target, outcome: checks.GateResult | None) -> None:
    if outcome is None or outcome.passed:
        lastup.write(target.root, target.slot, lastup.READY)
        return
    failed = "; ".join(f"{c.name}: {c.detail}" for c in outcome.failed)
    lastup.write(target.root, target.slot, lastup.FAILED, f"gate: {failed}"[:300])


def ensure_volume(
    target: Target,
    environ: Mapping[str, str],
    checked: preflight.Preflight,
    source: apps.Source,
    fresh: bool,
) -> None:
    """Create the slot's database volume stamped with where it came from (before Compose
    would make it unstamped); with `fresh`, first remove the slot's containers and exactly
    that one volume (sandbox/images/provenance.py says why the labels live on a volume we
    create)."""
    if not fresh and checked.volume is not provenance.Kind.MISSING:
        return
    labels = preflight.expected_volume(target, environ, source).labels()
    plan = provenance.fresh_plan(target.slot, labels, checked.compose)
    if not fresh or checked.volume is provenance.Kind.MISSING:
        plan = plan[-1:]
    else:
        # `down` through this checkout's compose file rather than by project name alone.
        plan[0] = down_command(checked.compose, target, volumes=False)
    for cmd in plan:
        runner.run(
            cmd,
            env=compose.environment(target, environ),
            cwd=target.root,
            check=f"preparing slot {target.slot}'s database failed: {display(cmd)}",
        )


def app_image(
    source: apps.Source,
    root: Path,
    environ: Mapping[str, str],
    on_step: Callable[[str, str], None] | None = None,
) -> str | None:
    """The image a source checkout runs on: its dependency image, reused when its lock is
    unchanged, else built (offline when `inv images` chose local images). On a remote engine
    that lacks it, this machine's copy is sent when there is one, else it is built there (the
    build context goes over the API). None: the image ./.env names (the reference app)."""
    if source.path is None or source.kind.image != "uv":
        return None
    offline = images.offline_selected(root)
    say = on_step or (lambda name, detail: None)
    where = engine.detect(environ)
    extras = source.kind.extras
    if not where.local:
        _send_deps_image(source.path, extras, source.torch, offline, environ, where, say)
    ensured = appimages.ensure_deps_image(
        source.path,
        environ,
        offline,
        lambda what: say("build", what),
        extras=extras,
        torch=source.torch,
        on_wait=lambda what: say("build", what),
    )
    world = "offline: no registry" if offline else "online"
    if not where.local:
        world += f"; on the engine at {where.host}"
    made = f"extras: {' '.join(extras) or 'none'}, torch: {ensured.torch}"
    if ensured.built:
        say("image", f"built {ensured.tag} in {ensured.seconds:.1f} s ({made}; {world})")
    elif ensured.waited:
        say("image", f"{ensured.tag}, built by the command waited for ({made}; {world})")
    else:
        say("image", f"{ensured.tag} (dependencies unchanged: not rebuilt; {made}; {world})")
    return ensured.tag


def _send_deps_image(
    checkout: Path,
    extras: Sequence[str],
    torch: str,
    offline: bool,
    environ: Mapping[str, str],
    where: engine.Engine,
    say: Callable[[str, str], None],
) -> None:
    """A remote engine without the checkout's dependency image gets this machine's copy."""
    torch = appimages.effective_torch(checkout.resolve(), extras, torch)
    base = appimages.python_base(offline, torch)
    tag = appimages.deps_tag(checkout.resolve(), extras, base, torch)
    if appimages.image_exists(tag, environ):
        return
    sent = imagesend.send_if_local(tag, environ)
    if sent is not None and sent.images:
        say(
            "image",
            f"sent {tag} from this machine's engine to {where.host} "
            f"({sent.bytes / 1e6:.0f} MB in {sent.seconds:.1f} s)",
        )


def write_override(
    target: Target,
    source: apps.Source,
    image: str | None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    copied_to: str | None = None,
    reload: str = apps.RELOAD_BACKEND,
) -> Path:
    """The app kind's Compose override for this slot, with the slot's own secrets."""
    secrets = {name: apps.secret(target.root, target.slot, name) for name in source.kind.secrets}
    document = apps.override(source, image, secrets, layout, copied_to, place(target), reload)
    return apps.write_override(target.root, target.slot, document)


def env_sandbox(
    target: Target,
    environ: Mapping[str, str],
    where: engine.Engine | None = None,
    source: apps.Source = apps.BUILT_IN,
) -> str:
    urls = net.urls(target, environ, where)
    text = apps.env_sandbox_text(target.slot, target.values, urls, source, place(target))
    bind, api = compose.bind_address(target, environ), target.port("KTRDR_API_PORT")
    return text + "".join(f"{line}\n" for line in reach.env_sandbox_lines(environ, bind, api))


def reach_steps(
    target: Target, environ: Mapping[str, str], source: apps.Source = apps.BUILT_IN
) -> list[preflight.Step]:
    """Preflight's `container` and `reach` lines (sandbox/reach.py): run inside a container
    (its bind paths translated, or refused), and who reaches the ports when containers,
    Docker Desktop or that container change it; none for the default."""
    bind, api = compose.bind_address(target, environ), target.port("KTRDR_API_PORT")
    paths = [target.shared_dir] + ([source.path] if source.path is not None else [])
    lines = [
        ("container", reach.container_line(environ, paths)),
        ("reach", reach.exposure_line(environ, bind, api)),
    ]
    return [preflight.Step(name, line) for name, line in lines if line is not None]


def _compose_up(
    target: Target,
    checked: preflight.Preflight,
    environ: Mapping[str, str],
    on_compose: Callable[[list[str]], None] | None,
    override: Path,
    layout: slots.Layout,
) -> float:
    """`docker compose up -d`; how long it took. SandboxError with its output when it fails."""
    cmd = up_command(checked.compose, target, [override], layout)
    if on_compose:
        on_compose(cmd)
    started = time.monotonic()
    runner.run(
        cmd,
        env=reach.compose_environment(compose.environment(target, environ), target.root, environ),
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
    on_gate: Callable[[list[checks.CheckResult]], None] | None,
    migration: apps.Migration | None,
    layout: slots.Layout,
) -> tuple[checks.GateResult, dict[str, str]]:
    """The gate's result, and when it did not pass what explains it: a failed step's own
    output (a migration's), then the failing services' last log lines."""
    outcome = gate.run_gate(
        target,
        checked.compose,
        environ,
        timeout=timeout,
        on_update=on_gate,
        migration=migration,
        where=checked.where,
        layout=layout,
    )
    if outcome.passed:
        return outcome, {}
    for check in outcome.failed:
        words = diagnose.login_failure_in_text(check.detail)
        if words is not None:
            raise SandboxError(diagnose.login_failure_message(target.slot, words), Exit.BAD_ENV)
    said = {c.label: c.output for c in outcome.failed if c.output}
    services = gate.failing_services(outcome)
    return outcome, {**said, **gate.failing_logs(target, checked.compose, environ, services)}


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
        elsewhere = ownership.other_checkout(target.root, own)
        gone = elsewhere is not None and checkout_gone(elsewhere)
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
        if elsewhere is not None and gone and on_orphan:
            on_orphan(elsewhere)
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


def forget(target: Target, containers: Sequence[docker.Container]) -> list[Path]:
    """After `down --volumes`: remove the `.env.sandbox` this tool wrote into the slot's
    source checkout, and the slot's override and secrets here. Nothing else is touched."""
    sources = {c.source for c in containers if c.source}
    sources |= {apps.recorded_source(target.root, target.slot)} - {""}
    removed = [p for s in sources if (p := apps.remove_env_sandbox(Path(s))) is not None]
    return removed + apps.remove_state(target.root, target.slot)
