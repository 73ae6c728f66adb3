"""`inv up` / `inv down` orchestration with the engine, preflight and gate replaced by fakes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sandbox import (
    COMPOSE_FILE,
    apps,
    checks,
    compose,
    docker,
    gate,
    lastup,
    preflight,
    slotfiles,
    slots,
    stack,
)
from sandbox.docker import Container, ContainerState
from sandbox.errors import Exit, SandboxError
from sandbox.images import provenance
from sandbox.runner import Result
from tests.unit.support.engine import FakeEngine


def container(
    service: str, slot: int, working_dir: str, state: ContainerState = "running"
) -> Container:
    return Container(
        id=f"{slot}-{service}",
        name=f"ktrdr-sandbox-{slot}-{service}-1",
        project=slots.project_name(slot),
        service=service,
        state=state,
        status="Up 1 minute (healthy)",
        working_dir=working_dir,
    )


@pytest.fixture
def target_slot(lock_dir: Path) -> int:
    """Slot 3, its locks in tmp_path."""
    return 3


class Fakes:
    """The scripted engine, a preflight that passes with `running` and a gate that passes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, running: list[Container]) -> None:
        self.engine = FakeEngine().install(monkeypatch)
        self.running = running
        monkeypatch.setattr(preflight, "run_preflight", self.preflight)
        monkeypatch.setattr(gate, "run_gate", self.gate)
        monkeypatch.setattr(docker, "check_engine", lambda environ=None: "20.10")
        monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: running)
        monkeypatch.setattr(compose, "find_compose", lambda environ=None: ["docker", "compose"])

    @property
    def commands(self) -> list[list[str]]:
        """What was run, but for the look at the database volume (what it holds)."""
        ran = self.engine.commands
        return [list(c) for c in ran if c[:3] != ("docker", "volume", "inspect")]

    def preflight(
        self, target: compose.Target, environ: Mapping[str, str], **kwargs: Any
    ) -> preflight.UpPlan:
        return preflight.UpPlan(["docker", "compose"], [], self.running)

    def gate(self, target: compose.Target, *args: Any, **kwargs: Any) -> checks.GateResult:
        return checks.GateResult(target.slot, True, [], 0.1, {})


def test_up_starts_a_stopped_slot_then_runs_the_gate(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(monkeypatch, [])
    result = stack.up(target, {})
    assert result.gate is not None
    assert result.started and result.gate.passed
    override = slotfiles.override_path(target.root, target.slot)
    assert fakes.commands == [stack.up_command(["docker", "compose"], target, [override])]


def test_up_on_a_running_slot_only_reruns_the_gate(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = str(target.shared_dir)
    running = [
        dataclasses.replace(
            container(s, 3, str(target.root)), shared=shared, models=f"{shared}/models"
        )
        for s in slots.SERVICES
    ]
    fakes = Fakes(monkeypatch, running)
    result = stack.up(target, {})
    assert result.gate is not None
    assert not result.started
    assert fakes.commands == []
    # Containers that do not record what they mount (started before it was recorded) are
    # brought up to date once.
    Fakes(monkeypatch, [container(s, 3, str(target.root)) for s in slots.SERVICES])
    assert stack.up(target, {}).started


def test_up_without_wait_starts_the_stack_and_runs_no_gate(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(monkeypatch, [])

    def no_gate(*args: Any, **kwargs: Any) -> checks.GateResult:
        raise AssertionError("the gate ran with wait=False")

    monkeypatch.setattr(gate, "run_gate", no_gate)
    result = stack.up(target, {}, wait=False)
    assert result.started and result.gate is None and result.logs == {}
    override = slotfiles.override_path(target.root, target.slot)
    assert fakes.commands == [stack.up_command(["docker", "compose"], target, [override])]


def test_up_with_one_service_stopped_runs_compose(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = [container(s, 3, str(target.root)) for s in slots.SERVICES]
    running[1] = container(running[1].service, 3, str(target.root), state="exited")
    fakes = Fakes(monkeypatch, running)
    stack.up(target, {})
    assert len(fakes.commands) == 1


def test_a_failed_compose_up_is_one_error_with_details(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(monkeypatch, [])
    fakes.engine.on("docker", answer=Result((), 1, "", "pull access denied"))
    with pytest.raises(SandboxError) as caught:
        stack.up(target, {})
    assert caught.value.code is Exit.COMMAND
    assert "`docker compose up` failed for slot 3" in str(caught.value)
    assert caught.value.details == "pull access denied"


def test_down_keeps_volumes_unless_asked(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(monkeypatch, [container("db", 3, str(target.root))])
    stack.down(target, {}, volumes=False)
    stack.down(target, {}, volumes=True)
    downs = [c for c in fakes.commands if "down" in c]
    assert "--volumes" not in downs[0]
    assert downs[1][-1] == "--volumes"


def test_down_volumes_of_another_checkouts_database_needs_the_override(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No containers (the other checkout took its slot down), its database stays."""
    fakes = Fakes(monkeypatch, [])
    labels = provenance.volume_labels("/srv/other", socket.gethostname(), "", "reference", "pw")
    fakes.engine.volumes["ktrdr-sandbox-3_db-data"] = labels
    with pytest.raises(SandboxError) as caught:
        stack.down(target, {}, volumes=True)
    assert caught.value.code is Exit.OTHER_CHECKOUT
    assert "(/srv/other on " in str(caught.value)
    assert "`inv down --slot=3 --volumes --other-checkouts` to remove it anyway" in str(
        caught.value
    )
    assert fakes.commands == []
    stack.down(target, {}, volumes=False)  # its containers only: allowed
    stack.down(target, {}, volumes=True, other_checkouts=True)
    downs = [c for c in fakes.commands if "down" in c]
    assert [c[-1] for c in downs] == ["--remove-orphans", "--volumes"]


def test_down_refuses_a_slot_of_another_checkout(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = target.root.parent / "other-checkout"
    other.mkdir()
    (other / COMPOSE_FILE).write_text("services: {}\n")
    fakes = Fakes(monkeypatch, [container("db", 3, str(other))])
    with pytest.raises(SandboxError) as caught:
        stack.down(target, {}, volumes=True)
    assert caught.value.code is Exit.OTHER_CHECKOUT
    assert str(caught.value) == (
        f"slot 3 runs from another checkout ({other}): run `inv down --slot=3` "
        "there; if that checkout is gone, `docker compose -p ktrdr-sandbox-3 down` removes it"
    )
    assert fakes.commands == []


def test_down_refuses_another_machines_slot_whose_path_is_not_here(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a remote engine two machines share, the other's checkout path is on the other
    machine: `down` here refuses rather than taking its slot for orphaned."""
    theirs = dataclasses.replace(
        container("db", 3, "/home/someone/ktrdr-sandbox"), client="their-laptop"
    )
    fakes = Fakes(monkeypatch, [theirs])
    with pytest.raises(SandboxError) as caught:
        stack.down(target, {}, volumes=False)
    assert caught.value.code is Exit.OTHER_CHECKOUT
    assert "their-laptop:/home/someone/ktrdr-sandbox" in str(caught.value)
    assert fakes.commands == []


def test_up_records_its_outcome_and_a_refused_login_is_one_line(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    Fakes(monkeypatch, [])
    stack.up(target, {})
    record = lastup.read(target.root, 3)
    assert record is not None and record.outcome == lastup.READY
    refused = checks.CheckResult(
        "backend",
        "Backend API health",
        checks.State.FAILED,
        'database refused the login: password authentication failed for user "ktrdr"',
        0.5,
        "db",
    )
    failed = checks.GateResult(3, False, [refused], 0.5, {})
    monkeypatch.setattr(gate, "run_gate", lambda *args, **kwargs: failed)
    with pytest.raises(SandboxError) as caught:
        stack.up(target, {})
    assert caught.value.code is Exit.BAD_ENV
    assert str(caught.value).startswith(
        "slot 3's backend cannot log in to its database (password authentication failed "
        'for user "ktrdr")'
    )
    record = lastup.read(target.root, 3)
    assert record is not None and record.outcome == lastup.FAILED
    assert "cannot log in" in record.reason
    stack.down(target, {}, volumes=False)
    assert lastup.read(target.root, 3) is None


def test_fresh_recreates_only_this_slots_database_after_asking(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(monkeypatch, [])
    fakes.engine.volumes["ktrdr-sandbox-3_db-data"] = {}  # made with another password
    checked = preflight.UpPlan(
        ["docker", "compose"], [], [], volume=provenance.Kind.OTHER_PASSWORD,
        expected=preflight.expected_volume(target, {}, apps.BUILT_IN),
    )  # fmt: skip
    monkeypatch.setattr(preflight, "run_preflight", lambda *args, **kwargs: checked)
    with pytest.raises(SandboxError) as caught:
        stack.up(target, {}, hooks=stack.Hooks(fresh=lambda slot: False))
    assert str(caught.value) == "kept slot 3's database: nothing was changed"
    assert fakes.commands == []
    stack.up(target, {}, hooks=stack.Hooks(fresh=lambda slot: slot == 3))
    down, remove, create = fakes.commands[:3]
    assert down == stack.down_command(["docker", "compose"], target, volumes=False)
    assert remove == ["docker", "volume", "rm", "ktrdr-sandbox-3_db-data"]
    assert create[:3] == ["docker", "volume", "create"] and create[-1] == "ktrdr-sandbox-3_db-data"
    assert "com.docker.compose.project=ktrdr-sandbox-3" in create


def test_a_running_slot_is_started_again_when_what_it_runs_changed(tmp_path: Path) -> None:
    from dataclasses import replace

    from sandbox import apps as app_kinds
    from tests.unit.support.factories import container as made

    where = slotfiles.Place(3, tmp_path / "shared")
    source = app_kinds.BUILT_IN
    shared, models = str(tmp_path / "shared"), str(tmp_path / "shared" / "models")
    running = [
        replace(made(3, service), image="app:1", shared=shared, models=models)
        for service in ("db", "backend", "training-worker-1")
    ]
    assert stack.as_wanted(running, source, None, where)
    assert stack.as_wanted(running, source, "app:1", where)
    # Another image (a changed lock), another models directory, another shared directory.
    assert not stack.as_wanted(running, source, "app:2", where)
    assert not stack.as_wanted(running, replace(source, models="slot"), None, where)
    elsewhere = slotfiles.Place(3, tmp_path / "team")
    assert not stack.as_wanted(running, source, None, elsewhere)
    # The database's container runs no app: its image is Postgres, and that is as wanted.
    assert running[0].service == "db"


def test_another_reload_recreates_the_slot_and_an_unrecorded_one_does_not(
    tmp_path: Path,
) -> None:
    def app(service: str, reload: str) -> Container:
        return Container(
            "id", "n", "ktrdr-sandbox-3", service, "running", "Up", "/c", reload=reload,
            shared=str(tmp_path), models=str(tmp_path / "models"),
        )  # fmt: skip

    where = slotfiles.Place(3, tmp_path)
    workers = [app("backend", "workers"), app("backtest-worker-1", "workers")]
    assert not stack.as_wanted(workers, apps.BUILT_IN, None, where, apps.RELOAD_BACKEND)
    assert stack.as_wanted(workers, apps.BUILT_IN, None, where, apps.RELOAD_WORKERS)
    assert stack.as_wanted([app("backend", "")], apps.BUILT_IN, None, where, apps.RELOAD_WORKERS)
    assert stack.as_wanted([], apps.BUILT_IN, None, where, apps.RELOAD_BACKEND)


def test_the_reload_label_is_read_back_from_docker_ps() -> None:
    assert docker.RELOAD_LABEL in docker.PS_FORMAT
    row = {
        "ID": "x",
        "Names": "n",
        "Project": "ktrdr-sandbox-3",
        "State": "running",
        "Reload": "workers",
    }
    [container] = docker.parse_ps(json.dumps(row))
    assert container.reload == "workers"


def test_ctrl_c_in_line_leaves_the_slots_record_as_it_was(
    target: compose.Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ready slot started again (`--recreate`) waits in line behind another start; Ctrl-C
    there is one line, and `inv status` still says what it said before: no STARTING is
    written while in line (a kill there leaves nothing), no FAILED after."""
    from sandbox import admission
    from tests.unit.support.flocks import held_elsewhere

    Fakes(monkeypatch, [])
    stack.up(target, {})
    before = lastup.read(target.root, 3)
    assert before is not None and before.outcome == lastup.READY
    seen: list[lastup.LastUp | None] = []

    def interrupted(_: float) -> None:
        seen.append(lastup.read(target.root, 3))  # what a kill -9 in line would leave
        raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", interrupted)
    line = admission.Line.of(os.environ).root
    with (
        held_elsewhere(line / admission.entry_name(1), "5 4242"),  # ahead of this start
        pytest.raises(SandboxError, match="nothing of it was started") as err,
    ):
        stack.up(target, {"KTRDR_MAX_STARTS": "1"}, recreate=True)
    assert err.value.code is Exit.INTERRUPTED
    assert seen == [before]
    assert lastup.read(target.root, 3) == before
