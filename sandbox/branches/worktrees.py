"""Git worktrees of the app repository, one per branch: `inv new` makes one, `inv done` removes it.

Naming rule: the worktree of BRANCH lives next to the app repository's main checkout, in
`<parent of the repository>/<repository name>-<BRANCH with every "/" turned into "-">`; e.g.
`~/src/ktrdr` and `feature/risk-limits` give `~/src/ktrdr-feature-risk-limits`. Two branch names
that map to one path (`feature/x` and `feature-x`) cannot both have a worktree: the second is
refused because the path exists.

Removal is `git worktree remove` of the path git itself recorded, and nothing else: no recursive
delete of a computed path, never the main worktree, never the directory this process runs in or
one of its parents (KTRDR's own tooling once lost unpushed work by destroying the current
directory). Every git call goes through `sandbox.runner.run` with an explicit environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import lock, runner
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display

REMOTE = "origin"
GIT_TIMEOUT = 60.0
# Variables that point git at another repository or index (`git rev-parse --local-env-vars`).
# A task started from a git hook inherits them; they would make every call below act on the
# hook's repository instead of the one named.
_REPO_VARIABLES = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_CONFIG",
        "GIT_DIR",
        "GIT_GRAFT_FILE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_OBJECT_DIRECTORY",
        "GIT_PREFIX",
        "GIT_REPLACE_REF_BASE",
        "GIT_SHALLOW_FILE",
        "GIT_WORK_TREE",
    }
)


@dataclass(frozen=True)
class Worktree:
    """One entry of `git worktree list --porcelain`."""

    path: Path  # as git recorded it
    head: str  # commit id, "" for a repository without commits
    branch: str | None  # short name; None when detached or bare
    is_main: bool = False
    bare: bool = False
    locked: str | None = None  # the lock reason ("" when locked without one), None if not
    prunable: str | None = None  # why git would prune it (its directory is gone), else None


@dataclass(frozen=True)
class Base:
    """Where a new branch starts, and why that ref was chosen (shown to the user)."""

    ref: str
    reason: str


# ----------------------------------------------------------------------------- running git


def git_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git: the caller's, without variables that redirect the repository,
    in the C locale (messages we match on), never prompting, taking no optional locks."""
    env = {
        key: value
        for key, value in (os.environ if environ is None else environ).items()
        if key not in _REPO_VARIABLES
    }
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    return env


def git(repo: Path, args: Sequence[str], environ: Mapping[str, str] | None) -> Result:
    return runner.run(["git", "-C", str(repo), *args], env=git_env(environ), timeout=GIT_TIMEOUT)


def checked(
    repo: Path, args: Sequence[str], environ: Mapping[str, str] | None, what: str
) -> Result:
    """Run git; a failure becomes SandboxError(COMMAND) with git's own words as details."""
    result = git(repo, args, environ)
    if not result.ok:
        raise SandboxError(
            f"{what} failed: `{display(result.args)}` exited {result.returncode} (its output "
            "is above); fix what it says and re-run",
            Exit.COMMAND,
            details=result.tail(),
        )
    return result


# ----------------------------------------------------------------------------- checks


def check_repo(path: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The main checkout of the git repository at `path` (a linked worktree or a subdirectory
    leads to it too), or the bare repository that `path` is a worktree of; SandboxError(USAGE)
    when `path` is not in a git repository."""
    if not path.is_dir():
        raise SandboxError(
            f"{path} is not a directory: pass --repo=PATH with PATH a checkout of the app",
            Exit.USAGE,
        )
    probe = git(path, ["rev-parse", "--git-dir"], environ)
    if not probe.ok:
        # git's own reason matters when it is not "not a git repository" (dubious ownership).
        raise SandboxError(
            f"{path} is not a git repository ({probe.tail(1) or 'git says no'}): pass "
            "--repo=PATH with PATH a checkout of the app",
            Exit.USAGE,
        )
    # git always lists the main worktree first; for a bare repository (the "bare clone plus
    # worktrees" layout) that is the bare directory itself.
    return list_worktrees(path, environ)[0].path


def validate_branch(repo: Path, branch: str, environ: Mapping[str, str] | None = None) -> str:
    """`branch` when git accepts it as a branch name, else SandboxError(USAGE)."""
    result = git(repo, ["check-ref-format", "--branch", branch], environ)
    # `@{-1}` and friends pass the check but mean "some other branch": refuse them too.
    if not result.ok or result.stdout.strip() != branch:
        raise SandboxError(
            f"{branch!r} is not a valid git branch name (see `git check-ref-format --help`): "
            "pick another name",
            Exit.USAGE,
        )
    return branch


def worktree_path(repo: Path, branch: str) -> Path:
    """The naming rule: `<repo parent>/<repo name>-<branch, "/" -> "-">` (a bare repository's
    name without its ".git"); refused if the result would not be a plain directory name inside
    the repository's parent."""
    name = f"{repo.name.removesuffix('.git')}-{branch.replace('/', '-')}"
    path = repo.parent / name
    if name in (".", "..") or os.sep in name or path.parent != repo.parent:
        raise SandboxError(
            f"branch {branch!r} gives no usable directory name next to {repo}: pick another name",
            Exit.USAGE,
        )
    return path


def current_branch(path: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """The branch checked out at `path`; None when detached, not a checkout, or gone."""
    if not path.is_dir():
        return None
    result = git(path, ["symbolic-ref", "--quiet", "--short", "HEAD"], environ)
    return (result.stdout.strip() or None) if result.ok else None


def owning_repo(path: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The main checkout of the repository that `path` is a worktree of (for `inv done
    --slot=N`, which knows only the slot's source directory); None when it is not one."""
    if not path.is_dir() or not git(path, ["rev-parse", "--git-dir"], environ).ok:
        return None
    return check_repo(path, environ)


# ----------------------------------------------------------------------------- listing


def parse_worktree_list(output: str) -> list[Worktree]:
    """`git worktree list --porcelain -z`: records of NUL-ended "key value" fields, each
    record ended by an empty field. The first record is the main worktree."""
    found: list[Worktree] = []
    fields: dict[str, str] = {}
    for field in output.split("\0"):
        if field:
            key, _, value = field.partition(" ")
            fields[key] = value
            continue
        if "worktree" in fields:
            branch = fields.get("branch")
            found.append(
                Worktree(
                    path=Path(fields["worktree"]),
                    head=fields.get("HEAD", ""),
                    branch=branch.removeprefix("refs/heads/") if branch else None,
                    is_main=not found,
                    bare="bare" in fields,
                    locked=fields.get("locked"),
                    prunable=fields.get("prunable"),
                )
            )
        fields = {}
    return found


def list_worktrees(repo: Path, environ: Mapping[str, str] | None = None) -> list[Worktree]:
    result = git(repo, ["worktree", "list", "--porcelain", "-z"], environ)
    if result.ok:
        return parse_worktree_list(result.stdout)
    # git before 2.36 (Ubuntu 22.04 ships 2.34) has no -z: lines instead of NULs, which only a
    # path with a newline in it would confuse.
    plain = checked(repo, ["worktree", "list", "--porcelain"], environ, "listing worktrees")
    return parse_worktree_list(plain.stdout.replace("\n", "\0"))


def find(repo: Path, branch: str, environ: Mapping[str, str] | None = None) -> Worktree | None:
    """The worktree that has `branch` checked out, or None."""
    return next((w for w in list_worktrees(repo, environ) if w.branch == branch), None)


def find_path(repo: Path, path: Path, environ: Mapping[str, str] | None = None) -> Worktree | None:
    """The worktree recorded at `path` (symlinks resolved on both sides), or None."""
    wanted = real(path)
    return next((w for w in list_worktrees(repo, environ) if real(w.path) == wanted), None)


def real(path: Path) -> Path:
    return Path(os.path.realpath(path))


# ----------------------------------------------------------------------------- creating


def ref_exists(repo: Path, ref: str, environ: Mapping[str, str] | None) -> bool:
    return git(repo, ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], environ).ok


def default_base(repo: Path, environ: Mapping[str, str] | None = None) -> Base:
    """The remote's main branch as this clone last fetched it: origin/HEAD, else origin/main,
    else origin/master, else the local HEAD. Nothing is fetched (no network behind the user's
    back); a stale origin/main is what `git fetch` fixes."""
    head = git(repo, ["symbolic-ref", "--quiet", f"refs/remotes/{REMOTE}/HEAD"], environ)
    target = head.stdout.strip().removeprefix("refs/remotes/")
    if head.ok and target and ref_exists(repo, f"refs/remotes/{target}", environ):
        return Base(target, f"{REMOTE}/HEAD points to it")
    for name in ("main", "master"):
        if ref_exists(repo, f"refs/remotes/{REMOTE}/{name}", environ):
            return Base(f"{REMOTE}/{name}", f"{REMOTE} has no HEAD; {REMOTE}/{name} exists")
    if not ref_exists(repo, "HEAD", environ):
        raise SandboxError(
            f"{repo} has no commits yet and no {REMOTE}/main: commit or fetch something first, "
            "or pass --base=REF",
            Exit.USAGE,
        )
    local = current_branch(repo, environ)
    reason = f"no {REMOTE}/HEAD, {REMOTE}/main or {REMOTE}/master; using the local HEAD"
    return Base(local or "HEAD", reason)


@dataclass(frozen=True)
class Start:
    """Where `branch` comes from: the existing local branch, origin's branch of that name (the
    new local branch tracks it), or a new branch from a base (tracking nothing)."""

    ref: str  # as the repository names it: the branch, "origin/BRANCH" or the base
    new_branch: bool
    tracks: str | None = None  # "origin/BRANCH" when the new branch tracks it


def start_of(repo: Path, branch: str, base: str | None, environ: Mapping[str, str] | None) -> Start:
    """Where `branch` starts, after every refusal: --base with an existing branch (local or on
    origin), a base that is no commit."""
    if ref_exists(repo, f"refs/heads/{branch}", environ):
        if base is not None:
            raise SandboxError(
                f"branch {branch!r} already exists, so --base={base} would be ignored: drop "
                "--base to check it out, or pick a new branch name",
                Exit.USAGE,
            )
        return Start(branch, new_branch=False)
    if ref_exists(repo, f"refs/remotes/{REMOTE}/{branch}", environ):
        if base is not None:
            raise SandboxError(
                f"branch {branch!r} exists on {REMOTE}, so --base={base} would fork a second "
                f"history under its name: drop --base to check out {REMOTE}/{branch}",
                Exit.USAGE,
            )
        return Start(f"{REMOTE}/{branch}", new_branch=True, tracks=f"{REMOTE}/{branch}")
    start = base if base is not None else default_base(repo, environ).ref
    if not ref_exists(repo, start, environ):
        raise SandboxError(
            f"base {start!r} is not a commit in {repo}: `git fetch` it or pass --base=REF "
            "with an existing branch, tag or commit",
            Exit.USAGE,
        )
    return Start(start, new_branch=True)


def add_command(path: Path, branch: str, start: Start) -> list[str]:
    """The `git worktree add` arguments that check `branch` out at `path` from `start`."""
    if not start.new_branch:
        return ["worktree", "add", str(path), branch]
    if start.tracks:
        return ["worktree", "add", "--track", "-b", branch, str(path), start.ref]
    # --no-track: a new branch made from origin/main must not push to main by default.
    return ["worktree", "add", "--no-track", "-b", branch, str(path), start.ref]


def create(
    repo: Path, branch: str, base: str | None = None, environ: Mapping[str, str] | None = None
) -> Worktree:
    """A worktree for `branch` at the naming rule's path: a new branch from `base` (default
    `default_base`), or the existing local branch, or a local branch tracking origin's branch
    of that name. Refused, with nothing created, when the branch is bad or already checked out
    somewhere, or the path exists; a failed `git worktree add` is rolled back. Creations are
    serialised machine-wide (`lock.worktree_lock`), so a rollback only ever undoes its own."""
    repo = check_repo(repo, environ)
    validate_branch(repo, branch, environ)
    with lock.worktree_lock(os.environ if environ is None else environ, wait=GIT_TIMEOUT):
        return _create_locked(repo, branch, base, environ)


def check_new(
    repo: Path, branch: str, base: str | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The path `create` would make, after every check it makes, changing nothing: `inv new`
    refuses bad input before it claims a slot. (`create` checks again under its lock.)"""
    repo = check_repo(repo, environ)
    validate_branch(repo, branch, environ)
    path = check_free(repo, branch, environ)
    start_of(repo, branch, base, environ)
    return path


def _create_locked(
    repo: Path, branch: str, base: str | None, environ: Mapping[str, str] | None
) -> Worktree:
    path = check_free(repo, branch, environ)
    start = start_of(repo, branch, base, environ)
    result = git(repo, add_command(path, branch, start), environ)
    if not result.ok:
        _roll_back(repo, branch, path, start.new_branch, environ)
        raise SandboxError(
            f"`{display(result.args)}` failed (its output is above); nothing was kept: fix "
            "what it says and re-run",
            Exit.COMMAND,
            details=result.tail(),
        )
    made = find(repo, branch, environ)
    if made is None:  # git said yes but lists nothing: never hand back a path we cannot vouch for
        raise SandboxError(
            f"git reported success but lists no worktree for {branch!r}: run `git -C {repo} "
            "worktree list` and re-run",
            Exit.COMMAND,
        )
    return made


def check_free(repo: Path, branch: str, environ: Mapping[str, str] | None) -> Path:
    """The naming rule's path for `branch`, refused when the branch is checked out somewhere
    or the path exists."""
    path = worktree_path(repo, branch)
    existing = find(repo, branch, environ)
    if existing is not None:
        raise SandboxError(
            f"branch {branch!r} is already checked out at {existing.path}: work there, or "
            f"`inv done --branch={branch}` first",
            Exit.USAGE,
        )
    if os.path.lexists(path):
        other = find_path(repo, path, environ)
        if other is not None:
            raise SandboxError(
                f"{path} is already the worktree of {other.branch or 'a detached HEAD'!r} (the "
                f"names map to one directory): pick another name for {branch!r}",
                Exit.USAGE,
            )
        raise SandboxError(
            f"{path} already exists (the worktree path for {branch!r}): move it away or pick "
            "another branch name",
            Exit.USAGE,
        )
    return path


def _roll_back(
    repo: Path, branch: str, path: Path, created_branch: bool, environ: Mapping[str, str] | None
) -> None:
    """Undo a half-done `git worktree add` (a failing post-checkout hook leaves the worktree
    registered): only what that command made, through git, never a plain delete."""
    if find_path(repo, path, environ) is not None:
        git(repo, ["worktree", "remove", "--force", str(path)], environ)
    git(repo, ["worktree", "prune"], environ)
    if created_branch and find(repo, branch, environ) is None:
        git(repo, ["branch", "-D", branch], environ)


# ----------------------------------------------------------------------------- removing


def inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def remove(
    repo: Path,
    worktree_path: Path,
    force: bool = False,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """`git worktree remove [--force] <the path git recorded>`, and only that; the branch
    stays. Refused when the path is not one of `repo`'s linked worktrees, is the main
    worktree, is locked, or holds `cwd` (default: this process's working directory). Returns
    the removed path. Check `unsafe_to_remove` first: with `force` git discards changes."""
    entry = check_removable(repo, worktree_path, environ, cwd)
    args = ["worktree", "remove", *(["--force"] if force else []), str(entry.path)]
    checked(check_repo(repo, environ), args, environ, f"removing the worktree {entry.path}")
    return entry.path


def check_removable(
    repo: Path,
    worktree_path: Path,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Worktree:
    """`remove`'s refusals, changing nothing: `inv done` runs them before it takes the slot
    down, so a refused removal leaves the slot as it was. Returns git's entry."""
    repo = check_repo(repo, environ)
    entry = find_path(repo, worktree_path, environ)
    if entry is None:
        raise SandboxError(
            f"{worktree_path} is not a worktree of {repo} (see `git -C {repo} worktree list`): "
            "nothing removed",
            Exit.USAGE,
        )
    if entry.is_main:
        raise SandboxError(
            f"{entry.path} is the main checkout of the repository, not a branch worktree: "
            "nothing removed",
            Exit.USAGE,
        )
    if entry.locked is not None:
        reason = f" ({entry.locked})" if entry.locked else ""
        raise SandboxError(
            f"the worktree {entry.path} is locked{reason}: `git worktree unlock {entry.path}` "
            "if it may go, then re-run",
            Exit.USAGE,
        )
    check_not_here(entry.path, cwd, "the worktree")
    return entry


def check_not_here(path: Path, cwd: Path | None, what: str) -> None:
    """Refused when `cwd` (default: this process's working directory) is `path` or inside it."""
    try:
        here = real(cwd if cwd is not None else Path.cwd())
    except FileNotFoundError:  # our directory was deleted under us: nothing of it to guard
        return
    if inside(here, real(path)) or inside(here, path):
        raise SandboxError(
            f"the current directory {here} is inside {what} {path}: cd out of it "
            "(e.g. `cd ~`) and re-run",
            Exit.USAGE,
        )
