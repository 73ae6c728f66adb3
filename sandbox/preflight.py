"""Preflight: what `inv up --slot=N` checks before `docker compose up`.

Checks run in a fixed order and stop at the first failure, which is a `SandboxError` with its
own exit code and one line saying what is wrong and what to do. Only read-only questions go to
the engine (`docker version`, `docker compose version`, one `docker ps`), so a refused preflight
leaves nothing behind on it. The one thing preflight may create is the shared directory on the
host (mkdir only, like scripts/init-shared-data-dir.sh).

The decisions are pure functions (`other_checkout` here, the port rules in sandbox/ports.py)
and tested without Docker; `run_preflight` only gathers facts and calls them.

A remote engine (DOCKER_HOST=tcp://... or ssh://..., or such a context) gets `REMOTE_STEPS`:
the same questions asked where the engine is. Ports are probed and the shared directory
checked and created on the engine's host through small containers
(sandbox/remote/enginehost.py), the bind address must be reachable from here, and nothing is
created on this machine. Each step's detail then says which host it ran on.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import (
    apps,
    checkouts,
    compose,
    docker,
    engine,
    envfiles,
    net,
    observability,
    ownership,
    ports,
    shared,
    slots,
)
from sandbox.docker import Container
from sandbox.errors import Exit, SandboxError
from sandbox.images import provenance
from sandbox.remote import enginehost
from sandbox.runner import display


@dataclass(frozen=True)
class Step:
    """A check that passed, for display."""

    name: str
    detail: str


@dataclass(frozen=True)
class UpPlan:
    """What a passed preflight found and decided for one `up`: what the steps after it
    (sandbox/stack.py, sandbox/upsteps.py, the gate) read instead of working it out again.
    Facts that change during `up` (containers healed away, the image built, the gate's
    answers) are not in it."""

    compose: list[str]  # the Compose v2 CLI to run, e.g. ["docker", "compose"]
    steps: list[Step]
    running: list[Container]  # the slot's own containers at preflight, in any state
    where: engine.Engine = engine.LOCAL  # the engine the slot runs on
    # What was found of the slot's database volume (None: not looked at).
    volume: provenance.Kind | None = None
    layout: slots.Layout = slots.DEFAULT_LAYOUT
    source: apps.Source = apps.BUILT_IN  # as asked for (its torch is settled after the build)
    # What a database volume made by this `up` is stamped with (None: not looked at).
    expected: provenance.Expected | None = None
    urls: Mapping[str, str] = field(default_factory=dict)  # label -> URL (`net.urls`)


# The name the renderer knows it by.
Preflight = UpPlan


# --- env files ----------------------------------------------------------------------------


def env_problems(target: compose.Target) -> list[envfiles.Problem]:
    """Problems of this slot's env file, then of every env file (collisions between slots),
    this slot's first: those are the ones this `inv up` would trip over."""
    own = envfiles.check(target.values, _env_name(target), target.slot)
    rest = [p for p in envfiles.check_all(target.root) if p not in own]
    rest.sort(key=lambda p: p.slot != target.slot)  # stable: keeps each group's order
    return own + rest


def _env_name(target: compose.Target) -> str:
    return f"{envfiles.ENV_DIR}/{target.env_file.name}"


def env_error(problems: Sequence[envfiles.Problem]) -> SandboxError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return SandboxError(
        f"{problems[0]}{more}: fix it or run `inv env --write` to regenerate env/", Exit.BAD_ENV
    )


# --- the whole preflight ------------------------------------------------------------------


@dataclass
class Facts:
    """What the steps learn as they run, for the steps after them and the result."""

    target: compose.Target
    environ: Mapping[str, str]
    create_shared: bool
    source: apps.Source = apps.BUILT_IN
    where: engine.Engine = engine.LOCAL  # the engine, found by engine_step (the first)
    layout: slots.Layout = slots.DEFAULT_LAYOUT
    compose_cmd: list[str] = field(default_factory=list)
    everything: list[Container] = field(default_factory=list)  # every container on the engine
    own: list[Container] = field(default_factory=list)  # the slot's project's containers
    fresh: bool = False  # `up --fresh`: the database volume is to be recreated, not compared
    volume: provenance.Kind | None = None
    expected: provenance.Expected | None = None
    other_checkouts: bool = False  # `--other-checkouts`: --fresh may recreate another's


def engine_step(facts: Facts) -> Step:
    facts.where = where = engine.detect(facts.environ)
    version = docker.check_engine(facts.environ)
    if where.local:
        return Step("engine", f"Docker engine {version} reachable")
    return Step(
        "engine", f"Docker engine {version} at {where.endpoint} (remote, from {where.source})"
    )


def compose_step(facts: Facts) -> Step:
    facts.compose_cmd = compose.find_compose(facts.environ)
    return Step("compose", f"Compose v2: {display(facts.compose_cmd)}")


def env_step(facts: Facts) -> Step:
    problems = env_problems(facts.target)
    if problems:
        raise env_error(problems)
    check_bind_address(facts.target.bind)
    return Step("env", f"{_env_name(facts.target)} valid; no port shared between slots")


def check_bind_address(address: str) -> None:
    """KTRDR_BIND_ADDR must be something Compose can publish on: an IP literal or localhost.
    Anything else passes a port probe (nothing can bind it, so nothing holds it) and only
    Compose refuses it, after preflight said the ports were free."""
    if address == "localhost":
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SandboxError(
            f"KTRDR_BIND_ADDR={slots.shown(address)} is not an IP address: use an IP literal "
            "(127.0.0.1, ::1, 0.0.0.0) or localhost",
            Exit.BAD_ENV,
        ) from None


def checkout_step(facts: Facts) -> Step:
    target = facts.target
    facts.everything = docker.containers(facts.environ)
    facts.own = [c for c in facts.everything if c.project == target.project]
    elsewhere = ownership.other_checkout(target.root, facts.own)
    if elsewhere is not None:
        raise ownership.other_checkout_error(target, elsewhere)
    if facts.own:
        return Step(
            "checkout", f"{target.project} has {len(facts.own)} container(s) from this checkout"
        )
    return Step("checkout", f"{target.project} has no containers yet")


def running_source(container: Container) -> tuple[str, str]:
    """(app kind, source) a container runs; containers from before kinds were recorded ran
    the built-in reference app."""
    return (container.app or apps.BUILT_IN.kind.name, container.source)


def source_step(facts: Facts) -> Step:
    """A running slot keeps its source: `up` with another one would silently swap its code.
    A checkout with a mounted link leading outside it, or a `.env.sandbox` not ours to
    write, is refused here too (`checkouts.check_checkout`), before anything starts."""
    target, wanted = facts.target, facts.source
    checkouts.check_checkout(wanted)
    for container in facts.own:
        kind, source = running_source(container)
        if (kind, source) != (wanted.kind.name, wanted.label):
            now = f"{kind}: {source}" if source else f"{kind} (built in)"
            raise SandboxError(
                f"slot {target.slot} runs {now}, not {wanted.describe()}: "
                f"`inv down --slot={target.slot}` first, or pick another slot",
                Exit.OTHER_SOURCE,
            )
    return Step("source", wanted.describe())


def expected_volume(
    target: compose.Target, environ: Mapping[str, str], source: apps.Source
) -> provenance.Expected:
    """What this `up` would stamp on a new database volume for `target`."""
    env = compose.configured(target, environ).env
    return provenance.Expected(
        slot=target.slot,
        checkout=ownership.here(target),
        client_host=socket.gethostname(),
        source=source.label,
        app=source.kind.name,
        password=env.get("KTRDR_DB_PASSWORD") or compose.DEFAULT_DB_PASSWORD,
    )


def volume_step(facts: Facts) -> Step:
    """The slot's database must be this checkout's, made with this password: a reused one
    that is not is refused here, in a second, instead of a backend that never logs in."""
    target = facts.target
    info = ownership.inspect_volume(target, facts.environ)
    facts.expected = expected_volume(target, facts.environ, facts.source)
    verdict = provenance.compare(info, facts.expected)
    facts.volume = verdict.kind
    name = slots.db_volume(target.project)
    if facts.fresh:
        owner = provenance.foreign_owner(info, ownership.here(target), socket.gethostname())
        if owner is not None and not facts.other_checkouts:
            command = f"inv up --slot={target.slot} --fresh"
            raise provenance.others_database_error(
                target.slot, owner, command, "recreate it anyway"
            )
        exists = info is not None
        return Step(
            "volume", f"{name} will be recreated (--fresh)" if exists else "no database yet"
        )
    if not verdict.ok:
        raise SandboxError(verdict.message, verdict.code)
    if verdict.kind is provenance.Kind.LEGACY:
        return Step("volume", verdict.message)
    if verdict.kind is provenance.Kind.MISSING:
        return Step("volume", f"{name} will be created for this checkout")
    return Step("volume", f"{name} was created by this checkout with this password")


def layout_step(facts: Facts) -> Step:
    """A slot keeps its worker profile and observability while it has containers: `up` with
    another layout is refused like another source (`inv down` first), so a running slot never
    changes shape under a test that relies on it."""
    target, wanted = facts.target, facts.layout
    for container in facts.own:
        if container.layout != wanted:
            raise SandboxError(
                f"slot {target.slot} runs {container.layout.describe()}, not "
                f"{wanted.describe()}: `inv down --slot={target.slot}` first, or pick "
                "another slot",
                Exit.OTHER_LAYOUT,
            )
    return Step("layout", wanted.describe())


def observability_step(facts: Facts) -> Step:
    """Shared observability needs the shared stack running: the slot's traces and scrapes
    would otherwise go nowhere."""
    if not facts.layout.shared:
        return Step("observability", "the slot's own Jaeger, Prometheus and Grafana")
    if not observability.is_up(facts.everything):
        raise observability.not_up_error()
    return Step("observability", f"shared: {observability.PROJECT} is up")


def ports_step(facts: Facts) -> Step:
    target, everything, specs = facts.target, facts.everything, facts.layout.ports
    bind = target.bind
    taken = ports.classify_ports(target, everything, ports.can_bind, bind_addr=bind, specs=specs)
    if taken:
        holder = ports.port_holder(taken[0].port, everything, ports.read_listeners({taken[0].port}))
        raise ports.port_error(taken, holder)
    published = ports.published_tcp(facts.own) & {target.port(s.variable) for s in specs}
    where = ", ".join(ports.probe_addresses(bind))
    if published:
        return Step(
            "ports",
            f"{len(specs) - len(published)} host ports free on {where}, "
            f"{len(published)} published by {target.project}",
        )
    return Step("ports", f"{len(specs)} host ports free on {where}")


def shared_step(facts: Facts) -> Step:
    """Last, so that a refused slot leaves nothing behind, not even this directory."""
    shared_dir = facts.target.shared_dir
    shared.check_home(shared_dir, facts.environ)
    missing = shared.missing(shared_dir)
    if missing and not facts.create_shared:
        lacking = ", ".join(f"{p.name}/" for p in missing)
        raise SandboxError(
            f"the shared directory {shared_dir} lacks {lacking}: "
            "run `inv init-shared` to create it",
            Exit.SHARED_DIR,
        )
    created = shared.ensure(shared_dir)  # with nothing missing: creates nothing, checks access
    if created:
        return Step("shared", "created " + ", ".join(str(p) for p in created))
    return Step("shared", f"{shared_dir} has {', '.join(f'{n}/' for n in shared.SUBDIRS)}")


# --- the same questions on a remote engine's host -------------------------------------------


def exposure_step(facts: Facts) -> Step:
    """What the slot exposes where; a bind the client cannot reach stops it here."""
    bind = facts.target.bind
    unreachable = facts.where.unreachable_bind(bind, facts.target.slot)
    if unreachable is not None:
        raise SandboxError(unreachable, Exit.BAD_ENV)
    detail = facts.where.exposure(bind)
    if facts.where.kind is engine.Kind.SSH and engine.is_loopback(facts.where.connect_override):
        detail += f" (through `inv tunnel --slot={facts.target.slot}`)"
    if engine.is_wildcard(bind) and not facts.target.env.get("KTRDR_DB_PASSWORD"):
        detail += "; the database has the default password (set KTRDR_DB_PASSWORD)"
    return Step("exposure", detail)


def remote_source_step(facts: Facts) -> Step:
    """As locally; a checkout is copied to the engine's host, which cannot see this machine's
    files (sandbox/remote/codesync.py), and `inv sync` sends later edits."""
    step = source_step(facts)
    if facts.source.path is None:
        return step
    slot = facts.target.slot
    return Step(
        step.name,
        f"{step.detail}, copied to {facts.where.host} "
        f"(edits: `inv sync --slot={slot}`, or `--watch`)",
    )


def images_step(facts: Facts) -> Step:
    """Every image of the slot is on the engine: Compose would try to pull a local build."""
    wanted = enginehost.slot_images(facts.target, facts.environ)
    missing = enginehost.missing_images(wanted, facts.environ)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SandboxError(
            f"the engine on {facts.where.host} has no image {missing[0]}{more}: run "
            "`inv images --to-engine` to send this machine's images there",
            Exit.COMMAND,
        )
    return Step("images", f"{len(set(wanted))} images present on the engine")


def remote_ports_step(facts: Facts) -> Step:
    """The slot's ports (those its layout publishes), asked of the engine's host: its
    containers' published ports, and a helper container on its network that tries to bind
    the rest."""
    target, everything, specs = facts.target, facts.everything, facts.layout.ports
    bind = target.bind
    own = ports.published_tcp(facts.own)
    wanted = [target.port(s.variable) for s in specs]
    candidates = [port for port in wanted if port not in own]
    image = enginehost.helper_image(target.root, facts.environ)
    busy = {p.port for p in enginehost.taken_ports(candidates, bind, image, facts.environ)}
    taken = ports.classify_ports(
        target, everything, lambda host, port: port not in busy, bind_addr=bind, specs=specs
    )
    if taken:
        raise ports.port_error(taken, ports.port_holder(taken[0].port, everything, {}), facts.where)
    published = own & set(wanted)
    free = f"{len(specs) - len(published)} host ports free on {bind or '0.0.0.0'}"
    if published:
        return Step("ports", f"{free}, {len(published)} published by {target.project}")
    return Step("ports", free)


def remote_shared_step(facts: Facts) -> Step:
    """The shared directory on the engine's host, where the mounts resolve; created there
    (through a helper container), last, as locally."""
    directory = str(facts.target.shared_dir)
    image = enginehost.helper_image(facts.target.root, facts.environ)
    state = enginehost.shared_state(directory, image, facts.environ)
    if state.not_a_directory:
        raise SandboxError(
            f"{directory} on {facts.where.host} is not a directory: move it aside there, "
            "then re-run",
            Exit.SHARED_DIR,
        )
    if state.ready:
        return Step("shared", f"{directory} has {', '.join(f'{n}/' for n in shared.SUBDIRS)}")
    if not facts.create_shared:
        lacking = ", ".join(f"{n}/" for n in state.missing)
        raise SandboxError(
            f"the shared directory {directory} on {facts.where.host} lacks {lacking}: "
            "run `inv init-shared` with the same DOCKER_HOST to create it",
            Exit.SHARED_DIR,
        )
    created = enginehost.create_shared(directory, image, facts.environ)
    return Step("shared", f"created {directory} with {', '.join(created) or 'nothing new'}")


# In order; each raises SandboxError for what stops the slot, so the first failure ends it.
STEPS: tuple[Callable[[Facts], Step], ...] = (
    engine_step,
    compose_step,
    env_step,
    checkout_step,
    source_step,
    volume_step,
    layout_step,
    observability_step,
    ports_step,
    shared_step,
)
# For a remote engine: engine_step decides which list runs, so both start with it.
REMOTE_STEPS: tuple[Callable[[Facts], Step], ...] = (
    engine_step,
    compose_step,
    env_step,
    exposure_step,
    checkout_step,
    remote_source_step,
    volume_step,
    layout_step,
    observability_step,
    images_step,
    remote_ports_step,
    remote_shared_step,
)
# The remote steps that run on the engine's host (helper containers, its image store); the
# others run here, asking its API at most.
ON_ENGINE_HOST = frozenset({"images", "ports", "shared"})


def where_ran(step: Step, where: engine.Engine) -> Step:
    """`step` with the host it ran on in its detail, for a remote engine."""
    host = where.host if step.name in ON_ENGINE_HOST else "this machine"
    return Step(step.name, f"{step.detail} [on {host}]")


def run_preflight(
    target: compose.Target,
    environ: Mapping[str, str],
    *,
    create_shared: bool = True,
    source: apps.Source = apps.BUILT_IN,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    fresh: bool = False,
    other_checkouts: bool = False,
) -> UpPlan:
    """Check that `target` can start; raise SandboxError naming the first thing that stops it.

    `create_shared=False` refuses a missing shared directory instead of creating it. The
    directory is created only once every other check has passed. `fresh` recreates the
    database, another checkout's only with `other_checkouts`.
    """
    target = compose.configured(target, environ)
    facts = Facts(target, environ, create_shared, source, layout=layout, fresh=fresh)
    facts.other_checkouts = other_checkouts
    steps = [STEPS[0](facts)]
    chosen = STEPS if facts.where.local else REMOTE_STEPS
    steps += [step(facts) for step in chosen[1:]]
    if not facts.where.local:
        steps = [where_ran(step, facts.where) for step in steps]
    urls = net.urls(target, environ, facts.where, layout)
    return UpPlan(
        facts.compose_cmd, steps, facts.own, facts.where, facts.volume, layout, source,
        facts.expected, urls,
    )  # fmt: skip
