"""`inv up --swarm`: preflight, images, `docker stack deploy`, the gate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import (
    apps,
    checkouts,
    checks,
    compose,
    engine,
    gate,
    runner,
    slotfiles,
    slots,
    stack,
    upsteps,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.images import send as imagesend
from sandbox.lock import slot_lock
from sandbox.runner import display
from sandbox.settings import CLI_TIMEOUT, GATE_TIMEOUT, LOCK_WAIT
from sandbox.swarm import source as source_copy
from sandbox.swarm import stackfile
from sandbox.swarm.access import failing_logs
from sandbox.swarm.cluster import SWITCH, Manager, Node, manager, nodes, published_ports
from sandbox.swarm.placement import Addresses, at_node, probes
from sandbox.swarm.record import Record, stack_dir, write_record
from sandbox.swarm.registry import (
    Pushed,
    ensure_registry,
    push_images,
    registry_address,
    registry_ref,
)

DEPLOY_TIMEOUT = 300.0


def model(target: Target, environ: Mapping[str, str], override: Path) -> dict[str, Any]:
    """The slot's Compose model as `inv up` would run it."""
    compose_cmd = compose.find_compose(environ)
    cmd = stackfile.model_command(compose.command(compose_cmd, target, overrides=[override]))
    result = runner.run(
        cmd,
        env=compose.environment(target, environ),
        cwd=target.root,
        timeout=CLI_TIMEOUT,
        check=f"rendering slot {target.slot}'s Compose model failed: {display(cmd)}",
    )
    return stackfile.parse_model(result.stdout)


def deploy_command(stack_file: Path, stack_name: str) -> list[str]:
    """`--prune`: a service the model no longer has (another layout) goes; images are
    resolved to the registry's digests, so every node runs the same image."""
    return ["docker", "stack", "deploy", "--prune", "--compose-file", str(stack_file), stack_name]


@dataclass
class Deployed:
    """What `up` did, for the report (UpResult's shape where the renderer reads it)."""

    gate: checks.GateResult | None
    logs: dict[str, str] = field(default_factory=dict)
    started: bool = True
    compose_seconds: float = 0.0  # `docker stack deploy`
    pushed: Pushed | None = None
    placement: dict[str, str] = field(default_factory=dict)  # service -> node


@dataclass(frozen=True)
class Options:
    """What `inv up --swarm` asks for: the app, the layout, whether and how long to wait."""

    source: apps.Source = apps.BUILT_IN
    layout: slots.Layout = slots.DEFAULT_LAYOUT
    wait: bool = True
    timeout: float = GATE_TIMEOUT


@dataclass(frozen=True)
class Plan:
    """A swarm slot resolved once: what preflight found and what every later step reads.
    `engines`: the shared nodes' engines, when a --source checkout is copied to them."""

    target: Target
    manager: Manager
    registry: str
    nodes: Mapping[str, Node]
    images: tuple[str, ...]
    rendered: stackfile.Rendered
    engines: source_copy.Engines = field(default_factory=list)

    @property
    def stack(self) -> str:
        return self.target.project


def _labelled(found: Mapping[str, Node], label: str) -> list[str]:
    return sorted(
        n.hostname for n in found.values() if n.labels.get(label) == "true" and n.state == "ready"
    )


def _manager(environ: Mapping[str, str], layout: slots.Layout) -> Manager:
    if layout.shared:
        raise SandboxError(
            "--observability=shared on a swarm is not supported: use the slot's own (the default)",
            Exit.USAGE,
        )
    found = manager(environ)
    if not found.control_available:
        raise SandboxError(
            f"the engine ({engine.detect(environ).describe()}) is not a swarm manager (swarm "
            f"state {found.state or 'unknown'}): point DOCKER_HOST at a manager, or drop "
            f"--swarm/{SWITCH}",
            Exit.NO_ENGINE,
        )
    return found


def _pinned(known: Mapping[str, Node], say: Callable[[str, str], None]) -> list[str]:
    """The db and shared labels on ready nodes (said); the shared nodes' names."""
    db_nodes = _labelled(known, stackfile.DB_LABEL)
    shared_nodes = _labelled(known, stackfile.SHARED_LABEL)
    for label, which in ((stackfile.DB_LABEL, db_nodes), (stackfile.SHARED_LABEL, shared_nodes)):
        if not which:
            raise SandboxError(
                f"no ready node is labelled {label}=true: `docker node update --label-add "
                f"{label}=true NODE` (docs/designs/Sandbox/SWARM.md says which node)",
                Exit.USAGE,
            )
    say(
        "database",
        f"pinned to {', '.join(db_nodes)} (label {stackfile.DB_LABEL}): its volume stays "
        "on that node",
    )
    return shared_nodes


def render(
    target: Target,
    environ: Mapping[str, str],
    options: Options,
    registry: str,
    image: str | None = None,
    copied_to: str | None = None,
) -> tuple[stackfile.Rendered, list[str], list[str]]:
    """The stack file of the slot's Compose model (the app on `image`, a checkout bound from
    `copied_to`), the images its services run, and those of this machine pushed to the
    registry."""
    override = upsteps.write_override(target, options.source, image, options.layout, copied_to)
    rendered_model = model(target, environ, override)
    chosen = set(options.layout.services)
    wanted = sorted({s["image"] for n, s in rendered_model["services"].items() if n in chosen})
    local = [i for i in wanted if _local_image(i, environ)]
    mapping = {i: registry_ref(registry, i) for i in local}
    rendered = stackfile.render(
        rendered_model, project=target.project, images=mapping, services=chosen
    )
    return rendered, wanted, local


def preflight(
    target: Target,
    environ: Mapping[str, str],
    options: Options,
    hooks: stack.Hooks,
) -> Plan:
    """Everything checked before anything changes; each finding said as one step. A source
    checkout's image is made here (`hooks.app_image`), and its copy is planned: the engine
    of each node that runs the app must be reachable."""
    say = hooks.step or _quiet
    found = _manager(environ, options.layout)
    known = nodes(environ)
    nodes_seen = ", ".join(f"{n.hostname} ({n.address}, {n.state})" for n in known.values())
    say("swarm", f"manager {found.address}; nodes: {nodes_seen}")
    shared_nodes = _pinned(known, say)
    engines: source_copy.Engines = []
    if options.source.path is not None:
        engines = source_copy.shared_engines(known, (found.address, environ), environ)
    image = hooks.app_image(options.source) if hooks.app_image is not None else None
    registry = registry_address(environ, found)
    rendered, wanted, local = render(target, environ, options, registry, image)
    say(
        "shared",
        f"{target.shared_dir} bind-mounted on {', '.join(shared_nodes)} (label "
        f"{stackfile.SHARED_LABEL}) by the backend and workers: it must exist there (one node, "
        "or an NFS mount at that path on each); swarm never creates it",
    )
    elsewhere = f"{len(wanted) - len(local)} pulled by name" if len(local) < len(wanted) else ""
    say(
        "images",
        f"{len(local)} pushed through the registry {registry} (every node must trust it); "
        + (elsewhere or "none pulled from elsewhere"),
    )
    _ports_free(target, rendered, environ, say)
    return Plan(target, found, registry, known, tuple(local), rendered, engines)


def _quiet(name: str, detail: str) -> None:
    return None


def app_image(
    source: apps.Source, root: Path, environ: Mapping[str, str], say: Callable[[str, str], None]
) -> str | None:
    """The image a source checkout runs on, made on this machine's engine: like every image of
    a swarm slot, it reaches the nodes through the registry (None: the built-in app)."""
    return upsteps.app_image(source, root, imagesend.local_env(environ), say)


def _local_image(image: str, environ: Mapping[str, str]) -> bool:
    env = imagesend.local_env(environ)
    return runner.run(["docker", "image", "inspect", image], env=env, timeout=CLI_TIMEOUT).ok


def published_by_others(text: str, stack_name: str) -> dict[int, str]:
    """`docker service ls --format '{{.Name}} {{.Ports}}'`: ports published by services of
    other stacks (host mode: on whichever node runs them), port -> service."""
    found = {}
    for line in text.splitlines():
        name, _, ports = line.partition(" ")
        if not name or name.startswith(f"{stack_name}_"):
            continue
        for port in published_ports(ports):
            found[port] = name
    return found


def ports_elsewhere(environ: Mapping[str, str], stack_name: str) -> dict[int, str]:
    """Ports the services of other stacks publish, port -> service."""
    cmd = ["docker", "service", "ls", "--format", "{{.Name}} {{.Ports}}"]
    result = runner.run(
        cmd, env=dict(environ), timeout=CLI_TIMEOUT, check="`docker service ls` failed"
    )
    return published_by_others(result.stdout, stack_name)


def _ports_free(
    target: Target,
    rendered: stackfile.Rendered,
    environ: Mapping[str, str],
    say: Callable[[str, str], None],
) -> None:
    others = ports_elsewhere(environ, target.project)
    taken = {p: others[p] for p in stackfile.published(rendered) if p in others}
    if taken:
        port, holder = sorted(taken.items())[0]
        raise SandboxError(
            f"port {port} of slot {target.slot} is published by the service {holder}: take "
            "that slot down, or pick another slot",
            Exit.PORT_TAKEN,
        )
    say(
        "ports",
        f"{len(stackfile.published(rendered))} ports published in host mode on every address "
        "of the node that runs each service (no routing mesh: this kernel may lack IP_VS); "
        "URLs use that node's address",
    )


def up(
    target: Target,
    environ: Mapping[str, str],
    options: Options,
    hooks: stack.Hooks,
) -> Deployed:
    """Preflight, registry, images, a source checkout's copy, `docker stack deploy`, the gate
    (with every URL at the node that publishes it), `.env.sandbox`. Of `hooks`: `step` hears
    each step, `busy` a held lock, `gate` each round of the gate, `app_image` makes the image
    a source checkout runs on."""
    say = hooks.step or _quiet
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=hooks.busy):
        plan = preflight(target, environ, options, hooks)
        pushed = _distribute(plan, environ, say)
        if plan.engines:
            plan = _with_copy(plan, environ, options, say)
        stack_file = plan.rendered.write(stack_dir(target.root, target.slot))
        cmd = deploy_command(stack_file, plan.stack)
        started = time.monotonic()
        runner.run(
            cmd,
            env=dict(environ),
            timeout=DEPLOY_TIMEOUT,
            check=f"`docker stack deploy` failed for slot {target.slot}: {display(cmd)}",
        )
        result = Deployed(None, compose_seconds=time.monotonic() - started, pushed=pushed)
        record = Record(
            target.slot, environ.get("DOCKER_HOST", ""), plan.registry, plan.manager.address
        )
        write_record(target.root, record)
        if options.wait:
            _gate(plan, record, environ, options, hooks, result)
        return result


def _distribute(plan: Plan, environ: Mapping[str, str], say: Callable[[str, str], None]) -> Pushed:
    """The registry running and this machine's images of the slot pushed into it."""
    ensure_registry(environ, say)
    pushed = push_images(plan.images, plan.registry, environ)
    say(
        "images",
        f"{len(pushed.images)} images: {pushed.sent_bytes / 1e6:.0f} MB sent to the manager in "
        f"{pushed.send_seconds:.1f}s, pushed to {plan.registry} in {pushed.push_seconds:.1f}s",
    )
    return pushed


def _with_copy(
    plan: Plan, environ: Mapping[str, str], options: Options, say: Callable[[str, str], None]
) -> Plan:
    """The checkout copied to the app's nodes, and the stack file rendered again to bind the
    copy (the image the backend runs writes it: the nodes pull it from the registry)."""
    helper = str(plan.rendered.document["services"]["backend"]["image"])
    copied_to = source_copy.copy(plan.target, options.source, plan.engines, helper, say)
    image = helper.removeprefix(f"{plan.registry}/")
    rendered, _, _ = render(plan.target, environ, options, plan.registry, image, copied_to)
    return dataclasses.replace(plan, rendered=rendered)


def _gate(
    plan: Plan,
    record: Record,
    environ: Mapping[str, str],
    options: Options,
    hooks: stack.Hooks,
    result: Deployed,
) -> None:
    """The gate with the swarm's probes, its URLs at the nodes; into `result`, and
    `.env.sandbox`."""
    target = plan.target
    addresses = Addresses(plan.stack, environ, stackfile.published(plan.rendered))
    where = engine.Engine(
        engine.Kind.TCP, "swarm", plan.manager.address, "swarm", plan.manager.address
    )
    migration = options.source.kind.migration if options.source.path is not None else None
    found = probes(environ, addresses, sorted(plan.rendered.document["services"]))
    if migration is not None:
        found = dataclasses.replace(found, migrate=source_copy.migrator(record, migration, environ))
    outcome = gate.run_gate(
        target,
        compose.find_compose(environ),
        environ,
        timeout=options.timeout,
        on_update=hooks.gate,
        probes=found,
        where=where,
        layout=options.layout,
        migration=migration,
    )
    urls = {k: at_node(v, addresses) or v for k, v in outcome.urls.items()}
    result.gate = dataclasses.replace(outcome, urls=urls)
    result.placement = {s: t.node for s, t in sorted(addresses.tasks.items())}
    if not outcome.passed:
        result.logs = failing_logs(plan.stack, gate.failing_services(outcome), environ)
    text = slotfiles.env_sandbox_text(
        target.slot, target.values, urls, options.source, upsteps.place(target)
    )
    checkouts.write_env_sandbox(options.source, text)


def summary(deployed: Deployed) -> str:
    per_node: dict[str, list[str]] = {}
    for service, node in deployed.placement.items():
        per_node.setdefault(node, []).append(service)
    return "; ".join(f"{node}: {', '.join(names)}" for node, names in sorted(per_node.items()))
