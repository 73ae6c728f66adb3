"""A --source checkout on a swarm slot, without a swarm: which engines get the copy, the pull of
the helper image, one mountpoint for every node, the migration in the backend's task, and the
polling every swarm wait uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandbox import apps, gatechecks, runner
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.remote import codesync
from sandbox.runner import Result
from sandbox.swarm import cluster, deploy, stackfile
from sandbox.swarm import record as swarm_record
from sandbox.swarm import source as source_copy

MANAGER = cluster.Node("node-1", "10.0.0.1", "ready", {stackfile.DB_LABEL: "true"})
SHARED = cluster.Node("node-2", "10.0.0.2", "ready", {stackfile.SHARED_LABEL: "true"})
BOTH = cluster.Node(
    "node-3", "10.0.0.3", "ready", {stackfile.SHARED_LABEL: "true", stackfile.DB_LABEL: "true"}
)
KNOWN = {n.hostname: n for n in (MANAGER, SHARED, BOTH)}
MANAGER_ENV = {"DOCKER_HOST": "tcp://10.0.0.1:2375", "DOCKER_CONTEXT": "ignored", "PATH": "/bin"}
TEMPLATE = {cluster.NODE_ENGINE_VARIABLE: "tcp://{address}:2375"}


def test_every_labelled_node_is_reached_through_its_own_engine() -> None:
    found = cluster.labelled_engines(
        KNOWN, stackfile.SHARED_LABEL, ("10.0.0.1", MANAGER_ENV), TEMPLATE
    )

    assert found == [
        (SHARED, {"DOCKER_HOST": "tcp://10.0.0.2:2375", "PATH": "/bin"}),
        (BOTH, {"DOCKER_HOST": "tcp://10.0.0.3:2375", "PATH": "/bin"}),
    ]
    # The manager's own engine is the one the tool already talks to; without the template a
    # labelled node elsewhere is out of reach.
    db = stackfile.DB_LABEL
    only_db = {BOTH.hostname: BOTH, SHARED.hostname: SHARED}
    manager = ("10.0.0.3", MANAGER_ENV)
    assert cluster.labelled_engines(only_db, db, manager, {}) == [(BOTH, MANAGER_ENV)]
    assert cluster.labelled_engines(KNOWN, db, manager, {}) is None


def test_a_source_copy_to_nodes_out_of_reach_is_refused_with_what_to_set() -> None:
    with pytest.raises(SandboxError) as raised:
        source_copy.shared_engines(KNOWN, ("10.0.0.1", MANAGER_ENV), {})

    assert raised.value.code is Exit.USAGE
    assert cluster.NODE_ENGINE_VARIABLE in raised.value.message
    assert len(source_copy.shared_engines(KNOWN, ("10.0.0.1", MANAGER_ENV), TEMPLATE)) == 2


def target(tmp_path: Path) -> Target:
    return Target(slot=3, root=tmp_path, values={})


def test_the_checkout_goes_to_every_shared_node_and_the_helper_is_pulled_where_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[tuple[str, list[str]]] = []

    def execute(cmd: Sequence[str], **options: Any) -> Result:
        host = options["env"]["DOCKER_HOST"]
        commands.append((host, list(cmd)))
        missing = cmd[1:3] == ["image", "inspect"] and host.endswith("10.0.0.2:2375")
        return Result(tuple(cmd), 1 if missing else 0, "", "No such image" if missing else "")

    sent: list[str] = []

    def send(
        tgt: Target, env: dict[str, str], src: apps.Source, image: str, **kw: Any
    ) -> codesync.Synced:
        sent.append(env["DOCKER_HOST"])
        assert (image, kw) == ("reg:5000/deps:1", {"create": True})
        volume = codesync.Volume("ktrdr-sandbox-3_source", "/var/lib/docker/volumes/v/_data")
        return codesync.Synced(volume, 2, 0, 10, 0.1, codesync.Contents({}, frozenset()))

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(codesync, "send", send)
    engines = source_copy.shared_engines(KNOWN, ("10.0.0.1", MANAGER_ENV), TEMPLATE)
    said: list[str] = []
    checkout = apps.Source(apps.REFERENCE, tmp_path)

    found = source_copy.copy(
        target(tmp_path), checkout, engines, "reg:5000/deps:1", lambda n, d: said.append(d)
    )

    assert found == "/var/lib/docker/volumes/v/_data"
    assert sent == ["tcp://10.0.0.2:2375", "tcp://10.0.0.3:2375"]
    pulls = [(host, cmd) for host, cmd in commands if cmd[:2] == ["docker", "pull"]]
    assert pulls == [("tcp://10.0.0.2:2375", source_copy.pull_command("reg:5000/deps:1"))]
    assert [d.split(": ")[1] for d in said] == [
        "ktrdr-sandbox-3_source on node-2 (10.0.0.2), 0.1 s",
        "ktrdr-sandbox-3_source on node-3 (10.0.0.3), 0.1 s",
    ]


def test_nodes_whose_volumes_live_elsewhere_are_refused() -> None:
    assert source_copy.one_mountpoint({"/a"}) == "/a"
    with pytest.raises(SandboxError, match="data-root"):
        source_copy.one_mountpoint({"/a", "/b"})


def test_the_migration_runs_in_the_backend_task_on_its_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = swarm_record.Record(3, "tcp://10.0.0.1:2375", "reg:5000", "10.0.0.1")
    migration = apps.Migration("backend", ("alembic", "upgrade", "head"), "alembic upgrade head")
    ran: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(
        source_copy, "exec_target", lambda rec, service, environ: ({"DOCKER_HOST": "n2"}, "c1")
    )

    def execute(cmd: Sequence[str], **options: Any) -> Result:
        ran.append((list(cmd), options["env"]))
        return Result(tuple(cmd), 0, "Running upgrade -> abc\n")

    monkeypatch.setattr(runner, "execute", execute)
    result = source_copy.migrator(record, migration, {})(["docker", "compose", "exec"], {})

    assert result.ok
    assert ran == [(["docker", "exec", "c1", "alembic", "upgrade", "head"], {"DOCKER_HOST": "n2"})]


def test_a_migration_before_the_backend_runs_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    record = swarm_record.Record(3, "", "reg:5000", "10.0.0.1")
    migration = apps.Migration("backend", ("alembic", "upgrade", "head"), "alembic upgrade head")

    def not_yet(rec: object, service: str, environ: object) -> tuple[dict[str, str], str]:
        raise SandboxError("backend of slot 3 is not running", Exit.USAGE)

    monkeypatch.setattr(source_copy, "exec_target", not_yet)
    result = source_copy.migrator(record, migration, {})(["x"], {})

    outcome = gatechecks.migration_outcome(result)
    assert (outcome.passed, outcome.final) == (False, False)
    assert outcome.detail == "waiting for its container to run"


def test_waiting_stops_when_done_and_fails_past_its_time() -> None:
    answers = iter([False, False, True])
    slept: list[float] = []
    cluster.wait_for(lambda: next(answers), 60, lambda: SandboxError("x"), slept.append)
    assert slept == [cluster.POLL, cluster.POLL]

    with pytest.raises(SandboxError, match="never"):
        cluster.wait_for(lambda: False, -1, lambda: SandboxError("never"), slept.append)


def test_the_swarm_options_default_to_the_built_in_app_and_the_gate_timeout() -> None:
    options = deploy.Options()
    assert options.source == apps.BUILT_IN
    assert options.wait is True
    assert options.timeout > 0
