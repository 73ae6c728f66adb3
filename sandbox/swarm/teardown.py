"""`inv down` of a swarm slot: the stack removed, then its database volume on its node."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from sandbox import (
    apps,
    compose,
    runner,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.runner import display
from sandbox.settings import CLI_TIMEOUT, LOCK_WAIT
from sandbox.swarm import stackfile
from sandbox.swarm.cluster import (
    FINAL_STATES,
    NODE_ENGINE_VARIABLE,
    POLL,
    Node,
    node_engine,
    nodes,
    tasks_of_service,
)
from sandbox.swarm.deploy import DEPLOY_TIMEOUT
from sandbox.swarm.record import Record, record_path, stack_dir
from sandbox.swarm.registry import registry_ref

DOWN_WAIT = 60.0
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
