"""Fixtures shared by the unit tests. A module that needs another slot for `target` defines
its own `target_slot` fixture; one that needs the checkout elsewhere overrides `root`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import compose, envfiles, runner
from tests.unit.support.cli import NO_ENGINE, Inv
from tests.unit.support.clock import FakeClock
from tests.unit.support.engine import FakeEngine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A sandbox checkout of the tool's own: the committed env files written into tmp_path."""
    envfiles.write_all(tmp_path)
    return tmp_path


@pytest.fixture
def target_slot() -> int:
    return 1


@pytest.fixture
def target(root: Path, target_slot: int) -> compose.Target:
    return compose.load_target(root, target_slot)


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KTRDR_LOCK_DIR in tmp_path: no test takes (or waits for) a lock of the machine's."""
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in tmp_path: the env files' ${HOME}/.ktrdr/shared lands there."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Inv:
    """`inv ARGS` in this process, HOME and locks in tmp_path, no engine (support/cli.py)."""
    for name in list(os.environ):
        if name.startswith(("KTRDR_", "COMPOSE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    runs = Inv(capsys)
    monkeypatch.setattr(runner, "execute", runs.recording(runner.execute))
    return runs


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    """The scripted Docker engine in place of `runner.execute` (support/engine.py); a module
    whose engine knows more (helper containers, a database) overrides this fixture."""
    return FakeEngine().install(monkeypatch)
