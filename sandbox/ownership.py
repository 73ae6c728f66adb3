"""Whose slot it is: the checkout that started its containers, and the one that made its
database (the volume's provenance labels). `up` refuses another checkout's slot; commands that
change or remove a slot's database refuse another checkout's database.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import compose, docker, runner, slots
from sandbox.docker import Container
from sandbox.errors import Exit, SandboxError
from sandbox.images import provenance
from sandbox.settings import ENGINE_QUERY_TIMEOUT
from sandbox.status import checkout_gone


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


@dataclass(frozen=True)
class Checkout:
    """The checkout a slot's containers were started from, when it is not this one."""

    path: str  # its directory; "?" when not recorded
    client: str = ""  # another client machine's host name; "" for this one (or not recorded)

    def __str__(self) -> str:
        return f"{self.client}:{self.path}" if self.client else self.path

    @property
    def gone(self) -> bool:
        """Deleted or moved, which orphans the slot: only a checkout on this machine can be
        looked at; another machine's may be there."""
        return not self.client and checkout_gone(self.path)


def other_checkout(
    target_root: Path, project_containers: Sequence[Container], client: str | None = None
) -> Checkout | None:
    """Where a container of this project was started from when that is another checkout, or
    None.

    A checkout is (client host name, path): two machines may have the same path, and on a
    remote engine their slots must not take each other over. Containers without the client
    label (started before it was recorded, or by plain Compose) compare by path alone.
    Containers in any state count: `compose up` here would take them over.
    """
    here = docker.client_name() if client is None else client
    for container in project_containers:
        if container.client and container.client != here:
            return Checkout(container.working_dir or "?", container.client)
        if container.working_dir and not _same_dir(container.working_dir, target_root):
            return Checkout(container.working_dir)
    return None


def other_checkout_error(target: compose.Target, elsewhere: Checkout) -> SandboxError:
    if elsewhere.gone:
        return SandboxError(
            f"slot {target.slot} is orphaned: it was started from {elsewhere}, which no "
            f"longer exists; `inv down --slot={target.slot}` (from here) removes its "
            "containers and keeps its database",
            Exit.OTHER_CHECKOUT,
        )
    return SandboxError(
        f"slot {target.slot} belongs to another checkout: {target.project} was started from "
        f"{elsewhere}; run `inv down --slot={target.slot}` in that checkout, "
        "or pick another slot",
        Exit.OTHER_CHECKOUT,
    )


def here(target: compose.Target) -> str:
    """This checkout, as a database volume's provenance names its owner."""
    return str(target.root.resolve())


def inspect_volume(
    target: compose.Target, environ: Mapping[str, str]
) -> provenance.VolumeInfo | None:
    """The slot's database volume as the engine has it, or None when there is none."""
    cmd = provenance.inspect_command(slots.db_volume(target.project))
    result = runner.run(cmd, env=dict(environ), timeout=ENGINE_QUERY_TIMEOUT)
    if result.ok:
        return provenance.parse_inspect(result.stdout)
    if "no such volume" in result.stderr.lower():
        return None
    raise docker.engine_error(result, environ)


def check_database_owner(
    target: compose.Target,
    environ: Mapping[str, str],
    containers: Sequence[Container],
    *,
    command: str,
    action: str,
    other_checkouts: bool,
) -> None:
    """Before a command that changes or removes slot `target`'s database (`down --volumes`,
    `restore`, `clone`): the same ownership `up` checks. The slot's containers started from
    another checkout, or its volume created by one (its provenance labels), refuse it in one
    line naming that checkout, `command` to run there and `command --other-checkouts` to
    `action` anyway; `other_checkouts` is that flag. A volume older than the labels, and no
    volume, pass (as `up` adopts them)."""
    if other_checkouts:
        return
    elsewhere = other_checkout(target.root, containers)
    owner = None if elsewhere is None else str(elsewhere)
    if owner is None:
        info = inspect_volume(target, environ)
        owner = provenance.foreign_owner(info, here(target), socket.gethostname())
    if owner is not None:
        raise provenance.others_database_error(target.slot, owner, command, action)
