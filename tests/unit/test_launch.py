"""What `inv up` and the MCP `up` tool share: options read once, the slot named or claimed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from sandbox import apps, docker, envfiles, launch, lock, picker, slots
from sandbox.errors import Exit, SandboxError


def test_read_options_checks_each_flag() -> None:
    run = launch.read_options(None, None, "slot", "light", "shared")
    assert run.source == dataclasses.replace(apps.BUILT_IN, models="slot")
    assert run.layout == slots.parse_layout("light", "shared")
    with pytest.raises(SandboxError) as caught:
        launch.read_options("", None, "shared", None, None)  # an unset variable is no "none"
    assert caught.value.code == Exit.USAGE
    with pytest.raises(SandboxError):
        launch.read_options(None, None, "everywhere", None, None)
    with pytest.raises(SandboxError):
        launch.read_options(None, None, "shared", "heavy", None)


def test_a_named_slot_is_used_as_it_is(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    said: list[str] = []
    with launch.chosen_slot(tmp_path, {}, " 7 ", said.append) as chosen:
        assert chosen.target.slot == 7 and not chosen.claimed
    assert said == []  # nothing claimed, nothing looked up on the engine
    with pytest.raises(SandboxError, match="slot must be a whole number") as caught:
        launch.chosen_slot(tmp_path, {}, "any", said.append).__enter__()
    assert caught.value.code == Exit.USAGE


def test_auto_claims_the_lowest_free_slot_and_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envfiles.write_all(tmp_path)
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    project = slots.project_name(1)
    held = docker.Container(f"{project}-db", f"{project}-db-1", project, "db", "running", "", "/")
    monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: [held])
    monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: [])
    monkeypatch.setattr(picker, "ports_free", lambda slot, bind="": True)
    said: list[str] = []
    with launch.chosen_slot(tmp_path, dict(os.environ), "AUTO", said.append) as chosen:
        assert chosen.target.slot == 2 and chosen.claimed
        assert 2 in lock.held_slots(Path(os.environ["KTRDR_LOCK_DIR"]))
    assert said == ["slot 2: the lowest free slot (--slot=auto)"]
