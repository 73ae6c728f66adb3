"""What removing a branch's checkout would lose: uncommitted changes, untracked files, ignored
files that are not build caches, and commits saved nowhere else. `inv done` refuses while the
report is not empty, unless --force.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import runner
from sandbox.branches.worktrees import (
    GIT_TIMEOUT,
    checked,
    current_branch,
    git,
    git_env,
    ref_exists,
)

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
    kind: str = "worktree"  # what `path` is, for the user: "worktree" or "clone"

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
            f"the {self.kind} {self.path} has {', '.join(self.at_risk())}: commit and push them, "
            "move them out (or delete what you do not need), or re-run with --force to throw "
            "them away"
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    if n == 0:
        return ""
    return f"1 {one}" if n == 1 else f"{n} {many or one + 's'}"


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


def hidden_changes(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """Edits `git status` does not show: tracked files marked `git update-index
    --skip-worktree` or `--assume-unchanged` (a local config kept out of commits) whose file in
    the worktree differs from the index, as "M  path (skip-worktree)". `git worktree remove`
    deletes them without a word. A marked file that is absent (a sparse checkout's) is no edit."""
    listing = checked(path, ["ls-files", "-v", "-z"], environ, f"listing the files of {path}")
    marked: dict[str, str] = {}
    for field in listing.stdout.split("\0"):
        tag, name = field[:1], field[2:]
        if tag == "S" or (tag.islower() and tag):
            marked[name] = "skip-worktree" if tag.upper() == "S" else "assume-unchanged"
    present = [n for n in sorted(marked) if (path / n).is_file() and not (path / n).is_symlink()]
    if not present:
        return []
    staged = checked(path, ["ls-files", "-s", "-z", "--", *present], environ, "reading the index")
    blobs = {}
    for field in staged.stdout.split("\0"):
        info, _, name = field.partition("\t")
        if name and len(info.split()) == 3:
            blobs[name] = info.split()[1]
    hashed = runner.run(
        ["git", "-C", str(path), "hash-object", "--stdin-paths"],
        env=git_env(environ),
        timeout=GIT_TIMEOUT,
        input_text="".join(f"{n}\n" for n in present),
    )
    if not hashed.ok:  # unreadable: taken for changed, never for safe
        return [f"M  {n} ({marked[n]})" for n in present]
    now = hashed.stdout.split()
    return [
        f"M  {n} ({marked[n]})"
        for n, blob in zip(present, now, strict=False)
        if blobs.get(n) != blob
    ]


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
    listing = checked(
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
    remotes = git(path, ["for-each-ref", "--count=1", "--format=%(refname)", "refs/remotes/"],
                   environ)  # fmt: skip
    if remotes.ok and remotes.stdout.strip():
        return ["--remotes"]
    branch = current_branch(path, environ)
    # --exclude takes a name without refs/heads/ for --branches; branch names cannot hold
    # glob characters (git check-ref-format), so this excludes exactly one branch.
    own = [f"--exclude={branch}"] if branch else []
    return [*own, "--branches", "--tags"]


def unsafe_to_remove(
    path: Path,
    environ: Mapping[str, str] | None = None,
    disposable: Collection[str] = (),
    tips: Sequence[str] = ("HEAD",),
    saved: Sequence[str] | None = None,
) -> Report:
    """What `git worktree remove --force` of `path` would lose: uncommitted changes, untracked
    files and ignored files that are not caches (neither counting the `disposable` paths,
    relative to `path`, that the sandbox itself wrote there, e.g. ".env.sandbox"), and commits
    reachable from `tips` (its HEAD) that `saved` (default `saved_elsewhere`) does not reach. A
    worktree whose directory is gone has nothing left to lose in files; its commits are still
    in the repository."""
    if not path.is_dir():
        return Report(path)
    status = checked(
        path,
        ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none"],
        environ,
        f"reading the state of {path}",
    )
    changes, untracked = parse_status(status.stdout)
    changes += hidden_changes(path, environ)
    untracked = [name for name in untracked if name not in disposable]
    ignored = ignored_work(path, environ, disposable)
    total: int = 0
    shown: list[str] = []
    # An unborn HEAD has no commits of its own; other `tips` (a clone's branches) still may.
    if "HEAD" not in tips or ref_exists(path, "HEAD", environ):
        elsewhere = saved_elsewhere(path, environ) if saved is None else saved
        total, shown = unsaved_commits(path, [*tips, "--not", *elsewhere], environ)
    return Report(
        path,
        tuple(changes),
        tuple(untracked),
        tuple(shown),
        total,
        tuple(ignored[:SHOWN_IGNORED]),
        len(ignored),
    )


def unsaved_commits(
    path: Path, spec: Sequence[str], environ: Mapping[str, str] | None
) -> tuple[int, list[str]]:
    """How many commits the `git rev-list` arguments `spec` name, and the first SHOWN_COMMITS
    of them as "abc1234 subject"."""
    count = checked(path, ["rev-list", "--count", *spec], environ, "counting commits")
    log = checked(
        path,
        ["log", f"--max-count={SHOWN_COMMITS}", "--format=%h %s", *spec],
        environ,
        "listing commits",
    )
    return int(count.stdout.strip() or 0), log.stdout.splitlines()
