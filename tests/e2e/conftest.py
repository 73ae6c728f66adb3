"""Fixtures for the E2E suite: a real engine, `inv` run as a user runs it, and cleanup.

The suite runs with HOME pointed at a temporary directory, so the shared directory it writes to
(`$HOME/.ktrdr/shared`, from the env files) is its own and never the user's. DOCKER_CONFIG
keeps pointing at the real one, so the engine context and the compose plugin are found.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import ROOT, docker, slots
from sandbox.errors import SandboxError
from sandbox.runner import Result, run

# Slots the suite may take over; 9 and 10 are the least likely to be someone's daily slot.
E2E_SLOTS = tuple(int(s) for s in os.environ.get("KTRDR_E2E_SLOTS", "9,10").split(","))
# In CI the machine is ours: leftovers of an earlier, interrupted run are removed. Elsewhere
# the suite refuses to touch containers it did not start.
CLEAN_LEFTOVERS = os.environ.get("CI", "") not in ("", "false", "0")


@dataclass(frozen=True)
class Sandbox:
    """How the tests call `inv`, and where their private HOME is."""

    home: Path
    env: dict[str, str]

    @property
    def shared(self) -> Path:
        return self.home / ".ktrdr" / "shared"

    def inv(self, *args: str, input_text: str | None = None, timeout: float = 600) -> Result:
        inv = Path(sys.executable).parent / "inv"
        cmd = [str(inv), "--search-root", str(ROOT), *args]
        return run(cmd, env=self.env, cwd=ROOT, timeout=timeout, input_text=input_text)

    def bash(self, script: str, timeout: float = 600) -> Result:
        return run(
            ["bash", "-euo", "pipefail", "-c", script], env=self.env, cwd=ROOT, timeout=timeout
        )


def project_containers(slot: int) -> list[docker.Container]:
    return [c for c in docker.sandbox_containers() if c.slot == slot]


def remove_project(slot: int, env: dict[str, str]) -> None:
    """Remove a slot's containers, network and volume by project name alone."""
    project = slots.project_name(slot)
    ids = [c.id for c in project_containers(slot)]
    if ids:
        run(["docker", "rm", "-f", *ids], env=env, timeout=120)
    run(["docker", "network", "rm", f"{project}_default"], env=env, timeout=60)
    run(["docker", "volume", "rm", f"{project}_db-data"], env=env, timeout=60)


def claim_slots(wanted: tuple[int, ...], env: dict[str, str]) -> None:
    """Make sure `wanted` are free: clean leftovers in CI, refuse elsewhere."""
    for slot in wanted:
        found = project_containers(slot)
        if not found:
            if CLEAN_LEFTOVERS:
                remove_project(slot, env)  # a volume or network without containers
            continue
        if CLEAN_LEFTOVERS:
            remove_project(slot, env)
            continue
        where = found[0].working_dir or "unknown checkout"
        pytest.fail(
            f"slot {slot} already has containers (from {where}): the E2E suite needs it free; "
            f"run `inv down --slot={slot}` there, or pick other slots with KTRDR_E2E_SLOTS=a,b",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def engine() -> str:
    """The engine's version; a loud failure (never a skip) when there is none."""
    try:
        return docker.check_engine()
    except SandboxError as exc:
        pytest.fail(f"E2E needs a Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def sandbox(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    home = tmp_path_factory.mktemp("home")
    real_docker_config = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KTRDR_", "COMPOSE_")) and key != "SLOT_NUMBER"
    }
    env.update(HOME=str(home), DOCKER_CONFIG=real_docker_config, KTRDR_LOCK_DIR=str(home / "locks"))
    yield Sandbox(home, env)
