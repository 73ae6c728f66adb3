"""`inv pause` / `inv resume`: the commands, the refusals, and the thaw before `up`/`verify`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import COMPOSE_FILE, compose, docker, lock, pause, status
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from tests.unit.support.engine import FakeEngine
from tests.unit.support.factories import container
from tests.unit.support.flocks import held_elsewhere

SERVICES = ("db", "backend", "jaeger")


@pytest.fixture
def locks(lock_dir: Path) -> dict[str, str]:
    """The environment `pause` gets: its slot lock in tmp_path, never the machine's."""
    return {"KTRDR_LOCK_DIR": str(lock_dir)}


def engine_with(
    monkeypatch: pytest.MonkeyPatch, slot: int, state: docker.ContainerState
) -> FakeEngine:
    engine = FakeEngine(strict=True).install(monkeypatch)
    engine.containers = [container(slot, s, state=state) for s in SERVICES]
    engine.containers.append(container(9, "db"))  # another slot's: never touched
    engine.on("docker", "pause", answer=Result((), 0, ""))
    engine.on("docker", "unpause", answer=Result((), 0, ""))
    return engine


def test_the_commands_name_the_containers() -> None:
    assert pause.pause_command(["a-1", "b-1"]) == ["docker", "pause", "a-1", "b-1"]
    assert pause.unpause_command(["a-1"]) == ["docker", "unpause", "a-1"]


def test_pause_freezes_the_slots_running_containers_only(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, locks: dict[str, str]
) -> None:
    engine = engine_with(monkeypatch, target.slot, "running")
    change = pause.pause(target, locks)
    names = tuple(sorted(f"{target.project}-{s}-1" for s in SERVICES))
    assert engine.ran("docker", "pause") == [("docker", "pause", *names)]
    assert change.describe("paused") == f"slot {target.slot}: paused 3 containers"


def test_pausing_a_paused_slot_says_so_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, locks: dict[str, str]
) -> None:
    engine = engine_with(monkeypatch, target.slot, "paused")
    change = pause.pause(target, locks)
    assert engine.ran("docker", "pause") == []
    assert change.describe("paused") == f"slot {target.slot}: already paused (3 containers)"


def test_a_slot_with_an_exited_container_is_not_paused(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, locks: dict[str, str]
) -> None:
    engine = engine_with(monkeypatch, target.slot, "running")
    engine.containers[0] = container(target.slot, "db", state="exited")
    with pytest.raises(SandboxError) as raised:
        pause.pause(target, locks)
    assert raised.value.code is Exit.FAILED
    assert f"{target.project}-db-1" in raised.value.message
    assert engine.ran("docker", "pause") == []


def test_a_slot_without_containers_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target
) -> None:
    FakeEngine(strict=True).install(monkeypatch)
    with pytest.raises(SandboxError) as raised:
        pause.resume(target, {})
    assert raised.value.code is Exit.USAGE
    assert f"inv up --slot={target.slot}" in raised.value.message


def test_resume_thaws_the_paused_containers(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target
) -> None:
    engine = engine_with(monkeypatch, target.slot, "paused")
    change = pause.resume(target, {})
    assert len(engine.ran("docker", "unpause")[0]) == 2 + len(SERVICES)
    assert change.changed and change.already == 0


def test_thawed_unpauses_only_the_projects_asked_and_lists_them_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeEngine(strict=True).install(monkeypatch)
    engine.on("docker", "unpause", answer=Result((), 0, ""))
    mine = [container(3, s, state="paused") for s in SERVICES]
    other = container(4, "db", state="paused")
    heard: list[tuple[str, int]] = []
    after = pause.thawed([*mine, other], {"ktrdr-sandbox-3"}, {}, lambda p, n: heard.append((p, n)))
    assert engine.ran("docker", "unpause") == [("docker", "unpause", *sorted(c.name for c in mine))]
    assert [c.state for c in after] == ["running"] * 3 + ["paused"]
    assert heard == [("ktrdr-sandbox-3", 3)]


def test_nothing_paused_means_no_engine_call(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(strict=True).install(monkeypatch)
    running = [container(3, s) for s in SERVICES]
    assert pause.thawed(running, {"ktrdr-sandbox-3"}, {}) == running
    assert engine.commands == []


def test_a_paused_slot_reads_paused() -> None:
    paused = [container(3, s, state="paused", status="Up 1 hour (Paused)") for s in SERVICES]
    assert status.slot_state(paused, orphaned=False) == "paused"


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_another_checkouts_slot_is_refused_and_never_touched(
    monkeypatch: pytest.MonkeyPatch,
    target: compose.Target,
    locks: dict[str, str],
    tmp_path: Path,
    verb: str,
) -> None:
    """Another checkout that exists froze or thawed this one's slot: `up` and `down` refuse it
    (exit 7), pause and resume did what it asked."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / COMPOSE_FILE).parent.mkdir()
    (elsewhere / COMPOSE_FILE).write_text("services: {}\n")
    state: docker.ContainerState = "running" if verb == "pause" else "paused"
    engine = engine_with(monkeypatch, target.slot, state)
    engine.containers = [
        container(target.slot, s, state=state, working_dir=str(elsewhere)) for s in SERVICES
    ]
    with pytest.raises(SandboxError) as raised:
        getattr(pause, verb)(target, locks)
    assert raised.value.code is Exit.OTHER_CHECKOUT
    assert str(elsewhere) in raised.value.message
    assert engine.ran("docker", verb if verb == "pause" else "unpause") == []


def test_this_checkouts_slot_is_paused(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, locks: dict[str, str]
) -> None:
    engine = engine_with(monkeypatch, target.slot, "running")
    engine.containers = [container(target.slot, s, working_dir=str(target.root)) for s in SERVICES]
    assert pause.pause(target, locks).changed
    assert len(engine.ran("docker", "pause")) == 1


def test_a_busy_slot_is_not_paused(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, lock_dir: Path
) -> None:
    """A restore (snapshot, clone, up) holds the slot: freezing its database under a running
    `docker exec` hangs the engine on that container, so pause refuses at once."""
    engine = engine_with(monkeypatch, target.slot, "running")
    held = held_elsewhere(lock.lock_path(target.slot, lock_dir))
    with held, pytest.raises(SandboxError) as raised:
        pause.pause(target, {"KTRDR_LOCK_DIR": str(lock_dir)})
    assert raised.value.code is Exit.LOCKED
    assert "busy" in raised.value.message
    assert engine.ran("docker", "pause") == []


def test_a_busy_slot_is_still_resumed(
    monkeypatch: pytest.MonkeyPatch, target: compose.Target, lock_dir: Path
) -> None:
    engine = engine_with(monkeypatch, target.slot, "paused")
    with held_elsewhere(lock.lock_path(target.slot, lock_dir)):
        assert pause.resume(target, {"KTRDR_LOCK_DIR": str(lock_dir)}).changed
    assert len(engine.ran("docker", "unpause")) == 1
