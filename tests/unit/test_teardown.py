"""`inv down --all`: the plan from a fabricated engine, the question, and what gets run.

The E2E suite runs the real `down --all` only where the machine is its own (CI); here a fake
engine stands in, through the real `inv down` task.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit

from sandbox import checkouts, compose, docker, envfiles, picker, slotfiles, slots, teardown
from sandbox.cli import common, lifecycle
from sandbox.errors import Exit, SandboxError
from sandbox.images import provenance
from tests.unit.support import engine as support_engine
from tests.unit.support.factories import container as fabricate


def container(
    slot: int | str,
    service: str = "db",
    state: docker.ContainerState = "running",
    source: str = "",
    working_dir: str = "/",
) -> docker.Container:
    return fabricate(slot, service, state=state, source=source, working_dir=working_dir)


def volume(slot: int) -> picker.Volume:
    return picker.Volume(picker.db_volume_name(slot), slots.project_name(slot), "db-data")


def test_plan_lists_every_slot_with_something(tmp_path: Path) -> None:
    engine = [
        container(2, "db"),
        container(2, "backend", source=str(tmp_path)),
        container(4, "db", state="exited", working_dir=str(tmp_path / "gone")),
        container("myapp", "web"),  # not a slot: never listed
    ]
    found = teardown.plan(engine, [volume(2), volume(7)])
    assert [e.slot for e in found] == [2, 4, 7]
    two, four, seven = found
    assert (two.containers, two.running, two.sources) == (2, 2, (str(tmp_path),))
    assert not two.orphaned() and four.orphaned()  # its checkout is gone
    assert "[orphaned]" in four.describe(volumes=False)
    assert seven.containers == 0 and seven.volumes == ("ktrdr-sandbox-7_db-data",)
    # A volume alone is kept without --volumes: nothing to do there then.
    assert not seven.acts(volumes=False) and seven.acts(volumes=True)
    assert "(kept)" in seven.describe(False) and "(removed)" in seven.describe(True)


def test_down_command_names_only_the_project() -> None:
    assert teardown.down_command(["docker", "compose"], 3, volumes=True) == [
        "docker",
        "compose",
        "--project-name",
        "ktrdr-sandbox-3",
        "down",
        "--remove-orphans",
        "--volumes",
    ]
    assert "--volumes" not in teardown.down_command(["docker", "compose"], 3, volumes=False)


def test_no_terminal_and_no_yes_is_refused() -> None:
    entries = teardown.plan([container(1)], [])

    def never(prompt: str) -> str:
        raise AssertionError("asked without a terminal")

    with pytest.raises(SandboxError, match="re-run with --yes") as caught:
        teardown.confirm_or_refuse(entries, yes=False, interactive=False, ask=never)
    assert caught.value.code == Exit.USAGE
    assert teardown.confirm_or_refuse(entries, yes=True, interactive=False, ask=never)
    assert teardown.confirm_or_refuse(entries, False, True, lambda prompt: "y\n")
    assert not teardown.confirm_or_refuse(entries, False, True, lambda prompt: "")
    assert not teardown.confirm_or_refuse(entries, False, True, lambda prompt: "no")


class FakeEngine(support_engine.FakeEngine):
    """The scripted engine with one `docker ps` and one `docker volume ls` worth of slots."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        containers: list[docker.Container],
        volumes: list[picker.Volume],
        owners: dict[str, str | None] | None = None,
    ) -> None:
        """`owners`: a volume's checkout by name (None: made before provenance labels);
        a volume not named there is this checkout's (common.ROOT)."""
        super().__init__()
        here = str(Path(common.ROOT).resolve())  # the `isolated` checkout
        for made in volumes:
            checkout = (owners or {}).get(made.name, here)
            self.volumes[made.name] = (
                {"com.docker.compose.volume": "db-data"}
                if checkout is None
                else provenance.volume_labels(checkout, socket.gethostname(), "", "reference", "pw")
            )
        monkeypatch.setattr(docker, "check_engine", lambda environ=None: "20.10")
        monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: containers)
        monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: volumes)
        monkeypatch.setattr(compose, "find_compose", lambda environ=None: ["docker", "compose"])
        self.install(monkeypatch)

    def changes(self) -> list[tuple[list[str], dict[str, Any]]]:
        """The commands that act (every one but the volumes' inspection), with their options."""
        return [
            (list(cmd), options)
            for cmd, options in zip(self.commands, self.options, strict=True)
            if cmd[:3] != ("docker", "volume", "inspect")
        ]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ktrdr-sandbox checkout of its own (env files, state) and private locks."""
    envfiles.write_all(tmp_path)
    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("COMPOSE_FILE", "/somewhere/else.yml")  # must not reach Compose
    return tmp_path


def test_down_all_takes_down_every_slot_and_their_files(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, foreign = tmp_path / "branch", tmp_path / "theirs"
    source.mkdir()
    foreign.mkdir()
    (source / checkouts.ENV_SANDBOX).write_text(f"{checkouts.ENV_SANDBOX_HEADER} for slot 2\n")
    (foreign / checkouts.ENV_SANDBOX).write_text("MINE=1\n")  # not ours: stays
    state = slotfiles.write_override(isolated, 2, {"services": {}})
    engine = FakeEngine(
        monkeypatch,
        [container(2, "backend", source=str(source)), container(9, source=str(foreign))],
        [volume(2), volume(5)],
    )
    lifecycle.down(Context(), all_=True, volumes=True, yes=True)
    ran = [cmd for cmd, _ in engine.changes()]
    assert ran == [teardown.down_command(["docker", "compose"], s, True) for s in (2, 5, 9)]
    for _, options in engine.changes():
        assert options["cwd"] == teardown.NEUTRAL_DIR
        assert not any(k.startswith("COMPOSE_") for k in options["env"])
    assert not (source / checkouts.ENV_SANDBOX).exists() and not state.exists()
    assert (foreign / checkouts.ENV_SANDBOX).read_text() == "MINE=1\n"


def test_down_all_keeps_volume_only_slots_without_volumes(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(monkeypatch, [container(3)], [volume(3), volume(4)])
    lifecycle.down(Context(), all_=True, yes=True)
    assert [cmd for cmd, _ in engine.changes()] == [
        teardown.down_command(["docker", "compose"], 3, False)
    ]


def test_down_all_without_a_terminal_or_yes_touches_nothing(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(monkeypatch, [container(1)], [])
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(InvokeExit) as caught:
        lifecycle.down(Context(), all_=True)
    assert caught.value.code == Exit.USAGE and "--yes" in str(caught.value.message)
    assert engine.changes() == []


def test_down_all_answered_no_touches_nothing(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(monkeypatch, [container(1)], [])
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(InvokeExit) as caught:
        lifecycle.down(Context(), all_=True)
    assert caught.value.code == Exit.FAILED
    assert engine.changes() == []


def test_down_all_with_a_slot_is_refused(isolated: Path) -> None:
    with pytest.raises(InvokeExit, match="not both"):
        lifecycle.down(Context(), slot="1", all_=True)


def test_down_all_volumes_removes_only_this_checkouts_and_lists_the_rest_as_kept(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs, legacy = picker.db_volume_name(4), picker.db_volume_name(6)
    engine = FakeEngine(
        monkeypatch,
        [container(2), container(4)],
        [volume(2), volume(4), volume(5), volume(6)],
        owners={theirs: "/srv/other-checkout", legacy: None},
    )
    lifecycle.down(Context(), all_=True, volumes=True, yes=True)
    ran = [cmd for cmd, _ in engine.changes()]
    compose_cmd = ["docker", "compose"]
    assert ran == [
        teardown.down_command(compose_cmd, 2, True),
        teardown.down_command(compose_cmd, 5, True),
        teardown.down_command(compose_cmd, 4, False),  # its containers go, its database stays
    ]
    lines = capsys.readouterr().out.splitlines()
    listed = [line for line in lines if " volume " in line]
    # By owner: this checkout's first, then the others'; 6 (no containers) listed as kept.
    assert [line.split()[1] for line in listed] == ["2", "5", "4", "6"]
    assert "of this checkout (removed)" in listed[0]
    owner = f"/srv/other-checkout on {socket.gethostname()}"
    assert f"of {owner} (kept: not this checkout's, --other-checkouts removes it)" in listed[2]
    assert "of unknown owner (made before provenance labels) (kept: not this" in listed[3]
    assert "slot 4 (ktrdr-sandbox-4) is down; kept its volumes" in lines


def test_down_all_volumes_with_other_checkouts_removes_them_too(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(
        monkeypatch, [container(4)], [volume(4), volume(6)],
        owners={picker.db_volume_name(4): "/srv/other", picker.db_volume_name(6): None},
    )  # fmt: skip
    lifecycle.down(Context(), all_=True, volumes=True, yes=True, other_checkouts=True)
    assert [cmd for cmd, _ in engine.changes()] == [
        teardown.down_command(["docker", "compose"], s, True) for s in (4, 6)
    ]
