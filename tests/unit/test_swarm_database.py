"""Snapshots of a swarm slot, without a swarm: the database opened on its node, every command a
`docker exec` there, and what the slot runs read from its stack file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandbox import runner
from sandbox.compose import Target
from sandbox.docker import APP_LABEL, SOURCE_LABEL
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.swarm import database
from sandbox.swarm import record as swarm_record

RECORD = swarm_record.Record(2, "tcp://10.0.0.1:2375", "reg:5000", "10.0.0.1")
NODE_ENV = {"DOCKER_HOST": "tcp://10.0.0.1:2375"}


def test_the_database_is_opened_on_its_node_and_asked_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(database, "exec_target", lambda rec, service, env: (NODE_ENV, "db1"))

    def execute(cmd: Sequence[str], **options: Any) -> Result:
        ran.append((list(cmd), options["env"]))
        return Result(tuple(cmd), 0, "accepting connections\n")

    monkeypatch.setattr(runner, "execute", execute)
    db = database.opener(RECORD, {})(Target(2, tmp_path, {}), ["docker", "compose"], {})

    assert (db.container, dict(db.env)) == ("db1", NODE_ENV)
    assert ran == [
        (["docker", "exec", "db1", "pg_isready", "-U", "ktrdr", "-d", "ktrdr"], NODE_ENV)
    ]


def test_a_slot_not_running_on_the_swarm_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_running(rec: object, service: str, env: object) -> tuple[dict[str, str], str]:
        raise SandboxError("db of slot 2 is not running (`inv status --slot=2`)", Exit.USAGE)

    monkeypatch.setattr(database, "exec_target", not_running)
    with pytest.raises(SandboxError) as raised:
        database.opener(RECORD, {})(Target(2, tmp_path, {}), [], {})

    assert raised.value.code is Exit.USAGE
    assert raised.value.message.startswith("slot 2's database is not reachable on the swarm")


def test_what_the_slot_runs_is_read_from_its_stack_file(tmp_path: Path) -> None:
    checkout = tmp_path / "ktrdr"
    versions = checkout / "alembic" / "versions"
    versions.mkdir(parents=True)
    (versions / "a1_first.py").write_text('revision = "a1"\ndown_revision = None\n')
    labels = {APP_LABEL: "ktrdr", SOURCE_LABEL: str(checkout)}
    stack_dir = swarm_record.stack_dir(tmp_path, 2)
    stack_dir.mkdir(parents=True)
    document = {"services": {"backend": {"labels": labels}}}
    (stack_dir / swarm_record.STACK_FILE).write_text(json.dumps(document))

    assert database.running_app(tmp_path, 2) == ("ktrdr", ["a1"])
    assert database.running_app(tmp_path, 3) == ("reference", None)
