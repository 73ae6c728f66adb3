"""Where each task of a stack runs, and the gate's probes that reach it there."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from sandbox import (
    docker,
    gateprobes,
)
from sandbox.errors import SandboxError
from sandbox.swarm.cluster import FINAL_STATES, LIVE_STATES, Node, Task, nodes, tasks


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
        state: docker.ContainerState
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
) -> gateprobes.Probes:
    """The gate's probes on a swarm: URLs and the database port reach the node that runs each
    service; containers are the stack's tasks; logs of a task elsewhere are not read."""
    base = gateprobes.default_probes(environ)

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
