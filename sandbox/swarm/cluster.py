"""The swarm as its manager tells it: whether to use it, its nodes, the tasks of a stack."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sandbox import (
    runner,
)
from sandbox.errors import Exit, SandboxError
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT

SWITCH = "KTRDR_SWARM"  # 1/on: the slot goes on the swarm; auto: when the engine is a manager
REGISTRY_VARIABLE = "KTRDR_SWARM_REGISTRY"  # HOST:PORT the nodes pull from
# How this machine reaches one node's own engine (exec, and checking a node after `down`):
# a template with {address}, e.g. ssh://admin@{address} or tcp://{address}:2375.
NODE_ENGINE_VARIABLE = "KTRDR_SWARM_NODE_ENGINE"
# Task states swarm never leaves: the gate stops waiting for such a service.
# A task whose container runs: "starting" until its first healthcheck passed (the compose
# file's interval is a minute, so that is most of a minute after the gate has passed).
LIVE_STATES = ("running", "starting")
FINAL_STATES = ("failed", "rejected", "shutdown", "complete", "orphaned", "remove")
POLL = 0.5


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


@dataclass(frozen=True)
class Task:
    """The current task of one service of a stack."""

    service: str  # without the stack's prefix: backend, db, ...
    node: str
    state: str  # running, starting, pending, failed, ... (lower case, first word)
    desired: str
    error: str
    ports: tuple[int, ...]


def published_ports(text: str) -> tuple[int, ...]:
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
            published_ports(str(row.get("Ports", ""))),
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


def tasks_of_service(name: str, environ: Mapping[str, str]) -> list[str]:
    cmd = ["docker", "service", "ps", "--format", "{{.CurrentState}}", name]
    result = runner.run(cmd, env=dict(environ), timeout=CLI_TIMEOUT)
    return [line.split(" ")[0].lower() for line in result.stdout.splitlines() if line.strip()]


def node_engine(environ: Mapping[str, str], address: str) -> str:
    template = environ.get(NODE_ENGINE_VARIABLE, "").strip()
    if not template:
        raise SandboxError(
            f"the task runs on another node ({address}), whose engine this tool cannot reach: set "
            f"{NODE_ENGINE_VARIABLE} (e.g. ssh://admin@{{address}})",
            Exit.USAGE,
        )
    return template.replace("{address}", address)


def node_env(
    environ: Mapping[str, str], manager_env: Mapping[str, str], node: Node
) -> dict[str, str]:
    """`manager_env` pointed at `node`'s own engine through KTRDR_SWARM_NODE_ENGINE."""
    env = {k: v for k, v in manager_env.items() if k != "DOCKER_CONTEXT"}
    return {**env, "DOCKER_HOST": node_engine(environ, node.address)}


def labelled_engines(
    known: Mapping[str, Node],
    label: str,
    manager: tuple[str, Mapping[str, str]],
    environ: Mapping[str, str],
) -> list[tuple[Node, dict[str, str]]] | None:
    """Each node labelled `label`=true and the environment reaching its engine: `manager`
    (its address, its environment) for the manager itself, KTRDR_SWARM_NODE_ENGINE for the
    others; None when one of them is out of reach (no template)."""
    address, manager_env = manager
    found = []
    for node in known.values():
        if node.labels.get(label) != "true":
            continue
        if node.address == address:
            found.append((node, dict(manager_env)))
        elif environ.get(NODE_ENGINE_VARIABLE, "").strip():
            found.append((node, node_env(environ, manager_env, node)))
        else:
            return None
    return found


def wait_for(
    done: Callable[[], bool],
    seconds: float,
    failure: Callable[[], SandboxError],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Ask `done` every POLL seconds until it says yes; `failure()` raised once `seconds` have
    passed. Swarm does everything a little later than asked: tasks start, networks go."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise failure()
        sleep(POLL)
