"""`inv up --swarm --slot=auto`: the lowest free slot, while the swarm has room for one more.

Room: the app services (backend and workers, most of a slot's memory) run on the nodes labelled
for the shared directory, so those nodes' memory (`docker node inspect`, what each engine
reports) divided by what one slot takes is how many slots the swarm holds. One slot takes
KTRDR_SWARM_SLOT_MEMORY MiB (default 1024: ten real KTRDR slots were measured at about 8.5 GB
in all). A slot counts as deployed when the swarm has its stack, whoever deployed it.

Free: no stack of that slot on the swarm, none recorded by this checkout, none of its ports
published by another service, its lock not held; the pick then runs under the picker's
machine lock and holds the slot's lock (sandbox/picker.py), as on one engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sandbox import picker, runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.settings import CLI_TIMEOUT
from sandbox.swarm import stackfile
from sandbox.swarm.deploy import ports_elsewhere
from sandbox.swarm.record import recorded_slots

MEMORY_VARIABLE = "KTRDR_SWARM_SLOT_MEMORY"  # MiB one slot takes on the shared nodes
DEFAULT_SLOT_MEMORY = 1024
STACK_NAME = re.compile(rf"^{re.escape(slots.project_name(0)[:-1])}(\d+)$")
RESOURCES_FORMAT = (
    '{"hostname":{{json .Description.Hostname}},"state":{{json .Status.State}},'
    '"labels":{{json .Spec.Labels}},"memory":{{json .Description.Resources.MemoryBytes}}}'
)


@dataclass(frozen=True)
class Room:
    """How many slots the swarm holds, how many it runs, and from what."""

    memory: int  # bytes of the ready shared nodes
    per_slot: int  # bytes
    deployed: frozenset[int]

    @property
    def holds(self) -> int:
        return self.memory // self.per_slot

    @property
    def full(self) -> bool:
        return len(self.deployed) >= self.holds

    def describe(self) -> str:
        return (
            f"{len(self.deployed)} of {self.holds} slots deployed ({self.memory / 2**30:.1f} GiB "
            f"on the shared nodes, {self.per_slot // 2**20} MiB a slot: {MEMORY_VARIABLE})"
        )


def slot_memory(environ: Mapping[str, str]) -> int:
    raw = environ.get(MEMORY_VARIABLE, "").strip() or str(DEFAULT_SLOT_MEMORY)
    if not raw.isdigit() or int(raw) == 0:
        raise SandboxError(f"{MEMORY_VARIABLE} must be a number of MiB, not {raw!r}", Exit.USAGE)
    return int(raw) * 2**20


def shared_memory(text: str) -> int:
    """`docker node inspect --format RESOURCES_FORMAT`: the memory of the ready nodes
    labelled for the shared directory."""
    total = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        labels = row.get("labels") or {}
        if row.get("state") == "ready" and labels.get(stackfile.SHARED_LABEL) == "true":
            total += int(row.get("memory") or 0)
    return total


def deployed_slots(text: str) -> frozenset[int]:
    """`docker stack ls --format '{{.Name}}'`: the slots whose stacks the swarm runs."""
    found = (STACK_NAME.match(line.strip()) for line in text.splitlines())
    return frozenset(int(m.group(1)) for m in found if m)


def _ask(cmd: list[str], environ: Mapping[str, str], what: str) -> str:
    return runner.run(cmd, env=dict(environ), timeout=CLI_TIMEOUT, check=f"{what} failed").stdout


def room(environ: Mapping[str, str]) -> Room:
    ids = _ask(["docker", "node", "ls", "--quiet"], environ, "`docker node ls`").split()
    cmd = ["docker", "node", "inspect", "--format", RESOURCES_FORMAT, *ids]
    memory = shared_memory(_ask(cmd, environ, "`docker node inspect`"))
    stacks = _ask(["docker", "stack", "ls", "--format", "{{.Name}}"], environ, "`docker stack ls`")
    return Room(memory, slot_memory(environ), deployed_slots(stacks))


def usable(taken: frozenset[int], published: Mapping[int, str]) -> Callable[[int], bool]:
    """Whether a slot is free on the swarm: not deployed, none of its ports published."""
    return lambda slot: slot not in taken and not set(slots.ports(slot).values()) & set(published)


@contextmanager
def claim(
    root: Path, environ: Mapping[str, str], on_busy: Callable[[str], None] | None = None
) -> Iterator[int]:
    """The lowest free slot with its lock held, or NO_SLOT when the swarm is full."""
    found = room(environ)
    if found.full:
        raise SandboxError(
            f"the swarm has no room for another slot: {found.describe()}; take one down "
            "(`inv down --slot=N`) or add a node labelled for the shared directory",
            Exit.NO_SLOT,
        )
    taken = found.deployed | {r.slot for r in recorded_slots(root)}
    free = usable(frozenset(taken), ports_elsewhere(environ, ""))
    nothing: picker.Survey = lambda: ([], [])  # noqa: E731 - the swarm has no compose containers
    with picker.claim_free_slot(
        environ, picker.Claim(survey=nothing, ports_free=free, on_busy=on_busy)
    ) as slot:
        yield slot
