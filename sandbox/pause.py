"""Paused slots: an idle slot frozen so that it costs no CPU, and thawed again.

`docker pause` freezes a container's processes with the cgroup freezer: they use no CPU at all
(no healthcheck runs, no timer fires), keep their memory and open connections, and carry on
where they stopped after `docker unpause`. An idle KTRDR slot uses ~1.6 CPU-seconds a minute by
itself (uvicorn's own loop in five processes, the workers' health checks, the trace exporters);
paused, none.

Containers are paused by id, not through Compose: no compose file or override is needed, so it
works alike on a remote engine. Another checkout's slot is refused as `inv up` and `inv down`
refuse it (frozen, its user's app stops answering); an orphan's is not. (`docker compose up`
refuses a paused container, so `inv up` thaws a paused slot first: `thawed`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence

from sandbox import docker, lock, ownership, runner
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.settings import ENGINE_QUERY_TIMEOUT

PAUSED = "paused"


def pause_command(names: Sequence[str]) -> list[str]:
    return ["docker", "pause", *names]


def unpause_command(names: Sequence[str]) -> list[str]:
    return ["docker", "unpause", *names]


@dataclasses.dataclass(frozen=True)
class Change:
    """What `pause` or `resume` did to one slot: the containers it changed, and how many of
    the slot's containers were already that way."""

    slot: int
    changed: tuple[str, ...]
    already: int

    def describe(self, verb: str) -> str:
        """ "slot 3: paused 9 containers" or "slot 3: already paused (9 containers)"."""
        if not self.changed:
            return f"slot {self.slot}: already {verb} ({self.already} containers)"
        return f"slot {self.slot}: {verb} {len(self.changed)} containers"


def _own(target: Target, environ: Mapping[str, str]) -> list[docker.Container]:
    found = [c for c in docker.containers(environ) if c.project == target.project]
    if not found:
        raise SandboxError(
            f"slot {target.slot} has no containers: nothing to pause or resume "
            f"(`inv up --slot={target.slot}` starts it)",
            Exit.USAGE,
        )
    refuse_others(target, found)
    return found


def refuse_others(target: Target, own: Sequence[docker.Container]) -> None:
    """SandboxError(OTHER_CHECKOUT) when the slot's containers `own` were started from another
    checkout that still exists: pausing or thawing them is that checkout's to do."""
    elsewhere = ownership.other_checkout(target.root, own)
    if elsewhere is not None and not elsewhere.gone:
        raise ownership.other_checkout_error(target, elsewhere)


def _run(cmd: list[str], environ: Mapping[str, str]) -> None:
    runner.run(
        cmd,
        env=dict(environ),
        timeout=ENGINE_QUERY_TIMEOUT,
        check=f"`{cmd[0]} {cmd[1]}` failed: `docker ps --all` shows the containers' states",
    )


def pause(target: Target, environ: Mapping[str, str]) -> Change:
    """Freeze every running container of the slot. A slot with a container neither running
    nor paused (exited, restarting) is refused: paused, it would look idle while broken.

    Under the slot's lock, not waiting: a restore, snapshot or clone at work there would freeze
    with its `docker exec` in the database, and the engine then hangs on that container (its
    inspect, exec and unpause wait for the stuck exec) until the freezer is thawed by hand.
    `resume` takes no lock: it is how a slot paused anyway is thawed."""
    with lock.slot_lock(target.slot, lock_dir=lock.default_lock_dir(environ)):
        return _pause(target, environ)


def _pause(target: Target, environ: Mapping[str, str]) -> Change:
    own = _own(target, environ)
    broken = sorted(c.name for c in own if c.state not in ("running", PAUSED))
    if broken:
        raise SandboxError(
            f"slot {target.slot} is not all running ({', '.join(broken)}): `inv status` says "
            f"why; `inv up --slot={target.slot}` mends it, `inv down --slot={target.slot}` "
            "stops it for good",
            Exit.FAILED,
        )
    running = sorted(c.name for c in own if c.state == "running")
    if running:
        _run(pause_command(running), environ)
    return Change(target.slot, tuple(running), len(own) - len(running))


def resume(target: Target, environ: Mapping[str, str]) -> Change:
    """Thaw every paused container of the slot; one with none paused is left as it is."""
    own = _own(target, environ)
    paused = sorted(c.name for c in own if c.state == PAUSED)
    if paused:
        _run(unpause_command(paused), environ)
    return Change(target.slot, tuple(paused), len(own) - len(paused))


def thawed(
    containers: Sequence[docker.Container],
    projects: Collection[str],
    environ: Mapping[str, str],
    on_thaw: Callable[[str, int], None] | None = None,
) -> list[docker.Container]:
    """`containers` with every paused one of `projects` unpaused (and listed as running):
    `inv up`, `inv verify` and the MCP tools work on a paused slot as on a running one.
    `on_thaw(project, count)` hears each project thawed. No engine call when none is paused."""
    paused = [c for c in containers if c.project in projects and c.state == PAUSED]
    if not paused:
        return list(containers)
    _run(unpause_command(sorted(c.name for c in paused)), environ)
    for project in sorted({c.project for c in paused}):
        if on_thaw is not None:
            on_thaw(project, sum(c.project == project for c in paused))
    thawed_ids = {c.id for c in paused}
    return [
        dataclasses.replace(c, state="running") if c.id in thawed_ids else c for c in containers
    ]


def thaw_slot(
    target: Target,
    containers: Sequence[docker.Container],
    environ: Mapping[str, str],
    on_step: Callable[[str, str], None] | None = None,
) -> list[docker.Container]:
    """`thawed` for `inv up`: the slot's paused containers unpaused before Compose runs (it
    refuses to start a paused container), said as a step."""

    def said(project: str, count: int) -> None:
        if on_step is not None:
            on_step("resumed", f"slot {target.slot} was paused: {count} containers thawed")

    return thawed(containers, {target.project}, environ, said)
