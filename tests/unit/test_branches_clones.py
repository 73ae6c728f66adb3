"""Branch clones against real git: a bare "origin" in a temp dir, the app's checkout cloned from
it, and clones of that checkout made by `inv new`; real commits, stashes and pushes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import apps, checkouts
from sandbox.branches import clones, unsaved, worktrees
from sandbox.branches import flow as branchflow
from sandbox.branches import git as branches
from sandbox.errors import Exit, SandboxError
from sandbox.status import SlotSource
from tests.unit.support.gitrepos import commit, git, isolated_git, origin, repo, template

USED_FIXTURES = (isolated_git, origin, repo, template)  # pytest finds them by name here


def made_for(repo: Path, branch: str, base: str | None = None) -> branches.DoneTarget:
    return branches.DoneTarget(repo, clones.create(repo, branch, base), None, clone=True)


def refs(path: Path, prefix: str) -> dict[str, str]:
    listed = git(path, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return dict(line.split() for line in listed.splitlines())


def test_a_clone_has_a_git_directory_the_branch_and_origin_as_the_repository_has_it(
    repo: Path, origin: Path
) -> None:
    made = clones.create(repo, "feature/y")
    path = repo.parent / "app-feature-y"
    assert made == worktrees.Worktree(path, git(repo, "rev-parse", "origin/main"), "feature/y")
    assert (path / ".git").is_dir() and (path / "README").is_file()
    assert git(path, "remote", "get-url", "origin") == str(origin)  # pushes go where repo's go
    assert git(path, "remote", "get-url", "local") == str(repo)
    assert refs(path, "refs/remotes/origin") == refs(repo, "refs/remotes/origin")
    assert list(refs(path, "refs/heads")) == ["refs/heads/feature/y"]  # no stray main
    assert git(path, "status", "--porcelain") == ""
    # A new branch tracks nothing (a push cannot go to main by default).
    assert git(path, "for-each-ref", "--format=%(upstream)", "refs/heads/feature/y") == ""
    assert clones.source_of(path) == repo and clones.find(repo, "feature/y") == made
    assert clones.source_of(repo) is None and worktrees.find(repo, "feature/y") is None


def test_the_clone_shares_the_object_files_of_the_repository(repo: Path) -> None:
    made = clones.create(repo, "shared")
    objects = repo / ".git" / "objects"
    one = next(p for p in objects.rglob("*") if p.is_file() and p.parent.name != "info")
    twin = made.path / ".git" / "objects" / one.relative_to(objects)
    assert os.stat(one).st_ino == os.stat(twin).st_ino  # a hard link, not a copy


def test_an_origin_branch_is_tracked_and_a_local_branch_keeps_its_upstream(repo: Path) -> None:
    remote = clones.create(repo, "feature/remote-only")
    upstream = "@{upstream}"
    assert git(remote.path, "rev-parse", "--abbrev-ref", upstream) == "origin/feature/remote-only"
    assert (remote.path / "remote.txt").is_file()
    git(repo, "branch", "--track", "mine", "origin/main")
    local = clones.create(repo, "mine")
    assert git(local.path, "rev-parse", "--abbrev-ref", upstream) == "origin/main"


def test_creation_refuses_what_a_worktree_refuses_and_leaves_nothing(repo: Path) -> None:
    before = sorted(os.listdir(repo.parent))
    for branch, base, words in (
        ("main", None, "already checked out at"),
        ("x", "no-such-ref", "is not a commit"),
        ("feature/remote-only", "origin/main", "exists on origin"),
        ("bad..name", None, "not a valid git branch name"),
    ):
        with pytest.raises(SandboxError, match=words):
            clones.create(repo, branch, base)
    assert sorted(os.listdir(repo.parent)) == before
    made = clones.create(repo, "feature/remote-only")
    with pytest.raises(SandboxError, match=r"already checked out at .*\(a clone\)"):
        clones.create(repo, "feature/remote-only")
    with pytest.raises(SandboxError, match=r"already checked out at .*\(a clone\)"):
        branchflow.check_new(str(repo), "feature/remote-only", None, {})
    assert made.path.is_dir()


def test_a_failed_clone_is_removed(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half(repo: Path, path: Path, *args: object) -> None:
        path.mkdir()
        (path / "partial").write_text("x")
        raise SandboxError("cloning failed", Exit.COMMAND)

    monkeypatch.setattr(clones, "_clone", half)
    with pytest.raises(SandboxError, match="cloning failed"):
        clones.create(repo, "broken")
    assert sorted(os.listdir(repo.parent)) == ["app"]


def test_the_app_kind_chooses_the_layout(repo: Path) -> None:
    assert branchflow.check_new(str(repo), "plain", None, {}).clone is False
    for marker in apps.KTRDR.markers:
        (repo / marker).parent.mkdir(parents=True, exist_ok=True)
        (repo / marker).write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a KTRDR-shaped app")
    # The kind is read from the tree the branch starts at, not from the main checkout's files.
    assert branchflow.check_new(str(repo), "k", None, {}).clone is False  # origin/main: not yet
    plan = branchflow.check_new(str(repo), "k", "main", {})
    assert plan.clone is True and plan.path == repo.parent / "app-k"
    made = branchflow.create(plan, "main", {})
    assert (made.path / ".git").is_dir() and (made.path / "uv.lock").is_file()


def test_done_refuses_unsaved_work_in_a_clone_over_every_branch_and_the_stash(
    repo: Path,
) -> None:
    target = made_for(repo, "feature/y")
    path = target.worktree.path
    (path / checkouts.ENV_SANDBOX).write_text(f"{checkouts.ENV_SANDBOX_HEADER} for slot 1\n")
    assert branchflow.check_done(target, False, {}).safe
    git(path, "checkout", "-q", "-b", "side")
    commit(path, "side.txt")
    git(path, "checkout", "-q", "feature/y")
    (path / "README").write_text("changed\n")
    git(path, "stash", "-q")
    with pytest.raises(SandboxError) as caught:
        branchflow.check_done(target, False, {})
    assert caught.value.code == Exit.UNSAVED_WORK
    assert "add side.txt" in caught.value.details and "WIP on feature/y" in caught.value.details


def test_done_brings_the_branch_back_into_the_repository(repo: Path) -> None:
    target = made_for(repo, "feature/y")
    path = target.worktree.path
    tip = commit(path, "work.txt")
    with pytest.raises(SandboxError, match=r"the clone .* has 1 commit on no remote") as caught:
        branchflow.check_done(target, False, {})
    assert caught.value.code == Exit.UNSAVED_WORK
    assert not branchflow.check_done(target, True, {}).safe  # --force: listed, then...
    assert branchflow.remove_worktree(target, True, {}, cwd=repo) == path
    assert not path.exists()
    assert git(repo, "rev-parse", "refs/heads/feature/y") == tip  # ...the commit is not lost


def test_a_pushed_clone_is_safe_and_its_branch_stays_in_the_repository(
    repo: Path, origin: Path
) -> None:
    target = made_for(repo, "pushed")
    tip = commit(target.worktree.path, "work.txt")
    git(target.worktree.path, "push", "-q", "origin", "pushed")
    assert git(origin, "rev-parse", "refs/heads/pushed") == tip
    assert branchflow.check_done(target, False, {}).safe
    branchflow.remove_worktree(target, False, {}, cwd=repo)
    assert git(repo, "rev-parse", "refs/heads/pushed") == tip


def test_done_refuses_when_the_branch_cannot_come_back_as_a_fast_forward(repo: Path) -> None:
    git(repo, "branch", "moved", "origin/main")
    target = made_for(repo, "moved")
    path = target.worktree.path
    commit(path, "there.txt")
    git(path, "push", "-q", "origin", "moved")  # saved on origin, so only the bring-back refuses
    git(repo, "checkout", "-q", "moved")
    before = commit(repo, "here.txt")
    git(repo, "checkout", "-q", "main")
    with pytest.raises(SandboxError, match="has commits the clone has not") as caught:
        branchflow.check_done(target, False, {})
    assert caught.value.code == Exit.UNSAVED_WORK and path.is_dir()
    with pytest.raises(SandboxError, match="cannot be brought back"):
        clones.remove(repo, target.worktree, False, cwd=repo)
    assert path.is_dir()
    branchflow.check_done(target, True, {})
    clones.remove(repo, target.worktree, True, cwd=repo)  # --force: the repository's stays
    assert git(repo, "rev-parse", "refs/heads/moved") == before and not path.exists()


def test_a_branch_checked_out_in_the_repository_is_not_moved_under_it(repo: Path) -> None:
    git(repo, "branch", "busy", "origin/main")
    target = made_for(repo, "busy")
    commit(target.worktree.path, "x.txt")
    git(repo, "checkout", "-q", "busy")
    back = clones.bring_back(repo, target.worktree, None)
    assert not back.moves and "is checked out at" in back.refusal


def test_removal_refuses_the_current_directory_and_anything_not_ours(
    repo: Path, tmp_path: Path
) -> None:
    target = made_for(repo, "here")
    with pytest.raises(SandboxError, match="cd out of it"):
        clones.remove(repo, target.worktree, True, cwd=target.worktree.path / ".git")
    plain = tmp_path / "plain"
    git(tmp_path, "clone", "-q", str(repo), str(plain))
    with pytest.raises(SandboxError, match="not a clone made by `inv new`"):
        clones.remove(repo, worktrees.Worktree(plain, "", "main"), True, cwd=tmp_path)
    assert plain.is_dir() and target.worktree.path.is_dir()


def test_done_finds_a_clone_by_branch_and_by_its_slot(repo: Path) -> None:
    made = clones.create(repo, "feature/one")
    sources = {3: SlotSource(str(made.path), "ktrdr", "feature/one")}
    expected = branches.DoneTarget(repo, made, 3, clone=True)
    assert branches.resolve_done(sources, slot=3) == expected
    assert branches.resolve_done(sources, branch="feature/one") == expected
    assert branches.resolve_done({}, branch="feature/one", repo=repo) == branches.DoneTarget(
        repo, made, None, clone=True
    )


def test_a_clone_of_a_bare_repository_counts_its_branches_as_saved(origin: Path) -> None:
    made = clones.create(origin, "topic", base="main")
    assert made.path == origin.parent / "origin-topic" and (made.path / ".git").is_dir()
    assert git(made.path, "remote", "get-url", "origin") == str(origin)
    assert clones.unsafe_to_remove(made.path).safe  # origin's own commits are not "unpushed"
    commit(made.path, "mine.txt")
    report = clones.unsafe_to_remove(made.path)
    assert isinstance(report, unsaved.Report) and report.unpushed_total == 1


def test_commits_on_a_detached_head_of_the_clone_are_unsaved(repo: Path) -> None:
    # A detached HEAD (or a rebase stopped half way) holds commits no branch has: they die
    # with the clone, so `done` counts them.
    target = made_for(repo, "feature/y")
    path = target.worktree.path
    git(path, "checkout", "-q", "--detach")
    commit(path, "detached.txt")
    with pytest.raises(SandboxError, match="1 commit on no remote") as caught:
        branchflow.check_done(target, False, {})
    assert "add detached.txt" in caught.value.details


def test_commits_on_other_branches_count_while_head_is_unborn(repo: Path) -> None:
    # `git checkout --orphan` leaves HEAD on a branch with no commit yet: the clone's other
    # branches still hold work.
    target = made_for(repo, "feature/y")
    path = target.worktree.path
    git(path, "checkout", "-q", "-b", "side")
    commit(path, "side.txt")
    git(path, "checkout", "-q", "--orphan", "fresh")
    git(path, "rm", "-rqf", ".")
    report = clones.unsafe_to_remove(path)
    assert report.unpushed_total == 1 and report.unpushed == (
        f"{git(path, 'rev-parse', '--short', 'side')} add side.txt",
    )


def test_commits_only_a_tag_made_in_the_clone_reaches_are_unsaved(repo: Path) -> None:
    target = made_for(repo, "feature/y")
    path = target.worktree.path
    git(repo, "checkout", "-q", "-b", "scratch")
    commit(repo, "mine.txt")
    git(repo, "tag", "old")  # the repository's own tag, on no remote: not the clone's work
    git(repo, "checkout", "-q", "main")
    git(path, "fetch", "-q", "--tags", "local")
    assert clones.unsafe_to_remove(path).safe
    commit(path, "release.txt")
    git(path, "tag", "-a", "-m", "release", "v1")
    git(path, "reset", "-q", "--hard", "HEAD~1")  # only the tag has the commit now
    report = clones.unsafe_to_remove(path)
    assert report.unpushed_total == 1 and report.unpushed[0].endswith("add release.txt")
