"""`inv up --swarm`: preflight, images, `docker stack deploy`, the gate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import apps, checks, compose, engine, gate, runner, slots, stack
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.images import send as imagesend
from sandbox.lock import slot_lock
from sandbox.runner import display
from sandbox.settings import CLI_TIMEOUT, LOCK_WAIT
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
class Plan:
    """A swarm slot resolved once: what preflight found and what every later step reads."""

    target: Target
    manager: Manager
    registry: str
    nodes: Mapping[str, Node]
    images: tuple[str, ...]
    rendered: stackfile.Rendered

    @property
    def stack(self) -> str:
        return self.target.project


def _labelled(found: Mapping[str, Node], label: str) -> list[str]:
    return sorted(
        n.hostname for n in found.values() if n.labels.get(label) == "true" and n.state == "ready"
    )


def preflight(
    target: Target,
    environ: Mapping[str, str],
    layout: slots.Layout,
    source: apps.Source,
    say: Callable[[str, str], None],
) -> Plan:
    """Everything checked before anything changes; each finding said as one step."""
    if source.path is not None:
        raise SandboxError(
            "--source on a swarm is not supported yet: run the built-in app (no --source), or "
            "the checkout on one engine",
            Exit.USAGE,
        )
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
    known = nodes(environ)
    say(
        "swarm",
        f"manager {found.address}; nodes: "
        + ", ".join(f"{n.hostname} ({n.address}, {n.state})" for n in known.values()),
    )
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
    registry = registry_address(environ, found)
    override = stack.write_override(target, source, None, layout)
    rendered_model = model(target, environ, override)
    chosen = set(layout.services)
    wanted_images = sorted(
        {s["image"] for n, s in rendered_model["services"].items() if n in chosen}
    )
    local = [i for i in wanted_images if _local_image(i, environ)]
    mapping = {i: registry_ref(registry, i) for i in local}
    rendered = stackfile.render(
        rendered_model, project=target.project, images=mapping, services=chosen
    )
    say(
        "shared",
        f"{target.shared_dir} bind-mounted on {', '.join(shared_nodes)} (label "
        f"{stackfile.SHARED_LABEL}) by the backend and workers: it must exist there (one node, "
        "or an NFS mount at that path on each); swarm never creates it",
    )
    say(
        "images",
        f"{len(local)} pushed through the registry {registry} (every node must trust it); "
        + (
            f"{len(wanted_images) - len(local)} pulled by name"
            if len(local) < len(wanted_images)
            else "none pulled from elsewhere"
        ),
    )
    _ports_free(target, rendered, environ, say)
    return Plan(target, found, registry, known, tuple(local), rendered)


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


def _ports_free(
    target: Target,
    rendered: stackfile.Rendered,
    environ: Mapping[str, str],
    say: Callable[[str, str], None],
) -> None:
    cmd = ["docker", "service", "ls", "--format", "{{.Name}} {{.Ports}}"]
    result = runner.run(
        cmd, env=dict(environ), timeout=CLI_TIMEOUT, check="`docker service ls` failed"
    )
    others = published_by_others(result.stdout, target.project)
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
    *,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    source: apps.Source = apps.BUILT_IN,
    wait: bool = True,
    timeout: float = stack.DEFAULT_TIMEOUT,
    say: Callable[[str, str], None] = lambda name, detail: None,
    on_gate: Callable[[list[checks.CheckResult]], None] | None = None,
) -> Deployed:
    """Preflight, registry, images, `docker stack deploy`, the gate (with every URL at the
    node that publishes it), `.env.sandbox`."""
    with slot_lock(target.slot, wait=LOCK_WAIT, on_busy=lambda text: say("lock", text)):
        plan = preflight(target, environ, layout, source, say)
        ensure_registry(environ, say)
        pushed = push_images(plan.images, plan.registry, environ)
        say(
            "images",
            f"{len(pushed.images)} images: {pushed.sent_bytes / 1e6:.0f} MB sent to the manager in "
            f"{pushed.send_seconds:.1f}s, pushed to {plan.registry} in {pushed.push_seconds:.1f}s",
        )
        stack_file = plan.rendered.write(stack_dir(target.root, target.slot))
        cmd = deploy_command(stack_file, plan.stack)
        started = time.monotonic()
        runner.run(
            cmd,
            env=dict(environ),
            timeout=DEPLOY_TIMEOUT,
            check=f"`docker stack deploy` failed for slot {target.slot}: {display(cmd)}",
        )
        deployed = time.monotonic() - started
        write_record(
            target.root,
            Record(
                target.slot, environ.get("DOCKER_HOST", ""), plan.registry, plan.manager.address
            ),
        )
        result = Deployed(None, compose_seconds=deployed, pushed=pushed)
        if not wait:
            return result
        addresses = Addresses(plan.stack, environ, stackfile.published(plan.rendered))
        where = engine.Engine(
            engine.Kind.TCP, "swarm", plan.manager.address, "swarm", plan.manager.address
        )
        outcome = gate.run_gate(
            target,
            compose.find_compose(environ),
            environ,
            timeout=timeout,
            on_update=on_gate,
            probes=probes(environ, addresses, sorted(plan.rendered.document["services"])),
            where=where,
            layout=layout,
        )
        urls = {k: at_node(v, addresses) or v for k, v in outcome.urls.items()}
        outcome = dataclasses.replace(outcome, urls=urls)
        result.gate = outcome
        result.placement = {s: t.node for s, t in sorted(addresses.tasks.items())}
        if not outcome.passed:
            result.logs = failing_logs(plan.stack, gate.failing_services(outcome), environ)
        apps.write_env_sandbox(
            source, apps.env_sandbox_text(target.slot, target.values, outcome.urls)
        )
        return result


def summary(deployed: Deployed) -> str:
    per_node: dict[str, list[str]] = {}
    for service, node in deployed.placement.items():
        per_node.setdefault(node, []).append(service)
    return "; ".join(f"{node}: {', '.join(names)}" for node, names in sorted(per_node.items()))
