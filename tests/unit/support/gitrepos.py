"""Real git repositories for tests: a bare "origin" in a temp dir and clones of it.

Made once per session and copied per test (git setup is most of these tests' time). Import the
fixtures into a test module to use them; `isolated_git` must come along (it is autouse there).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sandbox.branches import worktrees
from sandbox.runner import run


def isolate(home: Path) -> dict[str, str]:
    """No user or system git config leaks in; commits get a fixed identity."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    for role in ("AUTHOR", "COMMITTER"):
        env.update({f"GIT_{role}_NAME": "Test", f"GIT_{role}_EMAIL": "test@example.invalid"})
    return env


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    for key, value in isolate(tmp_path / "home").items():
        monkeypatch.setenv(key, value)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    environ = {**os.environ, **env} if env else None
    result = run(["git", "-C", str(cwd), *args], env=worktrees.git_env(environ), timeout=60)
    assert result.ok, result.tail()
    return result.stdout.strip()


def commit(cwd: Path, name: str, text: str = "x\n", env: dict[str, str] | None = None) -> str:
    (cwd / name).write_text(text)
    git(cwd, "add", name, env=env)
    git(cwd, "commit", "-q", "-m", f"add {name}", env=env)
    return git(cwd, "rev-parse", "HEAD", env=env)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once, copied per test (git setup is most of these tests' time): a bare origin
    with main (README, .gitignore of *.log) and a branch only it has; the app's main checkout
    in src/app, a clone of origin, alone in its parent directory."""
    root = tmp_path_factory.mktemp("template")
    env = isolate(root / "home")
    bare, seed = root / "origin.git", root / "seed"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare), env=env)
    git(root, "clone", "-q", str(bare), str(seed), env=env)
    git(seed, "checkout", "-q", "-b", "main", env=env)
    commit(seed, ".gitignore", "*.log\n", env=env)
    commit(seed, "README", env=env)
    git(seed, "push", "-q", "origin", "main", env=env)
    git(seed, "checkout", "-q", "-b", "feature/remote-only", env=env)
    commit(seed, "remote.txt", env=env)
    git(seed, "push", "-q", "origin", "feature/remote-only", env=env)
    (root / "src").mkdir()
    git(root, "clone", "-q", str(bare), str(root / "src" / "app"), env=env)
    return root


@pytest.fixture
def origin(tmp_path: Path, template: Path) -> Path:
    shutil.copytree(template / "origin.git", tmp_path / "origin.git", symlinks=True)
    return tmp_path / "origin.git"


@pytest.fixture
def repo(tmp_path: Path, template: Path, origin: Path) -> Path:
    shutil.copytree(template / "src", tmp_path / "src", symlinks=True)
    app = tmp_path / "src" / "app"
    git(app, "remote", "set-url", "origin", str(origin))
    return app
