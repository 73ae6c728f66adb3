"""`inv down --volumes` of a swarm slot, without a swarm: the stack removed, the database volume
and the checkout's copies removed on their nodes, and the slot forgotten here as on one engine
(its record, its stack file, its override, the checkout's .env.sandbox)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandbox import checkouts, runner, slotfiles
from sandbox.compose import Target
from sandbox.docker import SOURCE_LABEL
from sandbox.runner import Result
from sandbox.swarm import cluster, stackfile, teardown
from sandbox.swarm import record as swarm_record

MANAGER = cluster.Node(
    "node-1", "10.0.0.1", "ready", {stackfile.DB_LABEL: "true", stackfile.SHARED_LABEL: "true"}
)


def test_down_with_volumes_removes_them_on_their_node_and_forgets_the_slot(
    target: Target, tmp_path: Path, lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "ktrdr"
    checkout.mkdir()
    (checkout / checkouts.ENV_SANDBOX).write_text(f"{checkouts.ENV_SANDBOX_HEADER} for slot 1\n")
    document = {"services": {"backend": {"labels": {SOURCE_LABEL: str(checkout)}}}}
    override = slotfiles.write_override(target.root, target.slot, document)
    record = swarm_record.Record(target.slot, "tcp://10.0.0.1:2375", "reg:5000", "10.0.0.1")
    swarm_record.write_record(target.root, record)
    stack_dir = swarm_record.stack_dir(target.root, target.slot)
    stack_dir.mkdir(parents=True)
    (stack_dir / swarm_record.STACK_FILE).write_text("{}")
    ran: list[list[str]] = []

    def execute(cmd: Sequence[str], **options: Any) -> Result:
        ran.append(list(cmd))
        gone = list(cmd[:3]) == ["docker", "network", "inspect"]  # the stack's network is gone
        return Result(tuple(cmd), 1 if gone else 0)

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(teardown, "nodes", lambda env: {MANAGER.hostname: MANAGER})

    teardown.down(target, {}, record, volumes=True)

    assert ["docker", "stack", "rm", "ktrdr-sandbox-1"] in ran
    removed = [cmd[-1] for cmd in ran if cmd[:3] == ["docker", "volume", "rm"]]
    assert removed == ["ktrdr-sandbox-1_db-data", "ktrdr-sandbox-1_source"]
    assert not (checkout / checkouts.ENV_SANDBOX).exists()
    assert not override.exists()
    assert swarm_record.read_record(target.root, target.slot) is None
    assert not stack_dir.exists()
