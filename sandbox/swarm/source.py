"""A `--source` checkout on a swarm slot: its code on every node that may run the app.

The app services bind the checkout's mounts, so the stack file pins them to the nodes labelled
`ktrdr.sandbox.shared=true` (stackfile.py). The checkout is not on those nodes: it is copied
there by the remote engine's copy mechanism (sandbox/remote/codesync.py), into the slot's source
volume `ktrdr-sandbox-N_source` on each such node, and the services bind that volume's
directory, as on one remote engine. The stack names the same volume, so swarm uses the copy
the tool made rather than an empty one. The helper container that writes the copy runs the
image the backend runs, pulled from the in-swarm registry by the node itself.

Each node's engine is reached as `exec` reaches it: the manager's own, the others through
KTRDR_SWARM_NODE_ENGINE. The migration then runs in the backend's task, on its node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sandbox import apps, runner
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.remote import codesync
from sandbox.runner import Result
from sandbox.settings import CLI_TIMEOUT
from sandbox.swarm import stackfile
from sandbox.swarm.access import exec_target
from sandbox.swarm.cluster import NODE_ENGINE_VARIABLE, Node, labelled_engines
from sandbox.swarm.record import Record

PULL_TIMEOUT = 1800.0
MIGRATE_TIMEOUT = 600.0
# Words of gatechecks.migration_outcome's "not yet": the backend's task has no container yet.
NOT_RUNNING = "is not running"

Engines = list[tuple[Node, dict[str, str]]]


def shared_engines(
    known: Mapping[str, Node], manager: tuple[str, Mapping[str, str]], environ: Mapping[str, str]
) -> Engines:
    """The engine of every node that may run the app services (the copy goes to each), or
    one line saying how to reach them."""
    found = labelled_engines(known, stackfile.SHARED_LABEL, manager, environ)
    if found is None:
        raise SandboxError(
            f"--source on a swarm copies the checkout to every node labelled "
            f"{stackfile.SHARED_LABEL}=true, and this tool cannot reach the engine of one that "
            f"is not the manager: set {NODE_ENGINE_VARIABLE} (e.g. ssh://admin@{{address}})",
            Exit.USAGE,
        )
    return found


def pull_command(image: str) -> list[str]:
    return ["docker", "pull", "--quiet", image]


def ensure_pulled(image: str, env: Mapping[str, str]) -> None:
    """`image` on the node whose engine `env` names: pulled from the registry when missing."""
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", image]
    if runner.run(inspect, env=dict(env), timeout=CLI_TIMEOUT).ok:
        return
    runner.run(
        pull_command(image),
        env=dict(env),
        timeout=PULL_TIMEOUT,
        check=f"pulling {image} on a node failed: does its engine trust the registry?",
    )


def copy(
    target: Target,
    source: apps.Source,
    engines: Engines,
    helper: str,
    say: Callable[[str, str], None],
) -> str:
    """The checkout copied (what differs) into the slot's source volume on each node of
    `engines`; the volume's directory there, which the app services bind."""
    mountpoints = set()
    for node, env in engines:
        ensure_pulled(helper, env)
        synced = codesync.send(target, env, source, helper, create=True)
        say("source", synced.describe(f"{node.hostname} ({node.address})"))
        mountpoints.add(synced.volume.mountpoint)
    return one_mountpoint(mountpoints)


def one_mountpoint(found: set[str]) -> str:
    """The binds name one directory for every node: the nodes' Docker data roots must agree."""
    if len(found) != 1:
        raise SandboxError(
            f"the source volume lives at different paths on the nodes ({', '.join(sorted(found))}):"
            " give the nodes labelled for the shared directory the same Docker data-root",
            Exit.USAGE,
        )
    return next(iter(found))


def migrate_command(container: str, migration: apps.Migration) -> list[str]:
    return ["docker", "exec", container, *migration.command]


def migrator(
    record: Record, migration: apps.Migration, environ: Mapping[str, str]
) -> Callable[[Sequence[str], Mapping[str, str]], Result]:
    """The gate's `migrate` probe on a swarm: the migration in the service's task, on the node
    that runs it (the Compose command the gate builds is not used)."""

    def run(cmd: Sequence[str], env: Mapping[str, str]) -> Result:
        try:
            node_env, container = exec_target(record, migration.service, environ)
        except SandboxError as error:
            return Result(tuple(cmd), 1, "", f"{migration.service} {NOT_RUNNING}: {error.message}")
        return runner.run(
            migrate_command(container, migration), env=node_env, timeout=MIGRATE_TIMEOUT
        )

    return run
