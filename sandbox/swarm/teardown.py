"""`inv down` of a swarm slot: the stack removed, then its database volume on its node."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from sandbox import compose, runner, slots, stack
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.remote import codesync
from sandbox.runner import Result, display
from sandbox.settings import CLI_TIMEOUT, LOCK_WAIT
from sandbox.swarm import stackfile
from sandbox.swarm.cluster import (
    FINAL_STATES,
    Node,
    labelled_engines,
    nodes,
    tasks_of_service,
    wait_for,
)
from sandbox.swarm.deploy import DEPLOY_TIMEOUT
from sandbox.swarm.record import Record, record_path, stack_dir, stack_document
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
        slots.db_volume(stack_name),
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
            _remove_volumes(record, environ, image)
            record_path(target.root, target.slot).unlink(missing_ok=True)
            shutil.rmtree(stack_dir(target.root, target.slot), ignore_errors=True)
            stack.forget(target, [])  # its override, secrets, and the checkout's .env.sandbox
    return cmd


def _remove_volumes(record: Record, environ: Mapping[str, str], image: str) -> None:
    """The database volume on its node, and a --source checkout's copies on the shared nodes
    (only there when this tool could reach them)."""
    env = record.env(environ)
    known = nodes(env)
    engines = db_node_engines(known, record, environ)
    if engines is not None:
        for node_env in engines:
            _remove_volume_on(node_env, slots.db_volume(record.stack))
    else:
        _remove_volume(record.stack, image, env)
    shared = labelled_engines(known, stackfile.SHARED_LABEL, (record.address, env), environ)
    for _, node_env in shared or ():
        _remove_volume_on(node_env, codesync.volume_name(record.stack))


def db_node_engines(
    known: Mapping[str, Node], record: Record, environ: Mapping[str, str]
) -> list[dict[str, str]] | None:
    """The engines of every db node this machine can reach: the manager's own (the slot's
    record), the others through KTRDR_SWARM_NODE_ENGINE; None when one of them is out of
    reach (then a swarm job removes the volume)."""
    manager = (record.address, record.env(environ))
    found = labelled_engines(known, stackfile.DB_LABEL, manager, environ)
    return None if found is None else [env for _, env in found]


def _remove_volume_on(env: Mapping[str, str], volume: str) -> None:
    """`docker volume rm` on one node; the volume is busy until the database's container is
    gone (its stop grace period)."""
    last: list[Result] = []

    def removed() -> bool:
        last[:] = [
            runner.run(["docker", "volume", "rm", volume], env=dict(env), timeout=CLI_TIMEOUT)
        ]
        return last[0].ok or "no such volume" in last[0].stderr.lower()

    wait_for(
        removed,
        DOWN_WAIT,
        lambda: SandboxError(
            f"removing {volume} failed: {last[0].tail(1)}", Exit.COMMAND, details=last[0].tail(5)
        ),
    )


def _app_image(root: Path, record: Record) -> str:
    """The app image the slot ran, as the nodes know it (the registry's name)."""
    try:
        return str((stack_document(root, record.slot) or {})["services"]["backend"]["image"])
    except (KeyError, TypeError):
        return registry_ref(
            record.registry, compose.image_settings(root).get("KTRDR_APP_IMAGE", "")
        )


def _wait_gone(stack_name: str, env: Mapping[str, str]) -> None:
    """Services go at once; their containers and the stack's network take a few seconds
    (stop_grace_period) on each node: wait for the network, the last thing swarm removes."""
    network = f"{stack_name}_default"
    inspect = ["docker", "network", "inspect", network]
    wait_for(
        lambda: not runner.run(inspect, env=dict(env), timeout=CLI_TIMEOUT).ok,
        DOWN_WAIT,
        lambda: SandboxError(
            f"{network} is still there {DOWN_WAIT:.0f}s after `docker stack rm`: run `inv "
            f"down` again, or `docker network rm {network}` on the manager",
            Exit.COMMAND,
        ),
    )


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

    def finished() -> bool:
        states = tasks_of_service(name, env)
        if states and any(s != "complete" for s in states if s in FINAL_STATES):
            raise SandboxError(
                f"removing {stack_name}_db-data failed on a node ({', '.join(states)}): "
                f"`docker service ps {name} --no-trunc` says why",
                Exit.COMMAND,
            )
        return bool(states) and all(s in FINAL_STATES for s in states)

    try:
        wait_for(
            finished,
            DOWN_WAIT + 30,
            lambda: SandboxError(
                f"removing {stack_name}_db-data did not finish: `docker service ps {name}`",
                Exit.COMMAND,
            ),
        )
    finally:
        runner.run(["docker", "service", "rm", name], env=dict(env), timeout=CLI_TIMEOUT)
