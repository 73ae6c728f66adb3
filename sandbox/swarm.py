"""Slots on a Docker Swarm: `inv up --swarm` deploys the slot as the stack `ktrdr-sandbox-N`.

The engine `DOCKER_HOST` (or the context) names must be a swarm manager. The stack file is
rendered from the same Compose model `inv up` runs (sandbox/stackfile.py); the slot's images go
to an in-swarm registry (Debian's `docker-registry`, a service pinned to a manager) that every
node pulls from; the database runs on the node labelled `ktrdr.sandbox.db=true`, the services
that mount the shared directory on nodes labelled `ktrdr.sandbox.shared=true`. Every port is
published in host mode on the node that runs its task, so each URL uses that node's address
(read from the task's node). docs/designs/Sandbox/SWARM.md says how and why.

Which slots are swarm slots: `inv up --swarm` (or KTRDR_SWARM=1, or KTRDR_SWARM=auto and the
engine is a manager) records the slot in `.sandbox/slot-N.swarm.json`; `down`, `status`,
`logs` and `exec` of that slot then act on the swarm by themselves.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sandbox import (
    ROOT,
    STATE_DIR,
    apps,
    checks,
    compose,
    docker,
    engine,
    gate,
    imagesend,
    runner,
    slots,
    stack,
    stackfile,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.runner import Result, display
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT, LOCK_WAIT

SWITCH = "KTRDR_SWARM"  # 1/on: the slot goes on the swarm; auto: when the engine is a manager
REGISTRY_VARIABLE = "KTRDR_SWARM_REGISTRY"  # HOST:PORT the nodes pull from
# How this machine reaches one node's own engine (exec, and checking a node after `down`):
# a template with {address}, e.g. ssh://admin@{address} or tcp://{address}:2375.
NODE_ENGINE_VARIABLE = "KTRDR_SWARM_NODE_ENGINE"
REGISTRY_SERVICE = "ktrdr-sandbox-registry"
REGISTRY_IMAGE = "ktrdr-sandbox/registry-debian:2"
REGISTRY_BASE = "ktrdr-sandbox/debian-base:bookworm"
REGISTRY_DOCKERFILE = "containers/images/registry-debian/Dockerfile"
REGISTRY_PORT = 5000
REGISTRY_VOLUME = "ktrdr-sandbox-registry"
STACK_DIR = "swarm"
# Task states swarm never leaves: the gate stops waiting for such a service.
# A task whose container runs: "starting" until its first healthcheck passed (the compose
# file's interval is a minute, so that is most of a minute after the gate has passed).
LIVE_STATES = ("running", "starting")
FINAL_STATES = ("failed", "rejected", "shutdown", "complete", "orphaned", "remove")
PUSH_TIMEOUT = 1800.0
DEPLOY_TIMEOUT = 300.0
REGISTRY_READY = 120.0
DOWN_WAIT = 60.0
POLL = 0.5
# Removes the slot's database volume on the nodes that may hold it (`down --volumes`): volumes
# are node-local and the manager's API cannot reach another node's, so a one-shot global job
# on the db nodes asks each node's engine over its socket. The app image has python3; the
# volume is busy until the database's container is gone, hence the retries.
VOLUME_RM_SCRIPT = """
import socket, sys, time
name = sys.argv[1]
for _ in range(60):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/run/docker.sock")
    s.sendall(f"DELETE /volumes/{name} HTTP/1.0\\r\\n\\r\\n".encode())
    code = s.recv(64).split()[1]
    s.close()
    if code in (b"204", b"404"):
        sys.exit(0)
    time.sleep(1)
sys.exit(1)
""".strip()


def wanted(environ: Mapping[str, str], flag: bool = False) -> bool:
    """Whether `inv up` puts the slot on a swarm: --swarm, KTRDR_SWARM=1, or KTRDR_SWARM=auto
    and the engine is a swarm manager (one `docker info`; nothing is asked otherwise)."""
    value = environ.get(SWITCH, "").strip().lower()
    if flag or value in ("1", "on", "true", "yes"):
        return True
    return value == "auto" and manager(environ).control_available


@dataclass(frozen=True)
class Manager:
    control_available: bool
    address: str  # the manager's node address (Swarm.NodeAddr)
    state: str  # inactive, active, pending, error, locked


def manager(environ: Mapping[str, str]) -> Manager:
    fmt = "{{.Swarm.ControlAvailable}} {{.Swarm.NodeAddr}} {{.Swarm.LocalNodeState}}"
    result = runner.run(["docker", "info", "--format", fmt], env=dict(environ), timeout=CLI_TIMEOUT)
    if not result.ok:
        raise SandboxError(
            f"the Docker engine did not answer `docker info` ({result.tail(1)}): is DOCKER_HOST "
            "a swarm manager?",
            Exit.NO_ENGINE,
        )
    return parse_manager(result.stdout)


def parse_manager(text: str) -> Manager:
    # Split on single spaces: an inactive engine has no address, an empty middle field.
    words = text.strip("\n").split(" ")
    words += [""] * (3 - len(words))
    return Manager(words[0] == "true", words[1], words[2])


# ------------------------------------------------------------------------ the slot's record


def record_path(root: Path, slot: int) -> Path:
    return root / STATE_DIR / f"slot-{slot}.swarm.json"


@dataclass(frozen=True)
class Record:
    """A slot deployed on a swarm from this checkout: which manager, which registry."""

    slot: int
    manager: str  # DOCKER_HOST of the manager, "" for the current context
    registry: str
    address: str  # the manager's node address

    @property
    def stack(self) -> str:
        return slots.project_name(self.slot)

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` pointed at the manager the slot was deployed through."""
        if not self.manager:
            return dict(environ)
        env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
        return {**env, "DOCKER_HOST": self.manager}


def write_record(root: Path, record: Record) -> Path:
    path = record_path(root, record.slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n")
    return path


def read_record(root: Path, slot: int) -> Record | None:
    try:
        data = json.loads(record_path(root, slot).read_text())
        return Record(
            int(data["slot"]), str(data["manager"]), str(data["registry"]), str(data["address"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_slots(root: Path) -> list[Record]:
    found = [read_record(root, n) for n in slots.SLOTS]
    return [r for r in found if r is not None]


# ------------------------------------------------------------------------ nodes and tasks


@dataclass(frozen=True)
class Task:
    """The current task of one service of a stack."""

    service: str  # without the stack's prefix: backend, db, ...
    node: str
    state: str  # running, starting, pending, failed, ... (lower case, first word)
    desired: str
    error: str
    ports: tuple[int, ...]


def _ports(text: str) -> tuple[int, ...]:
    found = []
    for part in text.split(","):
        head = part.strip().split("->")[0]
        port = head.rsplit(":", 1)[-1]
        if port.isdigit():
            found.append(int(port))
    return tuple(found)


def parse_tasks(text: str, stack_name: str) -> dict[str, Task]:
    """`docker stack ps --format '{{json .}}'`: each service's current task (the first line
    of each; the history lines that follow are named "\\_ ...")."""
    current: dict[str, Task] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        name = str(row.get("Name", ""))
        if not name.startswith(f"{stack_name}_"):
            continue  # a history line
        service = name[len(stack_name) + 1 :].rsplit(".", 1)[0]
        if service in current:
            continue
        state = str(row.get("CurrentState", "")).split(" ")[0].lower()
        current[service] = Task(
            service,
            str(row.get("Node", "")),
            state,
            str(row.get("DesiredState", "")).lower(),
            str(row.get("Error", "")),
            _ports(str(row.get("Ports", ""))),
        )
    return current


def tasks_command(stack_name: str) -> list[str]:
    return ["docker", "stack", "ps", "--no-trunc", "--format", "{{json .}}", stack_name]


def tasks(stack_name: str, environ: Mapping[str, str]) -> dict[str, Task]:
    result = runner.run(tasks_command(stack_name), env=dict(environ), timeout=ENGINE_QUERY_TIMEOUT)
    if not result.ok:
        if "nothing found in stack" in result.stderr.lower():
            return {}
        raise SandboxError(
            f"listing the tasks of {stack_name} failed ({result.tail(1)}): is DOCKER_HOST a "
            "swarm manager?",
            Exit.NO_ENGINE,
        )
    return parse_tasks(result.stdout, stack_name)


NODE_FORMAT = (
    '{"hostname":{{json .Description.Hostname}},"address":{{json .Status.Addr}},'
    '"state":{{json .Status.State}},"labels":{{json .Spec.Labels}},'
    '"manager":{{if .ManagerStatus}}{{json .ManagerStatus.Addr}}{{else}}""{{end}}}'
)


@dataclass(frozen=True)
class Node:
    hostname: str
    address: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_nodes(text: str) -> dict[str, Node]:
    """`docker node inspect --format NODE_FORMAT`: hostname -> node. A manager may report
    0.0.0.0 as its address; its manager address (HOST:2377) says the real one."""
    found = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        address = str(row["address"])
        if address in ("", "0.0.0.0") and row.get("manager"):
            address = str(row["manager"]).rsplit(":", 1)[0]
        found[row["hostname"]] = Node(row["hostname"], address, row["state"], row["labels"] or {})
    return found


def nodes(environ: Mapping[str, str]) -> dict[str, Node]:
    ids = runner.run(["docker", "node", "ls", "--quiet"], env=dict(environ), timeout=CLI_TIMEOUT)
    if not ids.ok:
        raise SandboxError(
            f"`docker node ls` failed ({ids.tail(1)}): DOCKER_HOST must be a swarm manager",
            Exit.NO_ENGINE,
        )
    cmd = ["docker", "node", "inspect", "--format", NODE_FORMAT, *ids.stdout.split()]
    result = runner.run(cmd, env=dict(environ), timeout=CLI_TIMEOUT)
    runner.check_result(result, "`docker node inspect` failed")
    return parse_nodes(result.stdout)


class Addresses:
    """Port -> the address of the node whose task publishes it, asked of the manager at most
    once a second (the gate's probes ask many times a second)."""

    def __init__(
        self,
        stack_name: str,
        environ: Mapping[str, str],
        published: Mapping[int, str] | None = None,
        every: float = 1.0,
    ) -> None:
        self.stack_name = stack_name
        self.published = published or {}
        self.environ = environ
        self.every = every
        self._at = -1e9
        self._map: dict[int, str] = {}
        self._nodes: dict[str, Node] = {}
        self.tasks: dict[str, Task] = {}

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._at < self.every:
            return
        self._at = now
        try:
            self.tasks = tasks(self.stack_name, self.environ)
            if any(t.node not in self._nodes for t in self.tasks.values()):
                self._nodes = nodes(self.environ)
        except SandboxError:
            return  # the manager hiccupped: the probes say "not published yet"
        self._map = port_addresses(self.tasks, self._nodes, self.published)

    def of(self, port: int) -> str | None:
        self.refresh()
        return self._map.get(port)


def port_addresses(
    found: Mapping[str, Task], known: Mapping[str, Node], published: Mapping[int, str]
) -> dict[int, str]:
    """Every port the stack publishes (port -> service, from the stack file) whose service's
    task has a running container, and that task's node's address. The stack file, not the
    task, says the ports: `docker stack ps` shows none while a task is "starting", though its
    container publishes them already."""
    found_ports = {port: task.service for task in found.values() for port in task.ports}
    return {
        port: known[task.node].address
        for port, service in {**found_ports, **published}.items()
        if (task := found.get(service)) is not None
        and task.state in LIVE_STATES
        and task.node in known
    }


def at_node(url: str, addresses: Addresses) -> str | None:
    """`url` with its host replaced by the address of the node that publishes its port."""
    parts = urlsplit(url)
    if parts.port is None:
        return url
    address = addresses.of(parts.port)
    if address is None:
        return None
    host = f"[{address}]" if ":" in address else address
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


def containers(
    stack_name: str, found: Mapping[str, Task], services: Sequence[str] = ()
) -> list[docker.Container]:
    """The stack's tasks as the gate's containers: a task that ended is an exited container;
    a service of the stack whose task swarm has not made yet is a created one."""
    waiting = [Task(s, "", "new", "running", "", ()) for s in services if s not in found]
    rows = []
    for task in [*found.values(), *waiting]:
        if task.state in LIVE_STATES:
            state = "running"
        elif task.state in FINAL_STATES:
            state = "exited"
        else:
            state = "created"
        status = f"{task.state} on {task.node}" + (f": {task.error}" if task.error else "")
        rows.append(
            docker.Container(
                task.service,
                f"{stack_name}_{task.service}",
                stack_name,
                task.service,
                state,
                status,
                "",
            )
        )
    return rows


def probes(
    environ: Mapping[str, str], addresses: Addresses, services: Sequence[str] = ()
) -> gate.Probes:
    """The gate's probes on a swarm: URLs and the database port reach the node that runs each
    service; containers are the stack's tasks; logs of a task elsewhere are not read."""
    base = gate.default_probes(environ)

    def http_get(url: str, timeout: float) -> tuple[int | None, str]:
        moved = at_node(url, addresses)
        if moved is None:
            return None, "not running on any node yet"
        return base.http_get(moved, timeout)

    def pg(host: str, port: int, timeout: float) -> tuple[bool, str]:
        address = addresses.of(port)
        if address is None:
            return False, "not running on any node yet"
        return base.pg(address, port, timeout)

    def listed() -> list[docker.Container] | None:
        addresses.refresh()
        return containers(addresses.stack_name, addresses.tasks, services)

    return dataclasses.replace(
        base, http_get=http_get, pg=pg, containers=listed, db_log=None, app_log=None
    )


# ------------------------------------------------------------------------ images


def registry_ref(registry: str, image: str) -> str:
    return f"{registry}/{image}"


def registry_address(environ: Mapping[str, str], found: Manager) -> str:
    """KTRDR_SWARM_REGISTRY, else the manager's node address on the registry's port."""
    named = environ.get(REGISTRY_VARIABLE, "").strip()
    if named:
        return named
    host = f"[{found.address}]" if ":" in found.address else found.address
    return f"{host}:{REGISTRY_PORT}"


def registry_service_command() -> list[str]:
    """The registry as a swarm service on a manager (the one the tool pushes through), its
    port published on that node, its blobs in a node-local volume."""
    return [
        "docker",
        "service",
        "create",
        "--detach",
        f"--name={REGISTRY_SERVICE}",
        "--constraint=node.role==manager",
        "--endpoint-mode=dnsrr",
        f"--publish=mode=host,published={REGISTRY_PORT},target={REGISTRY_PORT}",
        f"--mount=type=volume,source={REGISTRY_VOLUME},target=/var/lib/docker-registry",
        "--label=ktrdr.sandbox.registry=1",
        REGISTRY_IMAGE,
    ]


def registry_build_command(root: Path) -> list[str]:
    """The registry image, built on this machine's engine over the shared Debian base
    (`inv images --offline` makes it)."""
    return [
        "docker",
        "build",
        "--quiet",
        f"--build-arg=BASE_IMAGE={REGISTRY_BASE}",
        f"--file={root / REGISTRY_DOCKERFILE}",
        f"--tag={REGISTRY_IMAGE}",
        str(root / "containers"),
    ]


def ensure_registry_image(root: Path, environ: Mapping[str, str]) -> None:
    local = imagesend.local_env(environ)
    if runner.run(
        ["docker", "image", "inspect", REGISTRY_IMAGE], env=local, timeout=CLI_TIMEOUT
    ).ok:
        return
    if not runner.run(
        ["docker", "image", "inspect", REGISTRY_BASE], env=local, timeout=CLI_TIMEOUT
    ).ok:
        raise SandboxError(
            f"{REGISTRY_BASE} is missing, which the registry image is built on: run "
            "`inv images --offline` first",
            Exit.COMMAND,
        )
    runner.run(
        registry_build_command(root),
        env={**local, "DOCKER_BUILDKIT": "0"},
        timeout=1800,
        check=f"building {REGISTRY_IMAGE} failed: read the build output above",
    )


def ensure_registry(
    environ: Mapping[str, str], say: Callable[[str, str], None], root: Path = ROOT
) -> None:
    """The registry service running (its image built here and sent to the manager first
    when missing)."""
    env = dict(environ)
    if not runner.run(
        ["docker", "service", "inspect", REGISTRY_SERVICE], env=env, timeout=CLI_TIMEOUT
    ).ok:
        ensure_registry_image(root, env)
        imagesend.transfer([REGISTRY_IMAGE], env)
        runner.run(
            registry_service_command(),
            env=env,
            timeout=CLI_TIMEOUT,
            check="starting the registry service failed",
        )
        say("registry", f"started the service {REGISTRY_SERVICE} ({REGISTRY_IMAGE})")
    deadline = time.monotonic() + REGISTRY_READY
    while True:
        found = tasks_of_service(REGISTRY_SERVICE, env)
        if "running" in found:
            return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"the registry service did not start ({', '.join(found) or 'no task'}): "
                f"`docker service ps {REGISTRY_SERVICE} --no-trunc` says why",
                Exit.COMMAND,
            )
        time.sleep(POLL)


def tasks_of_service(name: str, environ: Mapping[str, str]) -> list[str]:
    cmd = ["docker", "service", "ps", "--format", "{{.CurrentState}}", name]
    result = runner.run(cmd, env=dict(environ), timeout=CLI_TIMEOUT)
    return [line.split(" ")[0].lower() for line in result.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class Pushed:
    images: tuple[str, ...]
    sent_bytes: int
    send_seconds: float
    push_seconds: float


def push_images(images: Sequence[str], registry: str, environ: Mapping[str, str]) -> Pushed:
    """This machine's images into the registry: sent to the manager's engine (skipped when it
    has the same image ID), tagged there with the registry's name and pushed from there, so
    only the manager needs to trust the registry, never this machine's engine."""
    env = dict(environ)
    sent = imagesend.transfer(images, env)
    started = time.monotonic()
    for image in images:
        ref = registry_ref(registry, image)
        runner.run(
            ["docker", "tag", image, ref],
            env=env,
            timeout=CLI_TIMEOUT,
            check=f"tagging {image} failed",
        )
        runner.run(
            ["docker", "push", "--quiet", ref],
            env=env,
            timeout=PUSH_TIMEOUT,
            check=f"pushing {ref} failed: does the manager's engine trust {registry} "
            "(insecure-registries in its daemon.json)?",
        )
    return Pushed(tuple(images), sent.bytes, sent.seconds, time.monotonic() - started)


# ------------------------------------------------------------------------ the stack


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


def stack_dir(root: Path, slot: int) -> Path:
    return root / STATE_DIR / STACK_DIR / slots.project_name(slot)


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
        for port in _ports(ports):
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


def logs_command(stack_name: str, service: str, follow: bool, tail: int) -> list[str]:
    return [
        "docker",
        "service",
        "logs",
        "--no-task-ids",
        "--tail",
        str(tail),
        *(["--follow"] if follow else []),
        f"{stack_name}_{service}",
    ]


def failing_logs(
    stack_name: str, services: Sequence[str], environ: Mapping[str, str]
) -> dict[str, str]:
    found = {}
    for service in services:
        result = runner.run(
            logs_command(stack_name, service, False, 20),
            env=dict(environ),
            timeout=ENGINE_QUERY_TIMEOUT,
        )
        found[service] = (result.stdout + result.stderr).strip()
    return found


# ------------------------------------------------------------------------ down, status, exec


def volume_job_command(stack_name: str, image: str) -> list[str]:
    """A one-shot job on every db node removing the slot's database volume there."""
    return [
        "docker",
        "service",
        "create",
        "--detach",
        f"--name={stack_name}-volume-rm",
        "--mode=global-job",
        f"--constraint={stackfile.DB_CONSTRAINT}",
        "--mount=type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock",
        "--label=ktrdr.sandbox.volume-rm=1",
        image,
        "python3",
        "-c",
        VOLUME_RM_SCRIPT,
        f"{stack_name}_db-data",
    ]


def down(target: Target, environ: Mapping[str, str], record: Record, *, volumes: bool) -> list[str]:
    """`docker stack rm`, then wait until no task of the stack is left; with `volumes`, the
    database volume removed on its node and this checkout's record of the slot too."""
    env = record.env(environ)
    with slot_lock(target.slot, wait=LOCK_WAIT):
        image = _app_image(target.root, record)
        cmd = ["docker", "stack", "rm", record.stack]
        runner.run(
            cmd, env=env, timeout=DEPLOY_TIMEOUT, check=f"`docker stack rm` failed: {display(cmd)}"
        )
        _wait_gone(record.stack, env)
        if volumes:
            engines = db_node_engines(nodes(env), record, environ)
            if engines is not None:
                for node_env in engines:
                    _remove_volume_on(node_env, f"{record.stack}_db-data")
            else:
                _remove_volume(record.stack, image, env)
            record_path(target.root, target.slot).unlink(missing_ok=True)
            shutil.rmtree(stack_dir(target.root, target.slot), ignore_errors=True)
            apps.remove_state(target.root, target.slot)
    return cmd


def db_node_engines(
    known: Mapping[str, Node], record: Record, environ: Mapping[str, str]
) -> list[dict[str, str]] | None:
    """The engines of every db node this machine can reach: the manager's own (the slot's
    record), the others through KTRDR_SWARM_NODE_ENGINE; None when one of them is out of
    reach (then a swarm job removes the volume)."""
    found = []
    for node in known.values():
        if node.labels.get(stackfile.DB_LABEL) != "true":
            continue
        if node.address == record.address:
            found.append(record.env(environ))
        elif environ.get(NODE_ENGINE_VARIABLE, "").strip():
            env = {k: v for k, v in record.env(environ).items() if k != "DOCKER_CONTEXT"}
            found.append({**env, "DOCKER_HOST": node_engine(environ, node.address)})
        else:
            return None
    return found


def _remove_volume_on(env: Mapping[str, str], volume: str) -> None:
    """`docker volume rm` on one node; the volume is busy until the database's container is
    gone (its stop grace period)."""
    deadline = time.monotonic() + DOWN_WAIT
    while True:
        result = runner.run(["docker", "volume", "rm", volume], env=dict(env), timeout=CLI_TIMEOUT)
        if result.ok or "no such volume" in result.stderr.lower():
            return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"removing {volume} failed: {result.tail(1)}", Exit.COMMAND, details=result.tail(5)
            )
        time.sleep(POLL)


def _app_image(root: Path, record: Record) -> str:
    """The app image the slot ran, as the nodes know it (the registry's name)."""
    try:
        document = json.loads((stack_dir(root, record.slot) / "stack.json").read_text())
        return str(document["services"]["backend"]["image"])
    except (OSError, ValueError, KeyError, TypeError):
        return registry_ref(
            record.registry, compose.image_settings(root).get("KTRDR_APP_IMAGE", "")
        )


def _wait_gone(stack_name: str, env: Mapping[str, str]) -> None:
    """Services go at once; their containers and the stack's network take a few seconds
    (stop_grace_period) on each node: wait for the network, the last thing swarm removes."""
    deadline = time.monotonic() + DOWN_WAIT
    network = f"{stack_name}_default"
    while runner.run(
        ["docker", "network", "inspect", network], env=dict(env), timeout=CLI_TIMEOUT
    ).ok:
        if time.monotonic() > deadline:
            raise SandboxError(
                f"{network} is still there {DOWN_WAIT:.0f}s after `docker stack rm`: run `inv "
                f"down` again, or `docker network rm {network}` on the manager",
                Exit.COMMAND,
            )
        time.sleep(POLL)


def _remove_volume(stack_name: str, image: str, env: Mapping[str, str]) -> None:
    """Through a global job on the db nodes. Swarm (20.10) leaves a finished job's container
    on its node even after the service is removed: SWARM.md says so."""
    name = f"{stack_name}-volume-rm"
    runner.run(["docker", "service", "rm", name], env=dict(env), timeout=CLI_TIMEOUT)
    runner.run(
        volume_job_command(stack_name, image),
        env=dict(env),
        timeout=CLI_TIMEOUT,
        check="starting the volume removal job failed",
    )
    deadline = time.monotonic() + DOWN_WAIT + 30
    try:
        while True:
            states = tasks_of_service(name, env)
            if states and all(s in FINAL_STATES for s in states):
                if any(s != "complete" for s in states):
                    raise SandboxError(
                        f"removing {stack_name}_db-data failed on a node ({', '.join(states)}): "
                        f"`docker service ps {name} --no-trunc` says why",
                        Exit.COMMAND,
                    )
                return
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"removing {stack_name}_db-data did not finish: `docker service ps {name}`",
                    Exit.COMMAND,
                )
            time.sleep(POLL)
    finally:
        runner.run(["docker", "service", "rm", name], env=dict(env), timeout=CLI_TIMEOUT)


@dataclass(frozen=True)
class ServiceRow:
    service: str
    node: str
    address: str
    state: str
    ports: tuple[int, ...]
    error: str = ""


@dataclass(frozen=True)
class SlotRows:
    slot: int
    stack: str
    rows: tuple[ServiceRow, ...]

    @property
    def up(self) -> bool:
        return bool(self.rows) and all(r.state in LIVE_STATES for r in self.rows)

    def document(self) -> dict[str, Any]:
        """The slot in `inv status --json` on a swarm."""
        return {
            "slot": self.slot,
            "backend": "swarm",
            "stack": self.stack,
            "up": self.up,
            "services": [dataclasses.asdict(r) for r in self.rows],
            "nodes": sorted({r.node for r in self.rows if r.node}),
        }


def deployed_ports(root: Path, slot: int) -> dict[str, tuple[int, ...]]:
    """Service -> the ports the slot's stack file publishes ({} when there is none)."""
    try:
        document = json.loads((stack_dir(root, slot) / "stack.json").read_text())
        rendered = stackfile.Rendered(document)
        by_service: dict[str, tuple[int, ...]] = {}
        for port, service in stackfile.published(rendered).items():
            by_service[service] = (*by_service.get(service, ()), port)
        return by_service
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def slot_rows(record: Record, environ: Mapping[str, str], root: Path = ROOT) -> SlotRows:
    env = record.env(environ)
    found = tasks(record.stack, env)
    known = nodes(env) if found else {}
    ports = deployed_ports(root, record.slot)
    rows = tuple(
        ServiceRow(
            t.service,
            t.node,
            known[t.node].address if t.node in known else "",
            t.state,
            t.ports or ports.get(t.service, ()),
            t.error,
        )
        for t in sorted(found.values(), key=lambda t: t.service)
    )
    return SlotRows(record.slot, record.stack, rows)


def status(root: Path, environ: Mapping[str, str], only: int | None = None) -> list[SlotRows]:
    return [
        slot_rows(r, environ, root) for r in recorded_slots(root) if only is None or r.slot == only
    ]


def node_engine(environ: Mapping[str, str], address: str) -> str:
    template = environ.get(NODE_ENGINE_VARIABLE, "").strip()
    if not template:
        raise SandboxError(
            f"the task runs on another node ({address}), whose engine this tool cannot reach: set "
            f"{NODE_ENGINE_VARIABLE} (e.g. ssh://admin@{{address}})",
            Exit.USAGE,
        )
    return template.replace("{address}", address)


def exec_target(
    record: Record, service: str, environ: Mapping[str, str]
) -> tuple[dict[str, str], str]:
    """The environment reaching the engine of the node that runs `service`, and its container."""
    env = record.env(environ)
    found = tasks(record.stack, env).get(service)
    if found is None or found.state not in LIVE_STATES:
        raise SandboxError(
            f"{service} of slot {record.slot} is not running (`inv status --slot={record.slot}`)",
            Exit.USAGE,
        )
    address = nodes(env)[found.node].address
    node_env = dict(env)
    if address != record.address:  # the manager's API cannot exec on another node
        node_env.pop("DOCKER_CONTEXT", None)
        node_env["DOCKER_HOST"] = node_engine(environ, address)
    fmt = "{{.ID}}"
    label = f"label=com.docker.swarm.service.name={record.stack}_{service}"
    result = runner.run(
        ["docker", "ps", "--quiet", "--filter", label, "--format", fmt],
        env=node_env,
        timeout=CLI_TIMEOUT,
    )
    ids = result.stdout.split()
    if not result.ok or not ids:
        raise SandboxError(
            f"no container of {record.stack}_{service} on {found.node} ({address})", Exit.USAGE
        )
    return node_env, ids[0]


def exec_command(container: str, argv: Sequence[str], interactive: bool) -> list[str]:
    return [
        "docker",
        "exec",
        *(["--interactive", "--tty"] if interactive else []),
        container,
        *argv,
    ]


def run_exec(
    record: Record, service: str, argv: Sequence[str], environ: Mapping[str, str], interactive: bool
) -> Result:
    env, container = exec_target(record, service, environ)
    return runner.run(exec_command(container, argv, interactive), env=env, capture=False)


def selected_record(root: Path, slot: int, environ: Mapping[str, str]) -> Record | None:
    """The slot's swarm record, when this checkout deployed it on a swarm; None otherwise
    (or with KTRDR_SWARM=0, which forces the one-engine path)."""
    if environ.get(SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    return read_record(root, slot)


def summary(deployed: Deployed) -> str:
    per_node: dict[str, list[str]] = {}
    for service, node in deployed.placement.items():
        per_node.setdefault(node, []).append(service)
    return "; ".join(f"{node}: {', '.join(names)}" for node, names in sorted(per_node.items()))
