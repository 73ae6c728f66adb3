"""What `inv done` acts on, resolved against real git worktrees; nothing may change."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.branches import git as branches
from sandbox.branches import worktrees
from sandbox.errors import Exit, SandboxError
from sandbox.status import SlotSource
from tests.unit.support.gitrepos import isolated_git, origin, repo, template

USED_FIXTURES = (isolated_git, origin, repo, template)  # pytest finds them by name here


def running(path: Path, branch: str | None) -> SlotSource:
    return SlotSource(str(path), "ktrdr", branch)


def refused(words: str, sources: dict[int, SlotSource], **kwargs: object) -> None:
    with pytest.raises(SandboxError, match=words) as caught:
        branches.resolve_done(sources, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == Exit.USAGE
    assert "\n" not in str(caught.value)


def test_by_branch_from_the_running_slots(repo: Path) -> None:
    one = worktrees.create(repo, "feature/one")
    two = worktrees.create(repo, "two")
    sources = {1: running(one.path, "feature/one"), 2: running(two.path, "two")}
    assert branches.resolve_done(sources, branch="two") == branches.DoneTarget(repo, two, 2)
    assert branches.resolve_done(sources, slot=1) == branches.DoneTarget(repo, one, 1)


def test_by_branch_with_repo_when_no_slot_runs_it(repo: Path) -> None:
    made = worktrees.create(repo, "idle")
    assert branches.resolve_done({}, branch="idle", repo=repo) == branches.DoneTarget(
        repo, made, None
    )
    refused("no slot runs branch 'idle': pass --repo=PATH", {}, branch="idle")


def test_slot_found_by_path_even_after_a_checkout_elsewhere(repo: Path) -> None:
    made = worktrees.create(repo, "moved")
    # The slot's label still names the path; the branch seen there is what git says now.
    sources = {4: running(made.path, None)}
    assert branches.resolve_done(sources, branch="moved", repo=repo).slot == 4


def test_refusals(repo: Path, tmp_path: Path) -> None:
    made = worktrees.create(repo, "x")
    refused("name one branch or one slot", {})
    refused("name one branch or one slot", {}, branch="x", slot=1)
    refused("slot 3 has no containers", {}, slot=3)
    refused("no --source recorded", {3: SlotSource()}, slot=3)
    refused("is gone or not a git checkout", {3: running(tmp_path / "gone", None)}, slot=3)
    refused("the main checkout of", {3: running(repo, "main")}, slot=3)
    refused("has no worktree in", {}, branch="nope", repo=repo)
    refused("checked out in the main checkout", {}, branch="main", repo=repo)
    refused("not a valid git branch name", {}, branch="a..b", repo=repo)
    twice = {1: running(made.path, "x"), 2: running(made.path, "x")}
    refused("slots 1, 2 all run branch 'x'", twice, branch="x")
    refused(f"slots 1, 2 all run {made.path}", twice, branch="x", repo=repo)
    assert made.path.is_dir() and worktrees.find(repo, "x") == made
