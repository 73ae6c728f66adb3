"""`--slot=auto`: the lowest free slot, chosen under a machine-wide lock.

A slot is free when the engine has no container of its project, no volume of its project (its
database would be reused), and no other `inv` holds its slot lock. Slot 0 (KTRDR's standard
ports) is picked only when the caller asks for it with `lowest=0`.

The protocol that keeps two concurrent `inv new` / `inv up --slot=auto` off the same slot:

1. take `lock.pick_lock` (`pick.lock` in the slot locks' directory);
2. look at the engine (containers, volumes) and at the slot locks, pick the lowest free slot;
3. take that slot's own lock (`sandbox.lock.slot_lock`), then release the pick lock;
4. keep the slot lock until `docker compose up -d` has created the containers.

From step 3 on, any other picker sees the slot as taken: by its lock until step 4 ends, by its
containers after. A picker never waits for a slot lock (it would skip that slot anyway), so
holding the pick lock is short. `claim_free_slot` does steps 1-3 and yields the slot with its
lock held; `sandbox.stack`'s own `slot_lock` inside the `with` block re-enters that lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import docker, engine, lock, ports, runner, slots
from sandbox.compose import DEFAULT_BIND_ADDR
from sandbox.errors import Exit, SandboxError
from sandbox.settings import ENGINE_QUERY_TIMEOUT

PICK_WAIT = 60.0  # seconds a picker waits for another picker (which holds the lock briefly)
AUTO_SLOTS = range(1, 11)

# One JSON object a line: label values are picked out by the template rather than parsed from
# the comma-joined `.Labels` column.
VOLUME_FORMAT = (
    '{"Name":{{json .Name}},'
    f'"Project":{{{{json (.Label "{docker.PROJECT_LABEL}")}}}},'
    f'"Volume":{{{{json (.Label "{docker.VOLUME_LABEL}")}}}}}}'
)


@dataclass(frozen=True)
class Volume:
    name: str
    project: str  # the Compose project that made it
    volume: str  # its key in the compose file, e.g. db-data

    @property
    def slot(self) -> int | None:
        return slots.slot_of_project(self.project)


def db_volume_name(slot: int) -> str:
    return slots.db_volume(slots.project_name(slot))


def volume_ls_command() -> list[str]:
    return [
        "docker",
        "volume",
        "ls",
        "--filter",
        f"label={docker.PROJECT_LABEL}",
        "--format",
        VOLUME_FORMAT,
    ]


def parse_volumes(output: str) -> list[Volume]:
    """`volume_ls_command()` output, one JSON object a line."""
    found = []
    for line in output.splitlines():
        if line.strip():
            row = json.loads(line)
            found.append(Volume(row.get("Name", ""), row.get("Project", ""), row.get("Volume", "")))
    return found


def sandbox_volumes(environ: Mapping[str, str]) -> list[Volume]:
    """Every volume a sandbox slot's Compose project made, in one `docker volume ls`."""
    result = runner.run(volume_ls_command(), env=dict(environ), timeout=ENGINE_QUERY_TIMEOUT)
    if not result.ok:
        raise docker.engine_error(result)
    return [v for v in parse_volumes(result.stdout) if _volume_slot(v) is not None]


def volumes_by_slot(volumes: Sequence[Volume]) -> dict[int, list[str]]:
    """Volume names by slot, as `statusjson.document` takes them."""
    found: dict[int, list[str]] = {}
    for volume in volumes:
        slot = _volume_slot(volume)
        if slot is not None:
            found.setdefault(slot, []).append(volume.name)
    return found


def _volume_slot(volume: Volume) -> int | None:
    if volume.slot is not None:
        return volume.slot
    # A volume renamed into a slot's db name by hand still holds that slot's database.
    return next((s for s in slots.SLOTS if volume.name == db_volume_name(s)), None)


# ----------------------------------------------------------------------------- who holds what


@dataclass(frozen=True)
class Occupancy:
    """What the engine holds of one slot."""

    slot: int
    containers: int = 0
    running: int = 0
    volumes: tuple[str, ...] = ()
    checkouts: tuple[str, ...] = ()  # working dirs of the Compose project (label)
    locked: bool = False  # another `inv` holds the slot lock right now
    ports_taken: bool = False  # a program outside the slot's project holds one of its ports

    def describe(self) -> str:
        parts = []
        if self.containers:
            parts.append(f"{self.containers} containers ({self.running} running)")
        if self.volumes:
            parts.append(f"volume {', '.join(self.volumes)}")
        if self.locked:
            parts.append("an `inv` command working on it")
        if self.ports_taken:
            parts.append("its ports held by something else")
        return f"slot {self.slot}: {' and '.join(parts) or 'nothing'}"


def occupancy(
    containers: Sequence[docker.Container],
    volumes: Sequence[Volume],
    locked: frozenset[int] = frozenset(),
    ports_taken: frozenset[int] = frozenset(),
) -> dict[int, Occupancy]:
    """Every slot that has a container, a volume, a held lock or a port held by something
    else, by slot (pure)."""
    found: dict[int, dict[str, list[str]]] = {}

    def entry(slot: int) -> dict[str, list[str]]:
        return found.setdefault(slot, {"containers": [], "running": [], "volumes": [], "dirs": []})

    for container in containers:
        if container.slot is not None:
            e = entry(container.slot)
            e["containers"].append(container.id)
            if container.running:
                e["running"].append(container.id)
            if container.working_dir and container.working_dir not in e["dirs"]:
                e["dirs"].append(container.working_dir)
    for volume in volumes:
        slot = _volume_slot(volume)
        if slot is not None:
            entry(slot)["volumes"].append(volume.name)
    for slot in locked | ports_taken:
        entry(slot)
    return {
        slot: Occupancy(
            slot,
            containers=len(e["containers"]),
            running=len(e["running"]),
            volumes=tuple(sorted(e["volumes"])),
            checkouts=tuple(e["dirs"]),
            locked=slot in locked,
            ports_taken=slot in ports_taken,
        )
        for slot, e in sorted(found.items())
    }


def pick_free_slot(
    containers: Sequence[docker.Container],
    volumes: Sequence[Volume],
    lowest: int = 1,
    locked: frozenset[int] = frozenset(),
    ports_taken: frozenset[int] = frozenset(),
) -> int:
    """The lowest slot from `lowest` to 10 with no container, no volume, no held lock and no
    port known to be held elsewhere; SandboxError naming what holds every slot when there is
    none (pure)."""
    if lowest not in slots.SLOTS:
        raise SandboxError(f"lowest slot {lowest} is outside 0-10", Exit.USAGE)
    held = occupancy(containers, volumes, locked, ports_taken)
    for slot in range(lowest, max(slots.SLOTS) + 1):
        if slot not in held:
            return slot
    taken = "; ".join(held[s].describe() for s in range(lowest, max(slots.SLOTS) + 1))
    raise SandboxError(
        f"no free slot in {lowest}-{max(slots.SLOTS)} ({taken}): free one with `inv done "
        "BRANCH` or `inv down --slot=N --volumes`, then re-run",
        Exit.NO_SLOT,
    )


# ----------------------------------------------------------------------------- locking


# ----------------------------------------------------------------------------- the protocol

Survey = Callable[[], tuple[Sequence[docker.Container], Sequence[Volume]]]


@dataclass(frozen=True)
class Claim:
    """How to claim: from which slot up, where the locks live, how to look at the engine."""

    lowest: int = 1
    lock_dir: Path | None = None
    wait: float = PICK_WAIT
    survey: Survey | None = None  # default: one `docker ps` and one `docker volume ls`
    # Whether a slot's host ports can be bound now (default: `ports_free`); a slot with no
    # container can still have its ports held by another program, and would fail preflight.
    ports_free: Callable[[int], bool] | None = None
    on_busy: Callable[[str], None] | None = field(default=None, compare=False)


def ports_free(slot: int, bind_addr: str = DEFAULT_BIND_ADDR) -> bool:
    """Whether every host port of `slot` can be bound now (preflight's probe). Only asked of a
    slot with no container and no volume, whose ports nothing of its own holds."""
    addresses = ports.probe_addresses(bind_addr)
    return all(
        ports.can_bind(host, port) for port in slots.ports(slot).values() for host in addresses
    )


def default_ports_free(environ: Mapping[str, str], bind_addr: str) -> Callable[[int], bool]:
    """`ports_free` on this machine. A remote engine's ports are on its host, where only its
    containers (the survey) are seen from here; whatever else holds one there is found by
    preflight's port probe on that host, which then refuses the slot."""
    if not engine.detect(environ).local:
        return lambda slot: True
    return lambda slot: ports_free(slot, bind_addr)


def engine_survey(environ: Mapping[str, str]) -> Survey:
    return lambda: (docker.sandbox_containers(environ), sandbox_volumes(environ))


@contextmanager
def claim_free_slot(environ: Mapping[str, str], claim: Claim | None = None) -> Iterator[int]:
    """Steps 1-3 of the protocol: yields the lowest free slot with its slot lock held; the
    caller runs `compose up -d` (step 4) inside the `with` block."""
    claim = claim or Claim()
    directory = claim.lock_dir if claim.lock_dir is not None else lock.default_lock_dir(environ)
    survey = claim.survey or engine_survey(environ)
    with ExitStack() as held:
        with lock.pick_lock(environ, wait=claim.wait, lock_dir=directory, on_busy=claim.on_busy):
            containers, volumes = survey()
            busy = lock.held_slots(directory)
            bind = environ.get("KTRDR_BIND_ADDR") or DEFAULT_BIND_ADDR
            ports_ok = claim.ports_free or default_ports_free(environ, bind)
            taken: frozenset[int] = frozenset()
            while True:
                slot = pick_free_slot(containers, volumes, claim.lowest, busy, taken)
                if not ports_ok(slot):
                    taken = taken | {slot}
                    continue
                try:
                    held.enter_context(lock.slot_lock(slot, lock_dir=directory))
                    break
                except SandboxError as exc:
                    # An explicit `inv up --slot=N` took it since the probe: try the next one.
                    # (An unwritable lock directory is LOCKED too: that one goes up.)
                    if exc.code != Exit.LOCKED or slot not in lock.held_slots(directory):
                        raise
                    busy = busy | {slot}
        yield slot


@contextmanager
def claim_named_slot(
    environ: Mapping[str, str], slot: int, claim: Claim | None = None
) -> Iterator[int]:
    """`claim_free_slot` for one slot the user named (`inv new --slot=N`): its lock taken
    without waiting, and refused (NO_SLOT) unless the engine holds nothing of it, since a new
    branch must not inherit another's containers or database."""
    claim = claim or Claim()
    directory = claim.lock_dir if claim.lock_dir is not None else lock.default_lock_dir(environ)
    survey = claim.survey or engine_survey(environ)
    with lock.slot_lock(slot, lock_dir=directory):
        containers, volumes = survey()
        held = occupancy(containers, volumes).get(slot)
        if held is not None:
            raise SandboxError(
                f"slot {slot} is not free ({held.describe()}): pass --slot=auto for the lowest "
                f"free one, or free it with `inv down --slot={slot} --volumes`",
                Exit.NO_SLOT,
            )
        yield slot


def claim_slot(
    environ: Mapping[str, str], slot: int | None, claim: Claim | None = None
) -> AbstractContextManager[int]:
    """`claim_free_slot` when `slot` is None (auto), else `claim_named_slot`."""
    if slot is None:
        return claim_free_slot(environ, claim)
    return claim_named_slot(environ, slot, claim)


def parse_choice(value: str | None) -> int | None:
    """`--slot=auto` (or no --slot) as None; a number as the slot (USAGE when it is not one)."""
    text = "auto" if value is None else value.strip()
    if text.lower() == "auto":
        return None
    if not text.lstrip("-").isdigit():
        raise SandboxError(
            f"--slot must be auto or a whole number from 0 to 10, not {text!r}", Exit.USAGE
        )
    return slots.parse_slot(text)
