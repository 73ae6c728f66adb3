"""A test swarm on this machine: Docker-in-Docker nodes on a bridge network of their own.

Each node is a container of the simulated remote host's image (`containers/images/remote-host`:
Debian's engine, no `--privileged`), named `ktrdr-sandbox-swarm-N`, on the network
`ktrdr-sandbox-swarm-net`. Nothing is published on this machine: the client reaches each node's
engine (tcp 2375, no TLS) and the slots' host-mode ports at the node's address on that bridge.
Node 1 is the manager and holds the databases (`ktrdr.sandbox.db=true`) and the registry; node 2
holds the shared directory (`ktrdr.sandbox.shared=true`); node 3 runs whatever swarm puts there.
Every node trusts the registry on node 1 without TLS (daemon.json's insecure-registries).

    python -m tests.support.swarmnodes start|stop|status   (the swarm nox session's machinery)

Test infrastructure only: the engines' APIs have no authentication.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from sandbox import ROOT
from sandbox.errors import Exit, SandboxError
from sandbox.images.send import checked
from sandbox.runner import Result, run
from tests.support.remotehost import IMAGE, SECURITY, ensure_image

PREFIX = "ktrdr-sandbox-swarm"
NETWORK = f"{PREFIX}-net"
NODES = 3
API_PORT = 2375
REGISTRY_PORT = 5000
# The registry answers on the manager's name on the bridge (Docker's DNS resolves it for the
# nodes' engines), so its address does not change when the network does.
REGISTRY = f"{PREFIX}-1:{REGISTRY_PORT}"
REGISTRY_VOLUME = "ktrdr-sandbox-registry"  # the registry service's blobs (sandbox.swarm.registry)
# Figures from the feasibility run: an inner engine answers ~2-3 s after `docker run`.
READY_TIMEOUT = 90.0
POLL = 0.2
# sshd of the image needs a key to start; nothing here logs in over ssh.
UNUSED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKtrdrSandboxSwarmNodesTakeNoLoginAtAll0 none"
LABELS = {1: ("ktrdr.sandbox.db=true",), 2: ("ktrdr.sandbox.shared=true",), 3: ()}


def node_name(number: int) -> str:
    return f"{PREFIX}-{number}"


def volume_name(number: int) -> str:
    """The node's /var/lib/docker (overlay2 needs a real filesystem): its images survive a
    stop when kept (KTRDR_SWARM_KEEP_IMAGES)."""
    return f"{PREFIX}-{number}-docker"


@dataclass(frozen=True)
class Node:
    number: int
    address: str  # on the swarm's bridge network

    @property
    def name(self) -> str:
        return node_name(self.number)

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.address}:{API_PORT}"

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` pointed at this node's engine."""
        env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
        return {**env, "DOCKER_HOST": self.docker_host}


@dataclass(frozen=True)
class Swarm:
    nodes: tuple[Node, ...]
    seconds_to_engines: float  # first `docker run` to every inner engine answering
    seconds_to_swarm: float  # `swarm init` to every node Ready

    @property
    def manager(self) -> Node:
        return self.nodes[0]


def _local(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}


def _docker(args: Sequence[str], environ: Mapping[str, str], timeout: float = 60) -> Result:
    return run(["docker", *args], env=_local(environ), timeout=timeout)


def daemon_json(registry: str = REGISTRY) -> str:
    """The nodes' engine settings: the registry trusted without TLS."""
    return json.dumps({"insecure-registries": [registry]}, indent=2) + "\n"


def run_command(number: int, daemon_config: Path) -> list[str]:
    """The `docker run` of one node (on this machine's engine): no published port."""
    name = node_name(number)
    return [
        "docker",
        "run",
        "--detach",
        f"--name={name}",
        f"--hostname={name}",
        f"--network={NETWORK}",
        *SECURITY,
        f"--volume={volume_name(number)}:/var/lib/docker",
        f"--volume={daemon_config}:/etc/docker/daemon.json:ro",
        f"--env=KTRDR_AUTHORIZED_KEY={UNUSED_KEY}",
        "--label=ktrdr.sandbox.swarm-node=1",
        IMAGE,
    ]


def _address(number: int, environ: Mapping[str, str]) -> str:
    fmt = f"{{{{(index .NetworkSettings.Networks {json.dumps(NETWORK)}).IPAddress}}}}"
    result = _docker(["container", "inspect", "--format", fmt, node_name(number)], environ)
    return checked(
        result, f"reading {node_name(number)}'s address", "is it running?"
    ).stdout.strip()


def _wait_engine(node: Node, environ: Mapping[str, str], deadline: float) -> None:
    while True:
        result = run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=node.env(environ),
            timeout=10,
        )
        if result.ok:
            return
        state = _docker(
            ["container", "inspect", "--format", "{{.State.Status}}", node.name], environ
        )
        if state.stdout.strip() != "running" or time.monotonic() > deadline:
            logs = _docker(["logs", "--tail", "15", node.name], environ).tail(15)
            raise SandboxError(
                f"swarm node {node.name} did not start ({state.stdout.strip() or 'absent'}): "
                f"its log above says why (`docker logs {node.name}`)",
                Exit.NO_ENGINE,
                details=logs,
            )
        time.sleep(POLL)


def _on(
    node: Node, args: Sequence[str], environ: Mapping[str, str], timeout: float = 120
) -> Result:
    return run(["docker", *args], env=node.env(environ), timeout=timeout)


def reset_node(node: Node, environ: Mapping[str, str]) -> None:
    """A kept volume's leftovers gone: the old swarm (its addresses are stale), containers and
    volumes. Images stay."""
    _on(node, ["swarm", "leave", "--force"], environ)
    for listing, removal in (
        (["ps", "--all", "--quiet"], ["rm", "--force", "--volumes"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
    ):
        # The registry's blobs are kept with the images: the next push skips every layer.
        found = [i for i in _on(node, listing, environ).stdout.split() if i != REGISTRY_VOLUME]
        if found:
            checked(_on(node, [*removal, *found], environ, 300), f"emptying {node.name}", "")


def make_dirs(node: Node, paths: Sequence[str], environ: Mapping[str, str]) -> None:
    """Directories on a node's own filesystem (the shared directory a test slot binds)."""
    cmd = ["exec", node.name, "mkdir", "-p", *paths]
    checked(_docker(cmd, environ), f"creating {', '.join(paths)} on {node.name}", "")


def stop(environ: Mapping[str, str] | None = None, keep_images: bool = False) -> list[str]:
    """Remove every node, the network (and the nodes' volumes unless `keep_images`)."""
    env = dict(os.environ if environ is None else environ)
    removed = []
    for number in range(1, NODES + 1):
        name = node_name(number)
        if _docker(["container", "inspect", name], env).ok:
            if keep_images:
                _docker(["stop", "--time", "20", name], env, 120)
            checked(_docker(["rm", "--force", "--volumes", name], env, 120), f"removing {name}", "")
            removed.append(f"container {name}")
        if not keep_images and _docker(["volume", "inspect", volume_name(number)], env).ok:
            checked(
                _docker(["volume", "rm", volume_name(number)], env, 120), "docker volume rm", ""
            )
            removed.append(f"volume {volume_name(number)}")
    if _docker(["network", "inspect", NETWORK], env).ok:
        checked(_docker(["network", "rm", NETWORK], env), f"removing {NETWORK}", "")
        removed.append(f"network {NETWORK}")
    return removed


def scrub_command(number: int) -> list[str]:
    """A kept volume without the old engine's swarm and network state, images kept: a node
    killed rather than stopped leaves overlay networks and peers behind that a new swarm's
    networks (same subnets) then met, and the backend could not resolve `db` for minutes."""
    return [
        "docker",
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--entrypoint=/bin/rm",
        f"--volume={volume_name(number)}:/node",
        IMAGE,
        "-rf",
        "/node/swarm",
        "/node/network",
    ]


def _start_node(number: int, config: Path, environ: Mapping[str, str]) -> None:
    result = _docker(run_command(number, config)[1:], environ)
    if not result.ok:
        _docker(["rm", "--force", node_name(number)], environ)
        raise SandboxError(
            f"swarm node {node_name(number)} did not start: {result.tail(1)}",
            Exit.NO_ENGINE,
            details=result.tail(20),
        )


def _ready_nodes(manager: Node, environ: Mapping[str, str]) -> int:
    result = _on(manager, ["node", "ls", "--format", "{{.Status}}"], environ)
    return result.stdout.split().count("Ready") if result.ok else 0


def start(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> Swarm:
    """Network, nodes, swarm init on node 1, join of the others as workers, node labels.
    Containers of an earlier run are replaced; their volumes (images) reused."""
    env = dict(os.environ if environ is None else environ)
    ensure_image(root, env)
    for number in range(1, NODES + 1):
        _docker(["rm", "--force", node_name(number)], env)
        if _docker(["volume", "inspect", volume_name(number)], env).ok:
            scrub = _docker(scrub_command(number)[1:], env, 120)
            checked(scrub, f"clearing {volume_name(number)}'s old swarm state", "")
    if not _docker(["network", "inspect", NETWORK], env).ok:
        made = _docker(["network", "create", "--label=ktrdr.sandbox.swarm-node=1", NETWORK], env)
        checked(made, f"creating the network {NETWORK}", "read docker's error above")
    state = Path(env.get("KTRDR_SWARM_DIR") or tempfile.gettempdir()) / f"{PREFIX}-daemon.json"
    state.write_text(daemon_json())
    started = time.monotonic()
    for number in range(1, NODES + 1):
        _start_node(number, state, env)
    nodes = tuple(Node(n, _address(n, env)) for n in range(1, NODES + 1))
    deadline = started + READY_TIMEOUT
    with futures.ThreadPoolExecutor(NODES) as pool:
        list(pool.map(lambda node: _wait_engine(node, env, deadline), nodes))
        list(pool.map(lambda node: reset_node(node, env), nodes))
    engines = time.monotonic() - started
    manager = nodes[0]
    swarm_started = time.monotonic()
    init = ["swarm", "init", f"--advertise-addr={manager.address}"]
    checked(_on(manager, init, env), "docker swarm init", f"`docker logs {manager.name}`")
    token = _on(manager, ["swarm", "join-token", "--quiet", "worker"], env)
    checked(token, "reading the join token", "")
    join = ["swarm", "join", f"--token={token.stdout.strip()}", f"{manager.address}:2377"]
    with futures.ThreadPoolExecutor(NODES) as pool:
        joined = list(pool.map(lambda node: _on(node, join, env), nodes[1:]))
    for node, result in zip(nodes[1:], joined, strict=True):
        checked(result, f"{node.name} joining the swarm", f"`docker logs {node.name}`")
    while _ready_nodes(manager, env) < NODES:
        if time.monotonic() > swarm_started + READY_TIMEOUT:
            raise SandboxError(
                f"the swarm has {_ready_nodes(manager, env)} of {NODES} nodes Ready after "
                f"{READY_TIMEOUT:.0f}s: `DOCKER_HOST={manager.docker_host} docker node ls`",
                Exit.NO_ENGINE,
            )
        time.sleep(POLL)
    swarm_seconds = time.monotonic() - swarm_started
    for node in nodes:
        for label in LABELS.get(node.number, ()):
            update = ["node", "update", f"--label-add={label}", node.name]
            checked(_on(manager, update, env), f"labelling {node.name}", "")
    return Swarm(nodes, engines, swarm_seconds)


def running(environ: Mapping[str, str] | None = None) -> tuple[Node, ...]:
    """The nodes of a swarm started earlier (no waiting); empty when there is none."""
    env = dict(os.environ if environ is None else environ)
    found = []
    for number in range(1, NODES + 1):
        if _docker(["container", "inspect", node_name(number)], env).ok:
            found.append(Node(number, _address(number, env)))
    return tuple(found)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm-nodes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("start", help="network, three nodes, swarm init/join, node labels")
    down = sub.add_parser("stop", help="remove the nodes, their volumes and the network")
    down.add_argument("--keep-images", action="store_true", help="keep the nodes' volumes")
    sub.add_parser("status", help="the nodes and their engine addresses")
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        if args.action == "start":
            swarm = start(ROOT, env)
            print(
                f"swarm up: engines answered {swarm.seconds_to_engines:.1f}s after docker run, "
                f"{len(swarm.nodes)} nodes Ready {swarm.seconds_to_swarm:.1f}s after swarm init"
            )
            print(f"DOCKER_HOST={swarm.manager.docker_host}")
        elif args.action == "stop":
            removed = stop(env, keep_images=args.keep_images)
            print("removed " + ", ".join(removed) if removed else "nothing to remove")
        else:
            for node in running(env):
                print(f"{node.name}: {node.docker_host}")
    except SandboxError as error:
        if error.details:
            print(error.details, file=sys.stderr)
        print(f"swarm-nodes: {error.message}", file=sys.stderr)
        return int(error.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
