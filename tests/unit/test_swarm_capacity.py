"""`--slot=auto` on a swarm, without a swarm: the room the shared nodes give, the slots the swarm
runs, which slot is free."""

from __future__ import annotations

import json

import pytest

from sandbox import slots
from sandbox.errors import SandboxError
from sandbox.swarm import capacity, stackfile

GIB = 2**30


def node(hostname: str, memory: int, state: str = "ready", shared: bool = True) -> str:
    labels = {stackfile.SHARED_LABEL: "true"} if shared else None
    row = {"hostname": hostname, "state": state, "labels": labels, "memory": memory}
    return json.dumps(row)


def test_room_is_the_memory_of_the_ready_shared_nodes() -> None:
    text = "\n".join(
        [
            node("n1", 8 * GIB, shared=False),  # the db node: not counted
            node("n2", 4 * GIB),
            node("n3", 2 * GIB),
            node("n4", 64 * GIB, state="down"),
        ]
    )
    assert capacity.shared_memory(text) == 6 * GIB


def test_the_swarm_is_full_when_its_deployed_slots_fill_the_room() -> None:
    room = capacity.Room(6 * GIB, GIB, frozenset({1, 2}))
    assert (room.holds, room.full) == (6, False)
    full = capacity.Room(3 * GIB, 2 * GIB, frozenset({4}))
    assert full.full
    assert full.describe() == (
        "1 of 1 slots deployed (3.0 GiB on the shared nodes, 2048 MiB a slot: "
        "KTRDR_SWARM_SLOT_MEMORY)"
    )


def test_only_the_tools_stacks_count_as_slots() -> None:
    listing = "ktrdr-sandbox-1\nktrdr-sandbox-10\nktrdr-sandbox-registry\nother\nktrdr-sandbox-x\n"
    assert capacity.deployed_slots(listing) == frozenset({1, 10})


def test_a_slot_is_free_unless_deployed_or_its_ports_are_published() -> None:
    api_3 = slots.ports(3)["KTRDR_API_PORT"]
    free = capacity.usable(frozenset({1}), {api_3: "someone_backend"})
    assert [s for s in range(1, 5) if free(s)] == [2, 4]


def test_the_slots_memory_is_a_number_of_mib() -> None:
    assert capacity.slot_memory({}) == 1024 * 2**20
    assert capacity.slot_memory({capacity.MEMORY_VARIABLE: "512"}) == 512 * 2**20
    with pytest.raises(SandboxError, match="number of MiB"):
        capacity.slot_memory({capacity.MEMORY_VARIABLE: "1G"})
