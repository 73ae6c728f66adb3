"""A branch's checkout as a full clone, for apps whose own tooling wants `.git` to be a directory
(KTRDR's orchestrator refuses a git worktree, whose `.git` is a file).

`inv new` makes the clone at the worktree naming rule's path, with `git clone --no-checkout` of
the repository: on one file system git hard-links the object files, so the clone costs its
checkout and not a second copy of the history, and, unlike `--shared` or `--reference`, it does
not depend on objects the repository may later prune. In the clone:

- `origin` is where the repository's own `origin` points (its push URL too), so `git push` goes
  where it goes from the main checkout; `origin/*` starts as the repository's `origin/*` (read
  from the repository, nothing fetched over the network). A repository without `origin` (a bare
  clone) is itself the clone's `origin`.
- `local` is the repository (when it has an `origin`), to pull its branches.
- the branch starts as a worktree's would (`worktrees.start_of`), tracking the same upstream;
  no other local branch is made.
- `git config ktrdr-sandbox.source` names the repository and `ktrdr-sandbox.branch` the branch:
  only a clone carrying them is ever removed, and `inv done` finds it by them.

`inv done` never loses the clone's work. It refuses, as for a worktree, uncommitted changes,
untracked files, ignored files that are not caches and commits on no `origin` branch, counted
over every branch of the clone and its stash (a worktree's branches and stash live on in the
repository; a clone's die with it). Then it brings the branch back: its commits go into the
repository's branch of that name (created, or moved forward), so the branch stays in the
repository as a worktree's does. When that cannot be a fast-forward (the repository's branch
moved on its own, or is checked out there), `done` refuses; --force then leaves the
repository's branch as it is.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox import lock
from sandbox.branches import unsaved, worktrees
from sandbox.branches.worktrees import REMOTE, Worktree, checked, git, ref_exists
from sandbox.errors import Exit, SandboxError

SOURCE_KEY = "ktrdr-sandbox.source"  # git config of the clone: the repository it came from
BRANCH_KEY = "ktrdr-sandbox.branch"  # and the branch it was made for
LOCAL = "local"  # the clone's remote for the repository, when `origin` is taken


@dataclass(frozen=True)
class BringBack:
    """What `done` does with the clone's branch in the repository."""

    branch: str
    tip: str | None  # the clone's branch; None: the clone has no such branch any more
    moves: bool  # the repository's branch is created or moved forward to `tip`
    refusal: str = ""  # why it cannot be a fast-forward; "" when it can


def _config(path: Path, key: str, environ: Mapping[str, str] | None) -> str | None:
    result = git(path, ["config", "--local", "--get", key], environ)
    return result.stdout.strip() or None if result.ok else None


def source_of(path: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The repository `path` was cloned from by `inv new`; None when `path` is no such clone
    (a worktree, a clone of someone else's, not a checkout)."""
    if not (path / ".git").is_dir():
        return None
    source = _config(path, SOURCE_KEY, environ)
    return Path(source) if source else None


def entry(path: Path, environ: Mapping[str, str] | None = None) -> Worktree:
    """The clone as `inv done` reads a worktree: its path, HEAD and the branch it was made for."""
    head = git(path, ["rev-parse", "--verify", "--quiet", "HEAD"], environ).stdout.strip()
    return Worktree(path, head, _config(path, BRANCH_KEY, environ))


def find(repo: Path, branch: str, environ: Mapping[str, str] | None = None) -> Worktree | None:
    """The clone `inv new` made of `repo` for `branch` (at the naming rule's path), or None."""
    path = worktrees.worktree_path(repo, branch)
    source = source_of(path, environ)
    if source is None or worktrees.real(source) != worktrees.real(repo):
        return None
    found = entry(path, environ)
    return found if found.branch == branch else None


def refuse_existing(repo: Path, branch: str, environ: Mapping[str, str] | None) -> None:
    """Refused when `inv new` already made a clone of `repo` for `branch`."""
    found = find(repo, branch, environ)
    if found is not None:
        raise SandboxError(
            f"branch {branch!r} is already checked out at {found.path} (a clone): work there, "
            f"or `inv done --branch={branch}` first",
            Exit.USAGE,
        )


# ----------------------------------------------------------------------------- creating


def create(
    repo: Path, branch: str, base: str | None = None, environ: Mapping[str, str] | None = None
) -> Worktree:
    """A clone of `repo` for `branch` at the naming rule's path, after the same refusals as a
    worktree (`worktrees.check_new`); anything half made is removed. Serialised with worktree
    creations (`lock.worktree_lock`)."""
    repo = worktrees.check_repo(repo, environ)
    worktrees.validate_branch(repo, branch, environ)
    with lock.worktree_lock(os.environ if environ is None else environ, wait=worktrees.GIT_TIMEOUT):
        refuse_existing(repo, branch, environ)
        path = worktrees.check_free(repo, branch, environ)
        start = worktrees.start_of(repo, branch, base, environ)
        try:
            _clone(repo, path, branch, start, environ)
        except BaseException:
            if path.is_dir():  # made by this call: check_free saw nothing there
                shutil.rmtree(path)
            raise
    return entry(path, environ)


def _clone(
    repo: Path, path: Path, branch: str, start: worktrees.Start, environ: Mapping[str, str] | None
) -> None:
    commit = checked(repo, ["rev-parse", "--verify", f"{start.ref}^{{commit}}"], environ,
                     "reading the start of the branch").stdout.strip()  # fmt: skip
    upstream = _upstream(repo, branch, start, environ)
    url = git(repo, ["remote", "get-url", REMOTE], environ)
    name = LOCAL if url.ok else REMOTE
    checked(repo.parent, ["clone", "--quiet", "--no-checkout", "--origin", name, str(repo),
                          str(path)], environ, f"cloning {repo}")  # fmt: skip
    if url.ok:
        _copy_origin(repo, path, branch, url.stdout.strip(), environ)
    default = worktrees.current_branch(path, environ)
    checked(path, ["checkout", "--quiet", "--no-track", "-B", branch, commit], environ,
            f"checking out {branch}")  # fmt: skip
    if default and default != branch:
        checked(path, ["branch", "--quiet", "-D", default], environ, "removing the clone's default")
    if upstream and ref_exists(path, f"refs/remotes/{upstream}", environ):
        checked(path, ["branch", "--quiet", f"--set-upstream-to={upstream}", branch], environ,
                f"setting {branch}'s upstream")  # fmt: skip
    for key, value in ((SOURCE_KEY, str(repo)), (BRANCH_KEY, branch)):
        checked(path, ["config", "--local", key, value], environ, "marking the clone")


def _upstream(
    repo: Path, branch: str, start: worktrees.Start, environ: Mapping[str, str] | None
) -> str | None:
    """The upstream the branch has (an existing one's, on origin) or gets (origin's branch)."""
    if start.new_branch:
        return start.tracks
    remote = git(repo, ["config", "--get", f"branch.{branch}.remote"], environ).stdout.strip()
    merge = git(repo, ["config", "--get", f"branch.{branch}.merge"], environ).stdout.strip()
    if remote != REMOTE or not merge.startswith("refs/heads/"):
        return None
    return f"{REMOTE}/{merge.removeprefix('refs/heads/')}"


def _copy_origin(
    repo: Path, path: Path, branch: str, url: str, environ: Mapping[str, str] | None
) -> None:
    """The clone's `origin`: the repository's URLs, and its `origin/*` as the repository has
    them (a local fetch from the repository: no network)."""
    checked(path, ["remote", "add", REMOTE, url], environ, "adding origin")
    push = git(repo, ["config", "--get", f"remote.{REMOTE}.pushurl"], environ).stdout.strip()
    if push:
        checked(path, ["remote", "set-url", "--push", REMOTE, push], environ, "origin's push URL")
    # A repository without remote-tracking branches is the bare-clone layout, whose own
    # branches are origin's (`unsaved.saved_elsewhere`): those, less the one made here.
    bare_layout = not git(repo, ["for-each-ref", "--count=1", "refs/remotes/"], environ).stdout
    kept = "refs/heads" if bare_layout else f"refs/remotes/{REMOTE}"
    checked(path, ["fetch", "--quiet", "--no-tags", LOCAL, f"+{kept}/*:refs/remotes/{REMOTE}/*"],
            environ, f"reading {repo}'s {REMOTE} branches")  # fmt: skip
    if bare_layout:
        git(path, ["update-ref", "-d", f"refs/remotes/{REMOTE}/{branch}"], environ)
    head = git(repo, ["symbolic-ref", "--quiet", f"refs/remotes/{REMOTE}/HEAD"], environ)
    if head.ok and head.stdout.strip():
        git(path, ["symbolic-ref", f"refs/remotes/{REMOTE}/HEAD", head.stdout.strip()], environ)


# ----------------------------------------------------------------------------- removing


def unsafe_to_remove(
    path: Path, environ: Mapping[str, str] | None = None, disposable: tuple[str, ...] = ()
) -> unsaved.Report:
    """What deleting the clone would lose: as for a worktree, with commits counted over every
    branch of the clone, its HEAD (detached, or mid-rebase), its stash and the tags made in it,
    saved when an `origin` branch has them."""
    tips = ["--branches"]
    if ref_exists(path, "HEAD", environ):  # not unborn (`git checkout --orphan`)
        tips.insert(0, "HEAD")
    if ref_exists(path, "refs/stash", environ):
        tips.append("refs/stash")
    tips.extend(_own_tags(path, environ))
    report = unsaved.unsafe_to_remove(path, environ, disposable, tips, [f"--remotes={REMOTE}"])
    return dataclasses.replace(report, kind="clone")


def _tags(path: Path, environ: Mapping[str, str] | None) -> dict[str, str]:
    listed = git(path, ["for-each-ref", "--format=%(refname) %(objectname)", "refs/tags/"],
                 environ)  # fmt: skip
    return dict(line.split(" ", 1) for line in listed.stdout.splitlines()) if listed.ok else {}


def _own_tags(path: Path, environ: Mapping[str, str] | None) -> list[str]:
    """The clone's tags that its repository does not have as they are (made or moved in the
    clone): their commits die with it. All of them when the repository cannot be read."""
    source = source_of(path, environ)
    theirs = _tags(source, environ) if source is not None and source.is_dir() else {}
    return sorted(ref for ref, value in _tags(path, environ).items() if theirs.get(ref) != value)


def bring_back(repo: Path, clone: Worktree, environ: Mapping[str, str] | None) -> BringBack:
    """Whether the clone's branch can go into `repo`'s branch of that name as a fast-forward."""
    branch = clone.branch or ""
    tip = git(clone.path, ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], environ)
    if not branch or not tip.ok:
        return BringBack(branch, None, moves=False)
    ours = tip.stdout.strip()
    theirs = git(repo, ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], environ)
    if not theirs.ok:
        return BringBack(branch, ours, moves=True)
    known = theirs.stdout.strip()
    if known == ours:
        return BringBack(branch, ours, moves=False)
    ahead = git(clone.path, ["merge-base", "--is-ancestor", known, ours], environ).ok
    checked_out = worktrees.find(repo, branch, environ)
    if ahead and checked_out is None:
        return BringBack(branch, ours, moves=True)
    why = (
        f"is checked out at {checked_out.path}"
        if checked_out is not None
        else "has commits the clone has not"
    )
    refusal = (
        f"the branch {branch!r} in {repo} {why}, so the clone's {branch} cannot be brought "
        f"back as a fast-forward: push it, or `git pull {LOCAL} {branch}` in {clone.path} and "
        f"re-run; --force leaves {repo}'s {branch} as it is"
    )
    return BringBack(branch, ours, moves=False, refusal=refusal)


def check_removable(
    repo: Path, clone: Worktree, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Refused when `clone` is not a clone `inv new` made of `repo`, or holds `cwd`."""
    source = source_of(clone.path, environ)
    if source is None or worktrees.real(source) != worktrees.real(repo):
        raise SandboxError(
            f"{clone.path} is not a clone made by `inv new` from {repo}: nothing removed",
            Exit.USAGE,
        )
    worktrees.check_not_here(clone.path, cwd, "the clone")


def remove(
    repo: Path,
    clone: Worktree,
    force: bool = False,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """Bring the clone's branch back into `repo` (`bring_back`; refused unless `force` when it
    cannot), then delete the clone's directory. Check `unsafe_to_remove` first."""
    check_removable(repo, clone, environ, cwd)
    back = bring_back(repo, clone, environ)
    if back.refusal and not force:
        raise SandboxError(back.refusal, Exit.UNSAVED_WORK)
    if back.moves:
        # Not forced (no "+"): git itself refuses anything but a fast-forward.
        spec = f"refs/heads/{back.branch}:refs/heads/{back.branch}"
        checked(repo, ["fetch", "--quiet", "--no-tags", str(clone.path), spec], environ,
                f"bringing {back.branch} back into {repo}")  # fmt: skip
    shutil.rmtree(clone.path)
    return clone.path
