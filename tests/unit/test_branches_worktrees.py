"""Branch worktrees against real git: a bare "origin" in a temp dir, clones of it, real commits."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.branches import unsaved, worktrees
from sandbox.errors import Exit, SandboxError
from sandbox.runner import run
from tests.unit.support.gitrepos import commit, git, isolated_git, origin, repo, template

USED_FIXTURES = (isolated_git, origin, repo, template)  # pytest finds them by name here


def listed(repo: Path) -> list[Path]:
    return [w.path for w in worktrees.list_worktrees(repo)]


def branches(repo: Path) -> list[str]:
    return git(repo, "branch", "--format=%(refname:short)").splitlines()


# ----------------------------------------------------------------------------- naming, checks


def test_naming_rule() -> None:
    assert worktrees.worktree_path(Path("/src/ktrdr.git"), "x") == Path("/src/ktrdr-x")
    repo = Path("/home/dev/src/ktrdr")
    assert worktrees.worktree_path(repo, "fix-1") == Path("/home/dev/src/ktrdr-fix-1")
    assert worktrees.worktree_path(repo, "feature/risk/limits") == Path(
        "/home/dev/src/ktrdr-feature-risk-limits"
    )


@pytest.mark.parametrize("bad", ["a..b", "-x", "@{-1}", "has space", "end.lock", "x/", "a~1"])
def test_validate_branch_refuses(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SandboxError) as caught:
        worktrees.validate_branch(tmp_path, bad)
    assert caught.value.code == Exit.USAGE
    assert "not a valid git branch name" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_validate_branch_accepts(tmp_path: Path) -> None:
    assert worktrees.validate_branch(tmp_path, "feature/x-1") == "feature/x-1"


def test_check_repo(tmp_path: Path, repo: Path, origin: Path) -> None:
    (repo / "sub").mkdir()
    assert worktrees.check_repo(repo / "sub") == repo
    plain = tmp_path / "plain"
    plain.mkdir()
    for path, words in ((plain, "is not a git repository"), (tmp_path / "nope", "not a dir")):
        with pytest.raises(SandboxError, match=words) as caught:
            worktrees.check_repo(path)
        assert caught.value.code == Exit.USAGE
    assert worktrees.check_repo(origin) == origin  # a bare repository is its own main entry


def test_check_repo_of_a_linked_worktree_is_the_main_checkout(repo: Path) -> None:
    made = worktrees.create(repo, "one")
    assert worktrees.check_repo(made.path) == repo
    assert worktrees.owning_repo(made.path) == repo
    assert worktrees.owning_repo(repo.parent) is None


# ----------------------------------------------------------------------------- default base


def test_default_base_is_origin_head(repo: Path) -> None:
    base = worktrees.default_base(repo)
    assert base.ref == "origin/main"
    assert "origin/HEAD" in base.reason


def test_default_base_without_origin_head(repo: Path) -> None:
    git(repo, "remote", "set-head", "origin", "--delete")
    assert worktrees.default_base(repo) == worktrees.Base(
        "origin/main", "origin has no HEAD; origin/main exists"
    )


def test_default_base_master(tmp_path: Path) -> None:
    bare = tmp_path / "o.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "master", str(bare))
    seed = tmp_path / "s"
    git(tmp_path, "init", "-q", "-b", "master", str(seed))
    commit(seed, "a")
    git(seed, "push", "-q", str(bare), "master")
    git(seed, "remote", "add", "origin", str(bare))
    git(seed, "fetch", "-q", "origin")
    assert worktrees.default_base(seed).ref == "origin/master"


def test_default_base_local_head_and_empty(tmp_path: Path) -> None:
    local = tmp_path / "local"
    git(tmp_path, "init", "-q", "-b", "trunk", str(local))
    with pytest.raises(SandboxError, match="no commits yet") as caught:
        worktrees.default_base(local)
    assert caught.value.code == Exit.USAGE
    commit(local, "a")
    base = worktrees.default_base(local)
    assert base.ref == "trunk"
    assert "local HEAD" in base.reason


# ----------------------------------------------------------------------------- create, find


def test_create_twice_gives_two_worktrees(repo: Path) -> None:
    one = worktrees.create(repo, "feature/one")
    two = worktrees.create(repo, "two")
    assert one.path == repo.parent / "app-feature-one"
    assert two.path == repo.parent / "app-two"
    assert (one.branch, two.branch) == ("feature/one", "two")
    assert listed(repo) == [repo, one.path, two.path]
    main_commit = git(repo, "rev-parse", "origin/main")
    assert one.head == two.head == main_commit
    assert (one.path / "README").is_file()
    # No upstream: a new branch made from origin/main must not push to main.
    result = run(
        ["git", "-C", str(one.path), "rev-parse", "--abbrev-ref", "@{upstream}"],
        env=worktrees.git_env(),
    )
    assert not result.ok
    assert worktrees.find(repo, "two") == two
    assert worktrees.find(repo, "three") is None


def test_bare_clone_with_worktrees(tmp_path: Path, origin: Path) -> None:
    """The "bare clone plus worktrees" layout: worktrees go next to the bare directory."""
    bare = tmp_path / "src" / "app.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(bare))
    one = worktrees.create(bare, "one")
    assert one.path == tmp_path / "src" / "app-one"
    assert worktrees.check_repo(one.path) == bare
    assert one.head == git(bare, "rev-parse", "main")
    worktrees.remove(bare, one.path, cwd=tmp_path)
    assert listed(bare) == [bare]


def test_create_from_base(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD~1")
    made = worktrees.create(repo, "old", base=first)
    assert made.head == first


def test_create_checks_out_existing_branches(repo: Path) -> None:
    git(repo, "branch", "local-only")
    local = worktrees.create(repo, "local-only")
    assert local.branch == "local-only"
    remote = worktrees.create(repo, "feature/remote-only")
    assert (remote.path / "remote.txt").is_file()
    upstream = git(remote.path, "rev-parse", "--abbrev-ref", "@{upstream}")
    assert upstream == "origin/feature/remote-only"


def refused(repo: Path, words: str, branch: str, base: str | None = None) -> None:
    """`create` says one line with `words`, and neither a worktree nor a branch appears."""
    before = (listed(repo), branches(repo), sorted(os.listdir(repo.parent)))
    with pytest.raises(SandboxError, match=words) as caught:
        worktrees.create(repo, branch, base=base)
    assert "\n" not in str(caught.value)
    assert caught.value.code == Exit.USAGE
    assert (listed(repo), branches(repo), sorted(os.listdir(repo.parent))) == before


def test_create_refusals_touch_nothing(repo: Path) -> None:
    (repo.parent / "app-taken").mkdir()
    refused(repo, "already exists", "taken")
    refused(repo, "not a valid git branch name", "bad..name")
    refused(repo, "is not a commit", "fresh", base="no-such-ref")
    refused(repo, "already checked out at", "main")
    git(repo, "branch", "existing")
    refused(repo, "already exists, so --base", "existing", base="origin/main")
    refused(repo, "exists on origin", "feature/remote-only", base="origin/main")


# Two processes create one branch's worktree at once: one wins, the other is refused, and the
# loser's clean-up must not touch the winner's worktree.
CREATE = """
import sys, time
from pathlib import Path
from sandbox.branches import worktrees
from sandbox.errors import SandboxError
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
try:
    print("made", worktrees.create(Path(sys.argv[1]), "same").path)
except SandboxError as exc:
    print("refused", int(exc.code), exc)
"""


def test_concurrent_creates_of_one_branch(repo: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    child = f"{sys.executable} -c '{CREATE}' {repo} {go}"
    both = f"{child} > {tmp_path}/a & {child} > {tmp_path}/b & sleep 0.5; touch {go}; wait"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert run(["sh", "-c", both], env=env, timeout=120).ok
    outcomes = sorted((tmp_path / name).read_text() for name in ("a", "b"))
    made = repo.parent / "app-same"
    assert outcomes[0] == f"made {made}\n"
    assert outcomes[1].startswith("refused 2 branch 'same' is already checked out at")
    assert worktrees.find(repo, "same") is not None
    assert (made / "README").is_file()


def test_colliding_names_refused(repo: Path) -> None:
    worktrees.create(repo, "feature/x")
    refused(repo, "is already the worktree of 'feature/x'", "feature-x")


def test_failed_add_is_rolled_back(repo: Path) -> None:
    """A post-checkout hook that fails makes `git worktree add` fail after it made the
    worktree: nothing of it may stay."""
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\necho hook refuses >&2\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    before = (listed(repo), branches(repo), sorted(os.listdir(repo.parent)))
    with pytest.raises(SandboxError, match="nothing was kept") as caught:
        worktrees.create(repo, "hooked")
    assert caught.value.code == Exit.COMMAND
    assert "hook refuses" in caught.value.details
    assert (listed(repo), branches(repo), sorted(os.listdir(repo.parent))) == before


# ----------------------------------------------------------------------------- what would be lost


def test_fresh_worktree_is_safe(repo: Path) -> None:
    made = worktrees.create(repo, "clean")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.safe
    assert report.lines() == []


def test_edits_git_status_is_told_to_skip_are_listed(repo: Path) -> None:
    """`update-index --skip-worktree` (or `--assume-unchanged`) hides a tracked file's edits
    from `git status`, and `git worktree remove` deleted them: a local config's edits."""
    made = worktrees.create(repo, "hidden")
    commit(made.path, "config.local", "db=origin\n")
    commit(made.path, "same.cfg", "kept\n")
    git(made.path, "push", "-q", "origin", "hidden")
    git(made.path, "update-index", "--skip-worktree", "config.local", "same.cfg")
    git(made.path, "update-index", "--assume-unchanged", "README")
    assert unsaved.unsafe_to_remove(made.path).safe  # marked, but as committed
    (made.path / "config.local").write_text("db=mine, written nowhere else\n")
    (made.path / "README").write_text("edited\n")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.changes == ("M  README (assume-unchanged)", "M  config.local (skip-worktree)")
    (made.path / "config.local").unlink()  # a sparse checkout's absent file is no edit
    assert unsaved.unsafe_to_remove(made.path).changes == ("M  README (assume-unchanged)",)


def test_untracked_file_and_unpushed_commit_are_listed(repo: Path) -> None:
    made = worktrees.create(repo, "busy")
    sha = commit(made.path, "work.py")
    (made.path / "notes.txt").write_text("mine\n")
    (made.path / "debug.log").write_text("ignored\n")
    (made.path / "README").write_text("changed\n")
    report = unsaved.unsafe_to_remove(made.path)
    assert not report.safe
    assert report.changes == (" M README",)
    assert report.untracked == ("notes.txt",)
    assert report.ignored == ("debug.log",)  # ignored, but not a cache: someone's work
    assert report.unpushed == (f"{sha[:7]} add work.py",)
    assert report.lines() == [
        "uncommitted changes:",
        "   M README",
        "untracked files:",
        "  notes.txt",
        "ignored files that are not caches:",
        "  debug.log",
        "commits on no remote:",
        f"  {sha[:7]} add work.py",
    ]
    assert report.summary() == (
        f"the worktree {made.path} has 1 uncommitted change, 1 untracked file, 1 ignored file "
        "(not a cache), 1 commit on no remote: commit and push them, move them out (or delete "
        "what you do not need), or re-run with --force to throw them away"
    )


def ignoring(path: Path, *patterns: str) -> None:
    """Ignore `patterns` in the worktree without a commit (.git/info/exclude is shared)."""
    exclude = Path(git(path, "rev-parse", "--git-path", "info/exclude"))
    exclude = exclude if exclude.is_absolute() else path / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text("\n".join(patterns) + "\n")


def test_ignored_work_is_listed_but_caches_are_not(repo: Path) -> None:
    made = worktrees.create(repo, "ignored")
    ignoring(made.path, "models/", "*.secret", "__pycache__/", ".venv/", "*.pyc", "node_modules/")
    (made.path / "models").mkdir()
    (made.path / "models" / "net.pt").write_bytes(b"\0" * 1024)
    (made.path / "prod.secret").write_text("token\n")
    for cache in ("__pycache__/a.cpython-311.pyc", ".venv/bin/python", "pkg/__pycache__/b.pyc",
                  "loose.pyc", "web/node_modules/x/index.js"):  # fmt: skip
        (made.path / cache).parent.mkdir(parents=True, exist_ok=True)
        (made.path / cache).write_text("cache\n")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.ignored == ("models/", "prod.secret")
    assert report.ignored_total == 2
    assert not report.safe
    assert report.at_risk() == ["2 ignored files (not caches)"]
    for cache in ("__pycache__/a.pyc", "pkg/__pycache__/", ".venv/", "x.pyo", "a/node_modules/"):
        assert unsaved.is_cache(cache), cache
    for work in ("models/", "prod.secret", "pyc/", "venv.pt", "a.pyc.bak", ".venvs/"):
        assert not unsaved.is_cache(work), work


def test_only_caches_ignored_is_safe(repo: Path) -> None:
    made = worktrees.create(repo, "caches")
    ignoring(made.path, "__pycache__/", ".pytest_cache/")
    (made.path / "__pycache__").mkdir()
    (made.path / "__pycache__" / "m.pyc").write_text("x")
    (made.path / ".pytest_cache").mkdir()
    assert unsaved.unsafe_to_remove(made.path).safe


def test_long_ignored_list_is_cut(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unsaved, "SHOWN_IGNORED", 2)
    made = worktrees.create(repo, "lots")
    for n in range(5):
        (made.path / f"run{n}.log").write_text("x\n")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.ignored == ("run0.log", "run1.log")
    assert report.ignored_total == 5
    assert report.lines()[-1] == "  ... and 3 more"


def bare_layout(tmp_path: Path, origin: Path) -> Path:
    """The documented bare-clone layout: `git clone --bare`, no remote-tracking refs."""
    bare = tmp_path / "src" / "ktrdr.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(bare))
    assert git(bare, "for-each-ref", "refs/remotes/") == ""
    return bare


def test_bare_layout_counts_only_the_branchs_own_commits(tmp_path: Path, origin: Path) -> None:
    bare = bare_layout(tmp_path, origin)
    made = worktrees.create(bare, "feature/x", base="main")
    assert unsaved.unsafe_to_remove(made.path).safe  # origin's own commits are not "unpushed"
    sha = commit(made.path, "mine.py")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.unpushed == (f"{sha[:7]} add mine.py",)
    assert report.unpushed_total == 1


def test_bare_layout_a_commit_another_branch_has_is_saved(tmp_path: Path, origin: Path) -> None:
    bare = bare_layout(tmp_path, origin)
    made = worktrees.create(bare, "topic", base="main")
    sha = commit(made.path, "shared.py")
    git(bare, "branch", "keep", sha)
    assert unsaved.unsafe_to_remove(made.path).safe
    git(bare, "branch", "-D", "keep")
    git(bare, "tag", "v1", sha)
    assert unsaved.unsafe_to_remove(made.path).safe


def test_bare_layout_detached_head_counts_every_unreached_commit(
    tmp_path: Path, origin: Path
) -> None:
    bare = bare_layout(tmp_path, origin)
    made = worktrees.create(bare, "loose", base="main")
    git(made.path, "checkout", "-q", "--detach")
    commit(made.path, "a.py")
    assert unsaved.unsafe_to_remove(made.path).unpushed_total == 1


def test_with_remote_refs_a_local_branch_is_not_a_remote(repo: Path) -> None:
    made = worktrees.create(repo, "local")
    sha = commit(made.path, "l.py")
    git(repo, "branch", "copy", sha)  # a second local branch is not a push
    assert unsaved.unsafe_to_remove(made.path).unpushed_total == 1


def test_files_the_sandbox_wrote_are_disposable(repo: Path) -> None:
    made = worktrees.create(repo, "up")
    (made.path / ".env.sandbox").write_text("KTRDR_API_PORT=8001\n")
    assert unsaved.unsafe_to_remove(made.path).untracked == (".env.sandbox",)
    assert unsaved.unsafe_to_remove(made.path, disposable={".env.sandbox"}).safe


def test_pushed_commit_is_safe(repo: Path) -> None:
    made = worktrees.create(repo, "pushed")
    commit(made.path, "work.py")
    assert unsaved.unsafe_to_remove(made.path).unpushed_total == 1
    git(made.path, "push", "-q", "origin", "pushed")
    assert unsaved.unsafe_to_remove(made.path).safe


def test_long_unpushed_list_is_cut(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unsaved, "SHOWN_COMMITS", 2)
    made = worktrees.create(repo, "many")
    for n in range(5):
        commit(made.path, f"f{n}")
    report = unsaved.unsafe_to_remove(made.path)
    assert report.unpushed_total == 5
    assert [line.split(" ", 1)[1] for line in report.unpushed] == ["add f4", "add f3"]
    assert report.lines()[-1] == "  ... and 3 more"
    assert "5 commits on no remote" in report.summary()


def test_parse_status_renames_and_staged() -> None:
    output = "R  new.py\0old.py\0A  added.py\0?? dir/u.txt\0 D gone.py\0"
    changes, untracked = unsaved.parse_status(output)
    assert changes == ["R  old.py -> new.py", "A  added.py", " D gone.py"]
    assert untracked == ["dir/u.txt"]


# ----------------------------------------------------------------------------- remove


def test_remove_leaves_the_sibling_untouched(repo: Path) -> None:
    one = worktrees.create(repo, "one")
    two = worktrees.create(repo, "two")
    (two.path / "notes.txt").write_text("sibling's work\n")
    sibling_head = commit(two.path, "sibling.py")
    assert worktrees.remove(repo, one.path, cwd=repo) == one.path
    assert not one.path.exists()
    assert listed(repo) == [repo, two.path]
    assert (two.path / "notes.txt").read_text() == "sibling's work\n"
    assert git(two.path, "rev-parse", "HEAD") == sibling_head
    assert "one" in branches(repo)  # the branch stays; only the worktree goes


def test_remove_dirty_needs_force(repo: Path) -> None:
    made = worktrees.create(repo, "dirty")
    (made.path / "notes.txt").write_text("x\n")
    with pytest.raises(SandboxError) as caught:
        worktrees.remove(repo, made.path, cwd=repo)
    assert caught.value.code == Exit.COMMAND
    assert (made.path / "notes.txt").is_file()
    worktrees.remove(repo, made.path, force=True, cwd=repo)
    assert not made.path.exists()


def test_remove_refuses_the_current_directory_and_its_parents(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = worktrees.create(repo, "here")
    (made.path / "deep" / "er").mkdir(parents=True)
    for cwd in (made.path, made.path / "deep" / "er"):
        monkeypatch.chdir(cwd)
        with pytest.raises(SandboxError, match="is inside the worktree") as caught:
            worktrees.remove(repo, made.path, force=True)
        assert caught.value.code == Exit.USAGE
        assert made.path in listed(repo)
    monkeypatch.chdir(repo)
    worktrees.remove(repo, made.path)
    assert made.path not in listed(repo)


def test_remove_refuses_a_path_git_does_not_list(repo: Path) -> None:
    made = worktrees.create(repo, "real")
    stranger = repo.parent / "app-stranger"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep\n")
    for path in (stranger, made.path / "sub", repo.parent):
        with pytest.raises(SandboxError, match="is not a worktree of") as caught:
            worktrees.remove(repo, path, force=True, cwd=repo)
        assert caught.value.code == Exit.USAGE
    assert (stranger / "precious.txt").read_text() == "keep\n"
    assert made.path in listed(repo)


def test_remove_refuses_the_main_worktree_and_locked_ones(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="main checkout"):
        worktrees.remove(repo, repo, force=True, cwd=tmp_path)
    made = worktrees.create(repo, "locked")
    git(repo, "worktree", "lock", "--reason", "on a USB disk", str(made.path))
    with pytest.raises(SandboxError, match=r"is locked \(on a USB disk\)"):
        worktrees.remove(repo, made.path, force=True, cwd=tmp_path)
    assert made.path.is_dir()


def test_remove_through_a_symlink_uses_the_recorded_path(repo: Path, tmp_path: Path) -> None:
    made = worktrees.create(repo, "linked")
    link = tmp_path / "shortcut"
    link.symlink_to(made.path)
    assert worktrees.remove(repo, link, cwd=tmp_path) == made.path
    assert link.is_symlink()  # the link itself is not ours to delete
    assert not made.path.exists()


def test_remove_of_a_worktree_deleted_by_hand(repo: Path, tmp_path: Path) -> None:
    made = worktrees.create(repo, "gone")
    run(["git", "-C", str(repo), "worktree", "list"], env=worktrees.git_env())
    for child in made.path.iterdir():  # a user's `rm -rf`, done here by hand on our own tree
        if child.is_file():
            child.unlink()
    (made.path / ".git").unlink(missing_ok=True)
    made.path.rmdir()
    [entry] = [w for w in worktrees.list_worktrees(repo) if w.branch == "gone"]
    assert entry.prunable is not None
    assert unsaved.unsafe_to_remove(made.path).safe
    worktrees.remove(repo, made.path, cwd=tmp_path)
    assert worktrees.find(repo, "gone") is None


def test_current_branch(repo: Path, tmp_path: Path) -> None:
    made = worktrees.create(repo, "feature/b")
    assert worktrees.current_branch(made.path) == "feature/b"
    git(made.path, "checkout", "-q", "--detach")
    assert worktrees.current_branch(made.path) is None
    assert worktrees.current_branch(tmp_path / "missing") is None


def test_parse_worktree_list() -> None:
    output = (
        "worktree /src/app\0HEAD 1111\0branch refs/heads/main\0\0"
        "worktree /src/app-x\0HEAD 2222\0detached\0locked\0\0"
        "worktree /src/app-y\0HEAD 3333\0branch refs/heads/y/z\0locked why\0"
        "prunable gitdir file points to non-existent location\0\0"
    )
    main, x, y = worktrees.parse_worktree_list(output)
    assert main == worktrees.Worktree(Path("/src/app"), "1111", "main", is_main=True)
    assert x == worktrees.Worktree(Path("/src/app-x"), "2222", None, locked="")
    assert y.branch == "y/z" and y.locked == "why" and y.prunable is not None
    [bare] = worktrees.parse_worktree_list("worktree /src/b.git\0bare\0\0")
    assert bare.bare and bare.is_main and bare.branch is None


def test_parse_worktree_list_without_z() -> None:
    """What `list_worktrees` makes of git < 2.36's newline-separated porcelain output."""
    output = "worktree /src/app\nHEAD 1111\nbranch refs/heads/main\n\nworktree /src/app-x\n"
    output += "HEAD 2222\nbranch refs/heads/x\n\n"
    assert worktrees.parse_worktree_list(output.replace("\n", "\0")) == [
        worktrees.Worktree(Path("/src/app"), "1111", "main", is_main=True),
        worktrees.Worktree(Path("/src/app-x"), "2222", "x"),
    ]


def test_old_git_without_z(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git that rejects `worktree list -z` as git 2.34 does: the listing still works."""
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" worktree list "*" -z "*)\n'
        '  echo "error: unknown switch \\`z\'" >&2; exit 129;;\n'
        "esac\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert not run(["git", "-C", str(repo), "worktree", "list", "-z"], env=dict(os.environ)).ok
    made = worktrees.create(repo, "old-git")
    assert worktrees.find(repo, "old-git") == made
    assert listed(repo) == [repo, made.path]


def test_git_env_drops_repository_overrides() -> None:
    env = worktrees.git_env({"GIT_DIR": "/elsewhere", "GIT_WORK_TREE": "/x", "PATH": "/bin"})
    assert "GIT_DIR" not in env and "GIT_WORK_TREE" not in env
    assert env["PATH"] == "/bin"
    assert env["LC_ALL"] == "C"


@pytest.mark.parametrize(
    ("name", "cache"),
    [
        ("ktrdr.egg-info/", True),
        ("src/ktrdr.egg-info/PKG-INFO", True),
        (".coverage", True),
        (".coverage.host.123", True),
        ("htmlcov/index.html", True),
        (".tox/", True),
        (".hypothesis/examples/x", True),
        ("docs/.DS_Store", True),
        ("models/v1/model.pt", False),
        ("prod.secret", False),
        ("run.log", False),
        ("coverage.json", False),
    ],
)
def test_what_counts_as_a_cache(name: str, cache: bool) -> None:
    assert unsaved.is_cache(name) is cache
