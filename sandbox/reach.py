"""Reaching a slot from containers on this host, and running the tool from inside one.

Two worlds, one question: where are a slot's published ports, and who reaches them?

* **From containers (KTRDR_AGENT_REACH=bridge).** A coding agent started like KTRDR's
  (`docker run --add-host=host.docker.internal:host-gateway ...`) reaches the host at the
  Docker bridge's gateway address (docker0's, 172.17.0.1 by default): that is what
  `host-gateway` resolves to. A port published on 127.0.0.1 is not there, so with `bridge` each
  of the slot's ports is published on 127.0.0.1 *and* on the gateway address, never on another
  address of this machine: the network cannot reach it, containers on this host can. The
  default, `loopback`, publishes on 127.0.0.1 alone, as before. On Docker Desktop the engine
  runs in a VM whose `host.docker.internal` already reaches ports published on the host's
  loopback, so `bridge` adds nothing there (and the gateway is the VM's): preflight says which
  world it found.
* **From inside a container with the engine's socket mounted.** Compose resolves bind-mount
  sources on the engine's host, not in this container, and the published ports are on the
  engine host's addresses, not this container's loopback. So: a path this container sees is
  translated to the engine host's path through this container's own mounts (`docker inspect`
  of itself), or refused in one line naming the path and the fix; ports are published on the
  bridge gateway too (as with `bridge`), and the gate and URLs reach them there
  (KTRDR_CONNECT_HOST still wins).

Pure parts (`parse_mode`, `gateway_from_ipam`, `translate`, `bridge_ports`, `agent_url`,
`container_id_from_mountinfo`, `exposure`) are tested without Docker; the rest asks `docker`
through `runner.run`, at most once per process for each fact.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sandbox import engine, runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.settings import CLI_TIMEOUT

if TYPE_CHECKING:
    from sandbox.compose import SlotConfig

REACH_VARIABLE = "KTRDR_AGENT_REACH"
LOOPBACK_ONLY = "loopback"
BRIDGE = "bridge"
MODES = (LOOPBACK_ONLY, BRIDGE)
# What a container started with `--add-host=host.docker.internal:host-gateway` calls the host.
AGENT_HOST = "host.docker.internal"
AGENT_ADD_HOST = f"--add-host={AGENT_HOST}:host-gateway"


class World(StrEnum):
    """Where this tool runs, relative to the engine."""

    HOST = "host"  # on the engine's host (Linux, Docker Engine)
    DESKTOP = "desktop"  # Docker Desktop: the engine is in a VM; host.docker.internal is ours
    CONTAINER = "container"  # inside a container, the engine's socket mounted


# ------------------------------------------------------------------------- pure parts


def parse_mode(value: str | None) -> str:
    """KTRDR_AGENT_REACH: loopback (default) or bridge; anything else is one line."""
    text = (value or LOOPBACK_ONLY).strip().lower()
    if text not in MODES:
        raise SandboxError(
            f"{REACH_VARIABLE}={value!r}: use loopback (ports on 127.0.0.1 only, the "
            "default) or bridge (also on the Docker bridge gateway, for containers on this "
            "host)",
            Exit.USAGE,
        )
    return text


def gateway_from_ipam(config: Sequence[Mapping[str, Any]]) -> str | None:
    """The bridge network's IPv4 gateway from `docker network inspect`'s IPAM.Config: its
    Gateway, else the first host of its subnet (the address Docker gives docker0 when
    daemon.json sets no `bip`; engine 20.10 leaves Gateway out of the default bridge's IPAM)."""
    for entry in config:
        gateway = str(entry.get("Gateway") or "")
        if gateway and ":" not in gateway:
            return gateway.split("/")[0]
    for entry in config:
        subnet = str(entry.get("Subnet") or "")
        if subnet and ":" not in subnet:
            network = ipaddress.ip_network(subnet, strict=False)
            return str(next(network.hosts()))
    return None


# The database (a default password) stays off the gateway for agents: they speak to the API.
# Only this tool in a container needs it there, for the gate's database check.
AGENT_SKIPS = frozenset({"KTRDR_DB_PORT"})


def bridge_ports(
    gateway: str, target_values: Mapping[str, str], database: bool = False
) -> dict[str, list[str]]:
    """Service -> the extra `ports:` entries that publish the slot's ports on `gateway` (the
    same host port and container port as the compose file's entry); the database's only
    with `database`."""
    found: dict[str, list[str]] = {}
    for spec in slots.PORTS:
        if spec.variable in AGENT_SKIPS and not database:
            continue
        host = target_values[spec.variable]
        inner = str(spec.container_port) if spec.container_port is not None else host
        found.setdefault(spec.service, []).append(f"{gateway}:{host}:{inner}")
    return found


def agent_url(port: int) -> str:
    """The API root a container started like KTRDR's coding agent uses."""
    return f"http://{AGENT_HOST}:{port}/api/v1"


@dataclass(frozen=True)
class Mount:
    """One of this container's mounts: where the engine's host has it, where we see it."""

    source: str  # on the engine's host
    destination: str  # in this container


def translate(path: str, mounts: Sequence[Mount]) -> str | None:
    """`path` as seen in this container, as the engine's host sees it: through the mount
    that holds it (the deepest one), or None when no mount does (it exists here only)."""
    wanted = PurePosixPath(os.path.normpath(path))
    best: Mount | None = None
    for mount in mounts:
        where = PurePosixPath(mount.destination)
        if (wanted == where or where in wanted.parents) and (
            best is None or len(where.parts) > len(PurePosixPath(best.destination).parts)
        ):
            best = mount
    if best is None:
        return None
    rest = wanted.relative_to(best.destination)
    return str(PurePosixPath(best.source) / rest) if rest.parts else best.source


def untranslatable(path: str) -> SandboxError:
    return SandboxError(
        f"{path} exists only inside this container: the Docker engine cannot bind-mount it. "
        f"Start this container with `-v HOSTPATH:{path}` (the same path on both sides is "
        "simplest), or point the setting that names it at a mounted path",
        Exit.USAGE,
    )


def mounts_from_inspect(document: Sequence[Mapping[str, Any]]) -> list[Mount]:
    """The mounts of `docker inspect`'s first object (bind mounts and volumes alike: a
    volume's Source is its directory on the engine's host)."""
    if not document:
        return []
    found = []
    for entry in document[0].get("Mounts") or []:
        source, destination = entry.get("Source"), entry.get("Destination")
        if source and destination:
            found.append(Mount(str(source), str(destination)))
    return found


def translate_volume(spec: str, mounts: Sequence[Mount]) -> str:
    """A Compose short-syntax volume `SRC:DST[:MODE]` with an absolute SRC, translated; a
    named volume is left as it is."""
    source, sep, rest = spec.partition(":")
    if not sep or not source.startswith("/"):
        return spec
    host = translate(source, mounts)
    if host is None:
        raise untranslatable(source)
    return f"{host}:{rest}"


def exposure(bind: str, gateway: str | None, world: World, port: int | None = None) -> str:
    """One line for preflight: every address the slot's ports are published on, who
    reaches them there, and the URL a container on this host uses."""
    bare = engine.bare(bind) or "0.0.0.0"
    example = f"{AGENT_HOST}:{port}" if port is not None else f"{AGENT_HOST}:PORT"
    if world is World.DESKTOP:
        return (
            f"ports on {bare} of the Docker Desktop host; containers reach them at "
            f"http://{example} (Docker Desktop forwards host.docker.internal to the host)"
        )
    if bare in engine.WILDCARDS:
        return (
            f"ports on every address of the engine's host ({bare}): the network reaches them, "
            f"containers too (http://{example} with {AGENT_ADD_HOST})"
        )
    if gateway is None:
        return (
            f"ports on {bare} only: containers cannot reach them "
            f"({REACH_VARIABLE}=bridge also publishes them on the Docker bridge gateway)"
        )
    line = (
        f"ports on {bare} and on {gateway} (the Docker bridge gateway), no other address; "
        f"containers on this host reach them at http://{example} with {AGENT_ADD_HOST}"
    )
    if world is World.CONTAINER:
        return line + f"; this container reaches them at {gateway}"
    line += f"; the database stays on {bare} only"
    return line + " (Docker Engine on Linux: that name is the gateway, not the host's loopback)"


# ------------------------------------------------------------------------- facts


def inside_container() -> bool:
    """In a container of some Docker engine (sandbox/engine.py says how that is told)."""
    return engine.own_container_id() is not None


def _engine_key(environ: Mapping[str, str]) -> tuple[str, str]:
    return environ.get("DOCKER_HOST", ""), environ.get("DOCKER_CONTEXT", "")


@functools.cache
def _gateway(key: tuple[str, str], environ_items: tuple[tuple[str, str], ...]) -> str | None:
    cmd = ["docker", "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"]
    result = runner.run(cmd, env=dict(environ_items), timeout=CLI_TIMEOUT)
    if not result.ok:
        return None
    try:
        config = json.loads(result.stdout or "null") or []
    except ValueError:
        return None
    return gateway_from_ipam(config) if isinstance(config, list) else None


def gateway_or_none(environ: Mapping[str, str]) -> str | None:
    return _gateway(_engine_key(environ), tuple(sorted(environ.items())))


def bridge_gateway(environ: Mapping[str, str]) -> str:
    """The engine's bridge gateway address, or SandboxError saying why there is none."""
    found = gateway_or_none(environ)
    if found is None:
        raise SandboxError(
            "the engine has no `bridge` network with an IPv4 gateway (`docker network inspect "
            f"bridge`): containers cannot reach the host there; unset {REACH_VARIABLE}",
            Exit.BAD_ENV,
        )
    return found


@functools.cache
def _operating_system(key: tuple[str, str], environ_items: tuple[tuple[str, str], ...]) -> str:
    cmd = ["docker", "info", "--format", "{{.OperatingSystem}}"]
    result = runner.run(cmd, env=dict(environ_items), timeout=CLI_TIMEOUT)
    return result.stdout.strip() if result.ok else ""


def world(environ: Mapping[str, str]) -> World:
    if in_container_with_socket(environ):
        return World.CONTAINER
    system = _operating_system(_engine_key(environ), tuple(sorted(environ.items())))
    return World.DESKTOP if "Docker Desktop" in system else World.HOST


@dataclass(frozen=True)
class Self:
    """This container as the engine sees it."""

    id: str
    mounts: tuple[Mount, ...]
    host_network: bool


@functools.cache
def _self(environ_items: tuple[tuple[str, str], ...]) -> Self | None:
    ident = engine.own_container_id()
    if ident is None:
        return None
    result = runner.run(["docker", "inspect", ident], env=dict(environ_items), timeout=CLI_TIMEOUT)
    try:
        document = json.loads(result.stdout) if result.ok else []
    except ValueError:
        document = []
    if not document:
        return None
    mode = str(document[0].get("HostConfig", {}).get("NetworkMode", ""))
    return Self(ident, tuple(mounts_from_inspect(document)), mode == "host")


def myself(environ: Mapping[str, str]) -> Self | None:
    """This container as the engine knows it; None when we are in none, or in one this
    engine does not know: then the engine runs beside us (in our own container, say), sees
    our paths as they are and publishes where we reach, as on a host."""
    return _self(tuple(sorted(environ.items())))


def local_engine(environ: Mapping[str, str]) -> bool:
    """A unix-socket engine (DOCKER_HOST unset or unix://): the case this module is about. A
    tcp:// or ssh:// engine is a remote host (sandbox/engine.py) wherever we run."""
    host = environ.get("DOCKER_HOST", "").strip()
    return not host or host.startswith("unix://")


def in_container_with_socket(environ: Mapping[str, str]) -> bool:
    """In a container of the local engine whose socket we hold: paths and ports differ."""
    return local_engine(environ) and inside_container() and myself(environ) is not None


def _host_network(environ: Mapping[str, str]) -> bool:
    found = myself(environ)
    return found is not None and found.host_network


def mode(environ: Mapping[str, str]) -> str:
    """The reach in force: the setting, except that inside a container (not on the host's
    network) the ports must be on the bridge for this very tool to reach them."""
    chosen = parse_mode(environ.get(REACH_VARIABLE))
    if chosen == LOOPBACK_ONLY and in_container_with_socket(environ):
        return chosen if _host_network(environ) else BRIDGE
    return chosen


def publish_on(environ: Mapping[str, str], bind: str) -> str | None:
    """The gateway to publish the slot's ports on besides `bind`, or None: loopback only, a
    wildcard bind (which the bridge reaches already), or Docker Desktop (whose
    host.docker.internal reaches the host's loopback)."""
    if mode(environ) != BRIDGE or engine.is_wildcard(bind):
        return None
    if not local_engine(environ) or world(environ) is World.DESKTOP:
        return None
    return bridge_gateway(environ)


def connect_host(environ: Mapping[str, str]) -> str:
    """Where this tool reaches published ports when run inside a container with the
    socket: the bridge gateway; "" elsewhere (the usual rules of sandbox/engine.py apply)."""
    if not in_container_with_socket(environ) or _host_network(environ):
        return ""
    return bridge_gateway(environ)


def host_path(path: str | Path, environ: Mapping[str, str]) -> str:
    """`path` as the engine's host sees it: itself, except inside a container with the
    socket, where it goes through this container's mounts (or is refused)."""
    text = str(path)
    if not in_container_with_socket(environ):
        return text
    mine = myself(environ)
    found = translate(text, mine.mounts) if mine is not None else text
    if found is None:
        raise untranslatable(text)
    return found


# ------------------------------------------------------------------------- hooks


def compose_environment(
    env: Mapping[str, str], root: Path, environ: Mapping[str, str]
) -> dict[str, str]:
    """`compose.environment`'s result for `up`, with the shared directory (the compose
    file's `${KTRDR_SHARED_DIR:-.}` binds) as the engine's host has it."""
    found = dict(env)
    if in_container_with_socket(environ):
        shared = found.get("KTRDR_SHARED_DIR") or str(root)
        found["KTRDR_SHARED_DIR"] = host_path(shared, environ)
    return found


def adjust_override(override: Path, config: SlotConfig, environ: Mapping[str, str]) -> None:
    """After `up` wrote the slot's Compose override: add the bridge ports when in force (on
    the slot's configured bind address), and inside a container translate its bind-mount
    sources to the engine host's paths."""
    gateway = publish_on(environ, config.bind)
    translating = in_container_with_socket(environ)
    if gateway is None and not translating:
        return
    document = json.loads(override.read_text())
    services: dict[str, dict[str, Any]] = document.setdefault("services", {})
    if gateway is not None:
        for service, ports in bridge_ports(gateway, config.values, translating).items():
            services.setdefault(service, {})["ports"] = ports
    mine = myself(environ)
    if translating and mine is not None:
        mounts = mine.mounts
        for body in services.values():
            if "volumes" in body:
                body["volumes"] = [translate_volume(v, mounts) for v in body["volumes"]]
    override.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def container_line(environ: Mapping[str, str], paths: Sequence[Path]) -> str | None:
    """Inside a container of the engine: which container, and each path the slot binds as
    the engine's host has it (SandboxError naming the first one it cannot have)."""
    mine = myself(environ) if in_container_with_socket(environ) else None
    if mine is None:
        return None
    shown = []
    for path in paths:
        host = host_path(path, environ)
        shown.append(str(path) if host == str(path) else f"{path} is {host} there")
    reached = connect_host(environ)
    where = "on the host's network" if mine.host_network else f"ports reached at {reached}"
    return f"in container {mine.id[:12]} of this engine ({where}); " + "; ".join(shown)


def exposure_line(environ: Mapping[str, str], bind: str, api_port: int) -> str | None:
    """Preflight's `reach` line, or None for the default (loopback only, on the engine's
    host), which asks nothing more of the engine: `inv up` then says what it always said."""
    chosen = mode(environ)
    if chosen == LOOPBACK_ONLY and engine.is_loopback(bind):
        return None
    where = world(environ) if local_engine(environ) else World.HOST
    return exposure(bind, publish_on(environ, bind), where, api_port)


def env_sandbox_lines(environ: Mapping[str, str], bind: str, api_port: int) -> list[str]:
    """`.env.sandbox`'s line for an agent container, when containers can reach the slot."""
    reached = engine.is_wildcard(bind) or (
        mode(environ) == BRIDGE
        and (publish_on(environ, bind) is not None or world(environ) is World.DESKTOP)
    )
    return [f"KTRDR_AGENT_API_URL={agent_url(api_port)}"] if reached else []
