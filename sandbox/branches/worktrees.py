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

import fnmatch
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import picker, runner
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display

REMOTE = "origin"
GIT_TIMEOUT = 60.0
SHOWN_COMMITS = 20  # an unpushed list longer than this is cut, with a count of the rest
SHOWN_IGNORED = 20  # likewise for ignored files that are not caches

# Ignored paths that are build caches: made again by a build or a test run, so `inv done`
# removes them without asking. Everything else git ignores (`models/*.pt`, `prod.secret`,
# `*.log`) may be work that exists nowhere else: listed, and removed only with --force.
# A path is a cache when one of its directories is named in CACHE_DIRS, or its file name
# matches CACHE_FILES. Kept short on purpose: a missing entry costs a --force, a wrong one
# costs someone's file.
CACHE_DIRS = frozenset(
    {
        "__pycache__",
        ".venv",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "node_modules",
        ".nox",
        ".tox",
        ".hypothesis",
        "htmlcov",
    }
)
CACHE_FILES = ("*.pyc", "*.pyo", ".coverage", ".coverage.*", ".DS_Store")
# Directories an install or a build writes under a name of their own (`ktrdr.egg-info/`).
CACHE_DIR_SUFFIXES = (".egg-info",)

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


@dataclass(frozen=True)
class Report:
    """What removing a worktree would lose. Each entry is one line to show the user."""

    path: Path
    changes: tuple[str, ...] = ()  # tracked files changed or staged, "M  src/app.py"
    untracked: tuple[str, ...] = ()  # untracked files, ignored ones excluded
    unpushed: tuple[str, ...] = ()  # commits on no remote, "abc1234 subject"
    unpushed_total: int = 0  # unpushed may be cut at SHOWN_COMMITS; this is the full count
    ignored: tuple[str, ...] = ()  # ignored files that are not caches ("models/", "a.secret")
    ignored_total: int = 0  # ignored may be cut at SHOWN_IGNORED; this is the full count

    @property
    def safe(self) -> bool:
        return not (self.changes or self.untracked or self.unpushed_total or self.ignored_total)

    def at_risk(self) -> list[str]:
        """Each guard that fires, counted: "2 untracked files", "1 ignored file (not a
        cache)". `inv done --force` names exactly these as what it overrides."""
        parts = [
            _count(len(self.changes), "uncommitted change"),
            _count(len(self.untracked), "untracked file"),
            _count(self.ignored_total, "ignored file (not a cache)", "ignored files (not caches)"),
            _count(self.unpushed_total, "commit on no remote", "commits on no remote"),
        ]
        return [part for part in parts if part]

    def lines(self) -> list[str]:
        """Everything at risk, grouped under headings, for the terminal."""
        found: list[str] = []
        for heading, entries, total in (
            ("uncommitted changes:", self.changes, len(self.changes)),
            ("untracked files:", self.untracked, len(self.untracked)),
            ("ignored files that are not caches:", self.ignored, self.ignored_total),
            ("commits on no remote:", self.unpushed, self.unpushed_total),
        ):
            if entries:
                found.append(heading)
                found.extend(f"  {entry}" for entry in entries)
            if total > len(entries):
                found.append(f"  ... and {total - len(entries)} more")
        return found

    def summary(self) -> str:
        """One line: what is at risk, and what to do."""
        return (
            f"the worktree {self.path} has {', '.join(self.at_risk())}: commit and push them, "
            "move them out (or delete what you do not need), or re-run with --force to throw "
            "them away"
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    if n == 0:
        return ""
    return f"1 {one}" if n == 1 else f"{n} {many or one + 's'}"


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


def _git(repo: Path, args: Sequence[str], environ: Mapping[str, str] | None) -> Result:
    return runner.run(["git", "-C", str(repo), *args], env=git_env(environ), timeout=GIT_TIMEOUT)


def _checked(
    repo: Path, args: Sequence[str], environ: Mapping[str, str] | None, what: str
) -> Result:
    """Run git; a failure becomes SandboxError(COMMAND) with git's own words as details."""
    result = _git(repo, args, environ)
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
    probe = _git(path, ["rev-parse", "--git-dir"], environ)
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
    result = _git(repo, ["check-ref-format", "--branch", branch], environ)
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
    result = _git(path, ["symbolic-ref", "--quiet", "--short", "HEAD"], environ)
    return (result.stdout.strip() or None) if result.ok else None


def owning_repo(path: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The main checkout of the repository that `path` is a worktree of (for `inv done
    --slot=N`, which knows only the slot's source directory); None when it is not one."""
    if not path.is_dir() or not _git(path, ["rev-parse", "--git-dir"], environ).ok:
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
    result = _git(repo, ["worktree", "list", "--porcelain", "-z"], environ)
    if result.ok:
        return parse_worktree_list(result.stdout)
    # git before 2.36 (Ubuntu 22.04 ships 2.34) has no -z: lines instead of NULs, which only a
    # path with a newline in it would confuse.
    plain = _checked(repo, ["worktree", "list", "--porcelain"], environ, "listing worktrees")
    return parse_worktree_list(plain.stdout.replace("\n", "\0"))


def find(repo: Path, branch: str, environ: Mapping[str, str] | None = None) -> Worktree | None:
    """The worktree that has `branch` checked out, or None."""
    return next((w for w in list_worktrees(repo, environ) if w.branch == branch), None)


def find_path(repo: Path, path: Path, environ: Mapping[str, str] | None = None) -> Worktree | None:
    """The worktree recorded at `path` (symlinks resolved on both sides), or None."""
    wanted = _real(path)
    return next((w for w in list_worktrees(repo, environ) if _real(w.path) == wanted), None)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


# ----------------------------------------------------------------------------- creating


def _ref_exists(repo: Path, ref: str, environ: Mapping[str, str] | None) -> bool:
    return _git(repo, ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], environ).ok


def default_base(repo: Path, environ: Mapping[str, str] | None = None) -> Base:
    """The remote's main branch as this clone last fetched it: origin/HEAD, else origin/main,
    else origin/master, else the local HEAD. Nothing is fetched (no network behind the user's
    back); a stale origin/main is what `git fetch` fixes."""
    head = _git(repo, ["symbolic-ref", "--quiet", f"refs/remotes/{REMOTE}/HEAD"], environ)
    target = head.stdout.strip().removeprefix("refs/remotes/")
    if head.ok and target and _ref_exists(repo, f"refs/remotes/{target}", environ):
        return Base(target, f"{REMOTE}/HEAD points to it")
    for name in ("main", "master"):
        if _ref_exists(repo, f"refs/remotes/{REMOTE}/{name}", environ):
            return Base(f"{REMOTE}/{name}", f"{REMOTE} has no HEAD; {REMOTE}/{name} exists")
    if not _ref_exists(repo, "HEAD", environ):
        raise SandboxError(
            f"{repo} has no commits yet and no {REMOTE}/main: commit or fetch something first, "
            "or pass --base=REF",
            Exit.USAGE,
        )
    local = current_branch(repo, environ)
    reason = f"no {REMOTE}/HEAD, {REMOTE}/main or {REMOTE}/master; using the local HEAD"
    return Base(local or "HEAD", reason)


def _add_command(
    repo: Path, branch: str, path: Path, base: str | None, environ: Mapping[str, str] | None
) -> tuple[list[str], bool]:
    """The `git worktree add` arguments for `branch`, and whether they create the branch."""
    if _ref_exists(repo, f"refs/heads/{branch}", environ):
        if base is not None:
            raise SandboxError(
                f"branch {branch!r} already exists, so --base={base} would be ignored: drop "
                "--base to check it out, or pick a new branch name",
                Exit.USAGE,
            )
        return ["worktree", "add", str(path), branch], False
    if _ref_exists(repo, f"refs/remotes/{REMOTE}/{branch}", environ):
        if base is not None:
            raise SandboxError(
                f"branch {branch!r} exists on {REMOTE}, so --base={base} would fork a second "
                f"history under its name: drop --base to check out {REMOTE}/{branch}",
                Exit.USAGE,
            )
        return ["worktree", "add", "--track", "-b", branch, str(path), f"{REMOTE}/{branch}"], True
    start = base if base is not None else default_base(repo, environ).ref
    if not _ref_exists(repo, start, environ):
        raise SandboxError(
            f"base {start!r} is not a commit in {repo}: `git fetch` it or pass --base=REF "
            "with an existing branch, tag or commit",
            Exit.USAGE,
        )
    # --no-track: a new branch made from origin/main must not push to main by default.
    return ["worktree", "add", "--no-track", "-b", branch, str(path), start], True


def create(
    repo: Path, branch: str, base: str | None = None, environ: Mapping[str, str] | None = None
) -> Worktree:
    """A worktree for `branch` at the naming rule's path: a new branch from `base` (default
    `default_base`), or the existing local branch, or a local branch tracking origin's branch
    of that name. Refused, with nothing created, when the branch is bad or already checked out
    somewhere, or the path exists; a failed `git worktree add` is rolled back. Creations are
    serialised machine-wide (`picker.worktree_lock`), so a rollback only ever undoes its own."""
    repo = check_repo(repo, environ)
    validate_branch(repo, branch, environ)
    with picker.worktree_lock(os.environ if environ is None else environ, wait=GIT_TIMEOUT):
        return _create_locked(repo, branch, base, environ)


def check_new(
    repo: Path, branch: str, base: str | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The path `create` would make, after every check it makes, changing nothing: `inv new`
    refuses bad input before it claims a slot. (`create` checks again under its lock.)"""
    repo = check_repo(repo, environ)
    validate_branch(repo, branch, environ)
    path = _check_free(repo, branch, environ)
    _add_command(repo, branch, path, base, environ)
    return path


def _create_locked(
    repo: Path, branch: str, base: str | None, environ: Mapping[str, str] | None
) -> Worktree:
    path = _check_free(repo, branch, environ)
    args, creates_branch = _add_command(repo, branch, path, base, environ)
    result = _git(repo, args, environ)
    if not result.ok:
        _roll_back(repo, branch, path, creates_branch, environ)
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


def _check_free(repo: Path, branch: str, environ: Mapping[str, str] | None) -> Path:
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
        _git(repo, ["worktree", "remove", "--force", str(path)], environ)
    _git(repo, ["worktree", "prune"], environ)
    if created_branch and find(repo, branch, environ) is None:
        _git(repo, ["branch", "-D", branch], environ)


# ----------------------------------------------------------------------------- removing


def parse_status(output: str) -> tuple[list[str], list[str]]:
    """`git status --porcelain=v1 -z`: (changed tracked files as "XY path", untracked paths).
    A rename or copy carries its old path as the next NUL-ended field."""
    changes: list[str] = []
    untracked: list[str] = []
    fields = iter(output.split("\0"))
    for field in fields:
        if len(field) < 4:
            continue
        code, name = field[:2], field[3:]
        if code == "??":
            untracked.append(name)
            continue
        if "R" in code or "C" in code:
            name = f"{next(fields, '')} -> {name}"
        changes.append(f"{code} {name}")
    return changes, untracked


def is_cache(name: str) -> bool:
    """An ignored path (relative, "/"-separated; a directory ends in "/") that a build or a
    test run makes again: one of its directories is in CACHE_DIRS, or its file name matches
    CACHE_FILES."""
    parts = name.rstrip("/").split("/")
    directories = parts if name.endswith("/") else parts[:-1]
    if any(part in CACHE_DIRS or part.endswith(CACHE_DIR_SUFFIXES) for part in directories):
        return True
    return not name.endswith("/") and any(fnmatch.fnmatchcase(parts[-1], p) for p in CACHE_FILES)


def ignored_work(
    path: Path, environ: Mapping[str, str] | None = None, disposable: Collection[str] = ()
) -> list[str]:
    """The ignored files of the worktree at `path` that are not caches (`is_cache`) nor
    `disposable`: what `git worktree remove` would delete without a word. `--ignored=matching`
    shows a directory that an ignore pattern names as one entry ("models/", ".venv/"), so a
    large `.venv` costs one line, and lists the files of a directory that is only full of
    ignored files ("pkg/__pycache__/", not "pkg/")."""
    listing = _checked(
        path,
        ["status", "--porcelain=v1", "-z", "--ignored=matching", "--untracked-files=all",
         "--ignore-submodules=all"],
        environ,
        f"listing the ignored files of {path}",
    )  # fmt: skip
    names = [field[3:] for field in listing.stdout.split("\0") if field.startswith("!! ")]
    return sorted(n for n in names if not is_cache(n) and n.rstrip("/") not in disposable)


def saved_elsewhere(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The `git rev-list` arguments, after "HEAD --not", naming where a commit counts as saved.

    With remote-tracking branches: those (`--remotes`), as before. A repository with none is
    the bare-clone layout (`git clone --bare` keeps origin's branches as its own
    `refs/heads/*`): there a commit is saved when another branch or a tag reaches it, i.e.
    everything the worktree's branch was made from; only what was committed on it alone
    counts."""
    remotes = _git(path, ["for-each-ref", "--count=1", "--format=%(refname)", "refs/remotes/"],
                   environ)  # fmt: skip
    if remotes.ok and remotes.stdout.strip():
        return ["--remotes"]
    branch = current_branch(path, environ)
    # --exclude takes a name without refs/heads/ for --branches; branch names cannot hold
    # glob characters (git check-ref-format), so this excludes exactly one branch.
    own = [f"--exclude={branch}"] if branch else []
    return [*own, "--branches", "--tags"]


def unsafe_to_remove(
    path: Path, environ: Mapping[str, str] | None = None, disposable: Collection[str] = ()
) -> Report:
    """What `git worktree remove --force` of `path` would lose: uncommitted changes, untracked
    files and ignored files that are not caches (neither counting the `disposable` paths,
    relative to `path`, that the sandbox itself wrote there, e.g. ".env.sandbox"), and commits
    of its HEAD saved nowhere else (`saved_elsewhere`). A worktree whose directory is gone has
    nothing left to lose in files; its commits are still in the repository."""
    if not path.is_dir():
        return Report(path)
    status = _checked(
        path,
        ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none"],
        environ,
        f"reading the state of {path}",
    )
    changes, untracked = parse_status(status.stdout)
    untracked = [name for name in untracked if name not in disposable]
    ignored = ignored_work(path, environ, disposable)
    total, shown = 0, []
    if _ref_exists(path, "HEAD", environ):
        spec = ["HEAD", "--not", *saved_elsewhere(path, environ)]
        count = _checked(path, ["rev-list", "--count", *spec], environ, "counting commits")
        total = int(count.stdout.strip() or 0)
        log = _checked(
            path,
            ["log", f"--max-count={SHOWN_COMMITS}", "--format=%h %s", *spec],
            environ,
            "listing commits",
        )
        shown = log.stdout.splitlines()
    return Report(
        path,
        tuple(changes),
        tuple(untracked),
        tuple(shown),
        total,
        tuple(ignored[:SHOWN_IGNORED]),
        len(ignored),
    )


def _inside(path: Path, directory: Path) -> bool:
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
    _checked(check_repo(repo, environ), args, environ, f"removing the worktree {entry.path}")
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
    try:
        here = _real(cwd if cwd is not None else Path.cwd())
    except FileNotFoundError:  # our directory was deleted under us: nothing of it to guard
        here = None
    if here is not None and (_inside(here, _real(entry.path)) or _inside(here, entry.path)):
        raise SandboxError(
            f"the current directory {here} is inside the worktree {entry.path}: cd out of it "
            "(e.g. `cd ~`) and re-run",
            Exit.USAGE,
        )
    return entry
