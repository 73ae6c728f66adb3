"""What the Docker engine knows about sandbox containers, fetched in one call.

`containers()` asks once for every container of every Compose project; callers filter. Parsing
is pure (`parse_ps`) and tested on captured output.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from sandbox import runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.settings import ENGINE_ANSWER_TIMEOUT, ENGINE_QUERY_TIMEOUT

PROJECT_LABEL = "com.docker.compose.project"
VOLUME_LABEL = "com.docker.compose.volume"  # a volume's key in its compose file
SERVICE_LABEL = "com.docker.compose.service"
WORKDIR_LABEL = "com.docker.compose.project.working_dir"
# Set by ktrdr-sandbox's own override (sandbox/slotfiles.py): what the slot runs, and from where.
APP_LABEL = "ktrdr.sandbox.app"
SOURCE_LABEL = "ktrdr.sandbox.source"
TORCH_LABEL = "ktrdr.sandbox.torch"
# The host name of the client machine that started the slot: with a remote engine, a checkout
# is (client, path), since two machines may have the same path.
CLIENT_LABEL = "ktrdr.sandbox.client"
# Which services the slot runs: its worker profile and its observability (own or shared).
WORKERS_LABEL = "ktrdr.sandbox.workers"
OBSERVABILITY_LABEL = "ktrdr.sandbox.observability"
# The host directory the slot's containers mount at /app/data and /app/strategies, and
# where its models live: the shared one, or the slot's own under it (`--models=slot`).
SHARED_LABEL = "ktrdr.sandbox.shared"
MODELS_LABEL = "ktrdr.sandbox.models"
# Which app services run under a reloader: backend, or workers (the backend and the workers).
RELOAD_LABEL = "ktrdr.sandbox.reload"

# A container's state as `docker ps` reports it (Docker's own fixed set), and its health as read
# from the status column ("none": no healthcheck, or not running).
ContainerState = Literal["created", "running", "restarting", "removing", "paused", "exited", "dead"]
CONTAINER_STATES: tuple[ContainerState, ...] = get_args(ContainerState)
Health = Literal["healthy", "unhealthy", "starting", "none"]


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    project: str
    service: str
    state: ContainerState
    status: str  # "Up 3 minutes (healthy)"
    working_dir: str
    ports: tuple[PublishedPort, ...] = field(default_factory=tuple)
    image: str = ""  # the image it runs, as `docker ps` names it
    app: str = ""  # the app kind; "" for containers started before kinds were recorded
    source: str = ""  # the source checkout the app code is mounted from; "" for built-in code
    torch: str = ""  # which torch a source's image has: none, debian, locked; "" for no choice
    client: str = ""  # the client machine's host name; "" for containers from before it was set
    workers: str = ""  # the slot's worker profile; "" before profiles were recorded (full)
    observability: str = ""  # own or shared; "" before it was recorded (own)
    shared: str = ""  # the shared directory it mounts; "" before it was recorded
    models: str = ""  # the host directory of its models; "" before it was recorded (shared)
    reload: str = ""  # which app services reload on edits; "" before it was recorded
    # Marked unhealthy by Docker although no check failed: see `recheck_unhealthy`.
    unchecked: bool = False

    @property
    def layout(self) -> slots.Layout:
        return slots.recorded_layout(self.workers, self.observability)

    @property
    def slot(self) -> int | None:
        return slots.slot_of_project(self.project)

    @property
    def health(self) -> Health:
        match = re.search(r"\((healthy|unhealthy|health: starting)\)", self.status)
        if match is None:
            return "none"
        if match.group(1) == "health: starting" or self.unchecked:
            return "starting"
        return _HEALTH[match.group(1)]

    @property
    def running(self) -> bool:
        return self.state == "running"


_HEALTH: dict[str, Health] = {"healthy": "healthy", "unhealthy": "unhealthy"}


def container_state(text: str, name: str) -> ContainerState:
    """`docker ps`'s State of container `name`, checked against Docker's set."""
    for state in CONTAINER_STATES:
        if state == text:
            return state
    raise SandboxError(
        f"docker ps lists container {name} in state {text!r}, which is not one of Docker's "
        f"({', '.join(CONTAINER_STATES)}): check the engine with `docker ps -a`",
        Exit.COMMAND,
    )


_PORT = re.compile(
    r"^(?P<ip>\[?[0-9a-fA-F.:]*\]?):(?P<host>\d+)(?:-(?P<host_end>\d+))?"
    r"->(?P<inner>\d+)(?:-(?P<inner_end>\d+))?/(?P<proto>\w+)$"
)


def parse_ports(text: str) -> tuple[PublishedPort, ...]:
    """`docker ps` port column, e.g. "127.0.0.1:8001->8000/tcp, 5432/tcp" or the grouped
    "127.0.0.1:4327-4328->4317-4318/tcp"; ports that are not published are skipped."""
    found = []
    for part in text.split(","):
        match = _PORT.match(part.strip())
        if not match:
            continue
        host, inner = int(match["host"]), int(match["inner"])
        count = int(match["host_end"] or host) - host + 1
        for offset in range(count):
            found.append(
                PublishedPort(
                    match["ip"].strip("[]"), host + offset, inner + offset, match["proto"]
                )
            )
    return tuple(found)


# One JSON object a line, the labels picked out by the template: `docker ps` joins all labels
# into one comma-separated string, and label values (a checkout path, an image description)
# may contain commas themselves.
PS_FORMAT = (
    '{"ID":{{json .ID}},"Names":{{json .Names}},"State":{{json .State}},'
    '"Status":{{json .Status}},"Ports":{{json .Ports}},"Image":{{json .Image}},'
    f'"Project":{{{{json (.Label "{PROJECT_LABEL}")}}}},'
    f'"Service":{{{{json (.Label "{SERVICE_LABEL}")}}}},'
    f'"WorkingDir":{{{{json (.Label "{WORKDIR_LABEL}")}}}},'
    f'"App":{{{{json (.Label "{APP_LABEL}")}}}},'
    f'"Source":{{{{json (.Label "{SOURCE_LABEL}")}}}},'
    f'"Torch":{{{{json (.Label "{TORCH_LABEL}")}}}},'
    f'"Client":{{{{json (.Label "{CLIENT_LABEL}")}}}},'
    f'"Workers":{{{{json (.Label "{WORKERS_LABEL}")}}}},'
    f'"Observability":{{{{json (.Label "{OBSERVABILITY_LABEL}")}}}},'
    f'"Shared":{{{{json (.Label "{SHARED_LABEL}")}}}},'
    f'"Models":{{{{json (.Label "{MODELS_LABEL}")}}}},'
    f'"Reload":{{{{json (.Label "{RELOAD_LABEL}")}}}}}}'
)


def parse_ps(output: str) -> list[Container]:
    """`ps_command()` output, one JSON object a line."""
    found = []
    for line in output.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        found.append(
            Container(
                id=row.get("ID", ""),
                name=row.get("Names", ""),
                project=row.get("Project", ""),
                service=row.get("Service", ""),
                state=container_state(row.get("State", ""), row.get("Names", "")),
                status=row.get("Status", ""),
                working_dir=row.get("WorkingDir", ""),
                ports=parse_ports(row.get("Ports", "")),
                image=row.get("Image", ""),
                app=row.get("App", ""),
                source=row.get("Source", ""),
                torch=row.get("Torch", ""),
                client=row.get("Client", ""),
                workers=row.get("Workers", ""),
                observability=row.get("Observability", ""),
                shared=row.get("Shared", ""),
                models=row.get("Models", ""),
                reload=row.get("Reload", ""),
            )
        )
    return found


def client_name() -> str:
    """This machine's host name, as the client label records it."""
    return socket.gethostname()


def ps_command() -> list[str]:
    return [
        "docker",
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        f"label={PROJECT_LABEL}",
        "--format",
        PS_FORMAT,
    ]


DEFAULT_ENGINE = "unix:///var/run/docker.sock"
TIMED_OUT = 124  # runner.execute's return code for a command it stopped at its timeout


def engine_address(environ: Mapping[str, str]) -> str:
    """Where the CLI looks for the engine, as the user would recognise it."""
    return environ.get("DOCKER_HOST") or f"{DEFAULT_ENGINE} (or the current `docker context`)"


def engine_error(
    result: Result,
    environ: Mapping[str, str] | None = None,
    waited: float = ENGINE_ANSWER_TIMEOUT,
) -> SandboxError:
    """Why a docker call that needed the engine failed; `waited`: the timeout it had."""
    if result.returncode == TIMED_OUT:
        where = engine_address(os.environ if environ is None else environ)
        return SandboxError(
            f"the Docker engine at {where} does not answer (no reply within "
            f"{waited:.0f} s): restart Docker, or point DOCKER_HOST at an engine that runs",
            Exit.NO_ENGINE,
        )
    if "permission denied" in result.stderr.lower():
        return SandboxError(
            "the Docker engine refused this user (permission denied on its socket): add "
            "yourself to the docker group (`sudo usermod -aG docker $USER`, then log in "
            "again) or run as root",
            Exit.NO_ENGINE,
        )
    return SandboxError(
        "the Docker engine is not reachable: start Docker (Docker Desktop, or `dockerd` as "
        f"root) and re-run ({result.tail(1) or 'no answer'})",
        Exit.NO_ENGINE,
    )


def containers(
    environ: Mapping[str, str] | None = None, *, timeout: float = ENGINE_QUERY_TIMEOUT
) -> list[Container]:
    """Every Compose-managed container on this engine, in one `docker ps` call.

    With `timeout=ENGINE_ANSWER_TIMEOUT` the call is the engine check as well (`inv status`):
    an engine lists its containers from memory as fast as it tells its version, so a wedged
    one is told apart within that time without a `docker version` first."""
    env = dict(os.environ if environ is None else environ)
    result = runner.run(ps_command(), env=env, timeout=timeout)
    if not result.ok:
        raise engine_error(result, env, waited=timeout)
    return parse_ps(result.stdout)


# Docker's healthcheck retries when a healthcheck sets none.
DEFAULT_RETRIES = 3


def recheck_unhealthy(
    found: list[Container], environ: Mapping[str, str], *, timeout: float
) -> list[Container]:
    """`found`, with the unhealthy containers that no failed check made so marked `unchecked`
    (health "starting"). Docker marks a container unhealthy when its health monitor stops
    (`docker pause`) and keeps the mark after `docker unpause` until the next check has run,
    up to a healthcheck interval later, while its failing streak stays below the retries that
    a real failure needs. One `docker inspect`, and only when a container is unhealthy; when
    that call fails (a container removed meanwhile) `found` stands as it is."""
    suspects = [c.id for c in found if c.health == "unhealthy"]
    if not suspects:
        return found
    template = "{{.Id}} {{.State.Health.FailingStreak}} {{.Config.Healthcheck.Retries}}"
    result = runner.run(
        ["docker", "inspect", "--format", template, *suspects], env=dict(environ), timeout=timeout
    )
    if not result.ok:
        return found
    unchecked = [
        full_id
        for full_id, streak, retries in _health_counts(result.stdout)
        if streak < (retries or DEFAULT_RETRIES)
    ]
    return [
        replace(c, unchecked=True) if any(i.startswith(c.id) for i in unchecked) else c
        for c in found
    ]


def _health_counts(text: str) -> list[tuple[str, int, int]]:
    """(container id, failing streak, retries) from `recheck_unhealthy`'s inspect lines."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def sandbox_containers(
    environ: Mapping[str, str] | None = None, *, timeout: float = ENGINE_QUERY_TIMEOUT
) -> list[Container]:
    return [c for c in containers(environ, timeout=timeout) if c.slot is not None]


def check_engine(environ: Mapping[str, str] | None = None) -> str:
    """The engine's version, or SandboxError(NO_ENGINE)."""
    env = dict(os.environ if environ is None else environ)
    result = runner.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env=env,
        timeout=ENGINE_ANSWER_TIMEOUT,
    )
    if not result.ok or not result.stdout.strip():
        raise engine_error(result, env)
    return result.stdout.strip()
