"""`inv new` / `inv done` ordering on real git: a refusal changes nothing, anywhere.

The engine is fake (no slot is free, or one is); git, worktrees and files are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit

from sandbox import (
    apps,
    checkouts,
    compose,
    docker,
    envfiles,
    lock,
    picker,
    slots,
    stack,
)
from sandbox.branches import flow as branchflow
from sandbox.branches import git as branches
from sandbox.branches import worktrees
from sandbox.cli import branches as branch_tasks
from sandbox.cli import common, lifecycle
from sandbox.errors import Exit, SandboxError
from tests.unit.support.gitrepos import commit, isolated_git, origin, repo, template

USED_FIXTURES = (isolated_git, origin, repo, template)  # pytest finds them by name here


def held(slot: int) -> docker.Container:
    project = slots.project_name(slot)
    return docker.Container(f"{project}-db", f"{project}-db-1", project, "db", "running", "", "/")


def listing(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.parent.iterdir())


def test_check_new_refuses_before_anything_exists(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="pass --repo=PATH") as caught:
        branchflow.check_new(None, "x", None, {})
    assert caught.value.code == Exit.USAGE
    with pytest.raises(SandboxError, match="not a git repository"):
        branchflow.check_new(str(tmp_path), "x", None, {})
    with pytest.raises(SandboxError, match="not a commit"):
        branchflow.check_new(str(repo), "x", "no-such-ref", {})
    plan = branchflow.check_new(str(repo), "feature/y", None, {})
    assert plan == branchflow.NewPlan(repo, "feature/y", repo.parent / "app-feature-y")
    assert listing(repo) == ["app"]
    assert worktrees.find(repo, "feature/y") is None


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tasks acting on a ktrdr-sandbox checkout of its own, on a fake engine."""
    root = tmp_path / "sandbox-checkout"
    envfiles.write_all(root)
    monkeypatch.setattr(common, "ROOT", root)
    monkeypatch.setattr(docker, "check_engine", lambda environ=None: "20.10")
    monkeypatch.setattr(picker, "ports_free", lambda slot, bind="": True)
    return root


def test_new_with_no_free_slot_creates_nothing(
    repo: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = [held(s) for s in range(1, 11)]
    monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: full)
    monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: [])
    for slot in ("auto", "4"):
        with pytest.raises(InvokeExit) as caught:
            branch_tasks.new(Context(), "feature/y", repo=str(repo), slot=slot)
        assert caught.value.code == Exit.NO_SLOT
    assert listing(repo) == ["app"] and worktrees.find(repo, "feature/y") is None


def test_new_claims_the_slot_then_the_worktree_then_starts(
    repo: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: [held(1)])
    monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: [])
    started: list[tuple[int, apps.Source]] = []

    def start(target: object, source: apps.Source, environ: object, **kw: object) -> None:
        assert isinstance(target, compose.Target)
        # The slot's lock is held while the stack starts (stack.up re-enters it).
        assert target.slot in lock.held_slots(Path(os.environ["KTRDR_LOCK_DIR"]))
        started.append((target.slot, source))

    monkeypatch.setattr(lifecycle, "start", start)
    monkeypatch.setattr(apps, "detect", lambda path, torch: apps.Source(apps.KTRDR, path, torch))
    branch_tasks.new(Context(), "feature/y", repo=str(repo), no_wait=True)
    [(slot, source)] = started
    assert slot == 2  # slot 1 holds a container
    assert source.path == repo.parent / "app-feature-y"


def test_a_failed_start_keeps_the_worktree_and_says_how_to_remove_it(
    repo: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: [])
    monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: [])
    with pytest.raises(InvokeExit) as caught:  # the template repo is no app checkout
        branch_tasks.new(Context(), "feature/y", repo=str(repo), slot="3")
    assert caught.value.code == Exit.USAGE and "not an app checkout" in str(caught.value.message)
    said = capsys.readouterr().out
    assert "slot 3: free" in said.splitlines()[0]
    assert f"inv done --branch=feature/y --repo={repo}" in said
    assert (repo.parent / "app-feature-y").is_dir()


def test_new_slot_tells_kept_how_to_remove_the_worktree_and_lets_the_failure_through(
    repo: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the MCP `new` tool relies on: the hint to a hook of its own, the error unchanged."""
    monkeypatch.setattr(docker, "sandbox_containers", lambda environ=None: [])
    monkeypatch.setattr(picker, "sandbox_volumes", lambda environ=None: [])
    monkeypatch.setattr(apps, "detect", lambda path, torch: apps.Source(apps.KTRDR, path, torch))
    said: list[str] = []
    kept: list[str] = []
    request = branchflow.NewRequest("feature/y", str(repo), slot="3", models="slot")
    with (
        pytest.raises(RuntimeError, match="the start failed"),
        branchflow.new_slot(
            request, checkout, dict(os.environ), said.append, None, kept.append
        ) as made,
    ):
        assert made.target.slot == 3 and made.source.models == "slot"
        raise RuntimeError("the start failed")
    path = repo.parent / "app-feature-y"
    assert said == ["slot 3: free", f"worktree: {path} (branch feature/y)"]
    plan = branchflow.NewPlan(repo, "feature/y", path)
    assert kept == [branchflow.kept_hint(plan, path)] and path.is_dir()


def test_the_hint_for_a_kept_clone_calls_it_a_clone(tmp_path: Path) -> None:
    made = tmp_path / "app-feature-y"
    clone = branchflow.NewPlan(tmp_path / "app", "feature/y", made, clone=True)
    assert branchflow.kept_hint(clone, made).startswith(f"the clone {made} stays:")
    worktree = branchflow.NewPlan(tmp_path / "app", "feature/y", made)
    assert branchflow.kept_hint(worktree, made).startswith(f"the worktree {made} stays:")


def target_of(repo: Path, branch: str, slot: int | None = None) -> branches.DoneTarget:
    made = worktrees.find(repo, branch) or worktrees.create(repo, branch)
    return branches.DoneTarget(repo, made, slot)


def test_check_done_refuses_unsaved_work_unless_forced(repo: Path) -> None:
    target = target_of(repo, "feature/y")
    path = target.worktree.path
    (path / checkouts.ENV_SANDBOX).write_text(f"{checkouts.ENV_SANDBOX_HEADER} for slot 1\n")
    assert branchflow.check_done(target, False, {}).safe  # our .env.sandbox is no work
    (path / "notes.txt").write_text("mine\n")
    commit(path, "work.txt")
    with pytest.raises(SandboxError) as caught:
        branchflow.check_done(target, False, {})
    assert caught.value.code == Exit.UNSAVED_WORK
    assert "  notes.txt" in caught.value.details and "add work.txt" in caught.value.details
    assert not branchflow.check_done(target, True, {}).safe
    assert path.is_dir() and (path / "notes.txt").is_file()


def test_check_done_refuses_a_foreign_env_sandbox_and_the_current_directory(repo: Path) -> None:
    target = target_of(repo, "feature/y")
    path = target.worktree.path
    (path / checkouts.ENV_SANDBOX).write_text("SOMEONE_ELSES=1\n")
    with pytest.raises(SandboxError, match="1 untracked file"):
        branchflow.check_done(target, False, {})
    with pytest.raises(SandboxError, match="cd out of it") as caught:
        branchflow.check_done(target, True, {}, cwd=path)
    assert caught.value.code == Exit.USAGE


def test_remove_worktree_takes_our_env_sandbox_and_the_worktree_only(repo: Path) -> None:
    target, sibling = target_of(repo, "feature/y"), target_of(repo, "feature/z")
    (target.worktree.path / checkouts.ENV_SANDBOX).write_text(f"{checkouts.ENV_SANDBOX_HEADER} x\n")
    (sibling.worktree.path / checkouts.ENV_SANDBOX).write_text(
        f"{checkouts.ENV_SANDBOX_HEADER} y\n"
    )
    assert branchflow.remove_worktree(target, False, {}) == target.worktree.path
    assert not target.worktree.path.exists()
    assert (sibling.worktree.path / checkouts.ENV_SANDBOX).is_file()
    assert worktrees.find(repo, "feature/z") == sibling.worktree


def test_done_needs_one_branch_or_one_slot_before_asking_the_engine() -> None:
    for branch, slot in ((None, None), ("x", 1)):
        with pytest.raises(SandboxError, match="name one branch or one slot"):
            branchflow.done_target({"DOCKER_HOST": "unix:///nonexistent"}, branch, slot)


@pytest.mark.parametrize(
    "argv,remainder,expected",
    [
        (
            ["inv", "exec", "--", "sh", "-c", "echo a  b"],
            "sh -c echo a  b",
            ["sh", "-c", "echo a  b"],
        ),
        (["inv", "exec", "--", "ls", "-la"], "ls -la", ["ls", "-la"]),
        # Called with another command line (a test, a script): the remainder, split.
        (["pytest"], "ls 'a b'", ["ls", "a b"]),
    ],
)
def test_after_double_dash(argv: list[str], remainder: str, expected: list[str]) -> None:
    assert stack.after_double_dash(argv, remainder) == expected


def test_after_double_dash_needs_a_command() -> None:
    with pytest.raises(SandboxError, match="which command") as caught:
        stack.after_double_dash(["inv", "exec", "--"], "")
    assert caught.value.code == Exit.USAGE


def test_exec_command(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    target = compose.load_target(tmp_path, 2)
    cmd = stack.exec_command(["docker", "compose"], target, "db", ["ls", "-la"], False)
    assert cmd[-5:] == ["exec", "-T", "db", "ls", "-la"]
    assert "ktrdr-sandbox-2" in cmd
    shell = stack.exec_command(["docker", "compose"], target, "backend", stack.SHELL, True)
    assert shell[-4:] == ["backend", *stack.SHELL]
    assert "-T" not in shell
