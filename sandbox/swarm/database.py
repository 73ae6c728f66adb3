"""`inv snapshot` and `inv restore` of a swarm slot: its database reached on the node that runs it.

The snapshot code (sandbox/snapshots/) works on a `SlotDatabase`: commands in the db container
and `docker cp` in and out of it. On one engine those go through `docker compose exec`; a swarm
slot's db task runs on the node labelled for the databases, whose engine the manager's API does
not reach for `exec` or `cp`. So the database is opened on that node's engine (the manager's
own, or through KTRDR_SWARM_NODE_ENGINE), and every command is a `docker exec` there. The dump,
the side database, the swap and the recovery of an interrupted restore are then the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import apps, runner
from sandbox.compose import Target
from sandbox.docker import APP_LABEL, SOURCE_LABEL
from sandbox.errors import SandboxError
from sandbox.runner import Result
from sandbox.snapshots.database import COMMAND_TIMEOUT, SlotDatabase, accepting
from sandbox.snapshots.versions import alembic_chain
from sandbox.swarm.access import exec_target
from sandbox.swarm.record import Record, stack_document

Opener = Callable[[Target, Sequence[str], Mapping[str, str]], SlotDatabase]


@dataclass(frozen=True)
class NodeDatabase(SlotDatabase):
    """The slot's db container on its node: `env` reaches that node's engine, which runs each
    command (`docker exec`) and each copy (`docker cp`, SlotDatabase's own)."""

    def exec(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        return runner.run(exec_command(self.container, args), env=self.env, timeout=timeout)


def exec_command(container: str, args: Sequence[str]) -> list[str]:
    return ["docker", "exec", container, *args]


def opener(record: Record, environ: Mapping[str, str]) -> Opener:
    """What the snapshot code calls instead of `open_database` for this swarm slot."""

    def open_on_node(
        target: Target, compose_cmd: Sequence[str], env: Mapping[str, str]
    ) -> SlotDatabase:
        try:
            node_env, container = exec_target(record, "db", environ)
        except SandboxError as error:
            raise SandboxError(
                f"slot {target.slot}'s database is not reachable on the swarm ({error.message}): "
                f"`inv status --slot={target.slot}`",
                error.code,
            ) from None
        db = NodeDatabase(target, (), node_env, container)
        return accepting(db, f"inv up --slot={target.slot} --swarm")

    return open_on_node


def running_app(root: Path, slot: int) -> tuple[str, list[str] | None]:
    """What the swarm slot runs, from the stack file it was deployed with: its app kind, and
    its checkout's migration chain when it runs one (for restore's checks)."""
    document = stack_document(root, slot) or {}
    labels = document.get("services", {}).get("backend", {}).get("labels", {})
    app = str(labels.get(APP_LABEL) or apps.REFERENCE.name)
    source = str(labels.get(SOURCE_LABEL) or "")
    versions = Path(source) / "alembic" / "versions" if source.startswith("/") else None
    return app, alembic_chain(versions) if versions and versions.is_dir() else None
