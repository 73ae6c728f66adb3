"""Which slot runs which branch worktree: what `inv done --branch=BRANCH|--slot=N` acts on.

A slot started with `--source=WORKTREE` carries the worktree's path in its containers' labels
(`status.slot_sources` reads them). `resolve_done` turns the user's words (a branch, or a
slot, and maybe --repo) into the slot to take down and the worktree git recorded, or one line
that says why there is nothing to act on. It changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.branches import clones, worktrees
from sandbox.errors import Exit, SandboxError
from sandbox.status import SlotSource


@dataclass(frozen=True)
class DoneTarget:
    """What `inv done` acts on."""

    repo: Path  # the app repository's main checkout
    worktree: worktrees.Worktree  # as `git worktree list` records it (a clone: `clones.entry`)
    slot: int | None  # the slot running it; None when no slot does
    clone: bool = False  # a clone `inv new` made, not a worktree

    @property
    def kind(self) -> str:
        """What the checkout is, for the user: "clone" or "worktree"."""
        return "clone" if self.clone else "worktree"


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def slots_running(sources: Mapping[int, SlotSource], path: Path) -> list[int]:
    """The slots whose source is `path` (symlinks resolved; a deleted path still matches)."""
    return sorted(s for s, src in sources.items() if src.source and _same(src.source, path))


def slots_on_branch(sources: Mapping[int, SlotSource], branch: str) -> list[int]:
    return sorted(s for s, src in sources.items() if src.branch == branch and src.source)


def _one_slot(found: list[int], what: str) -> int | None:
    if len(found) > 1:
        listed = ", ".join(str(s) for s in found)
        raise SandboxError(
            f"slots {listed} all run {what}: take them down one by one with `inv done --slot=N`",
            Exit.USAGE,
        )
    return found[0] if found else None


def _of_slot(
    slot: int, sources: Mapping[int, SlotSource], environ: Mapping[str, str] | None
) -> DoneTarget:
    if slot not in sources:
        raise SandboxError(
            f"slot {slot} has no containers: to remove a branch's worktree, `inv done "
            "--branch=BRANCH --repo=PATH`",
            Exit.USAGE,
        )
    source = sources[slot].source
    if source is None:
        raise SandboxError(
            f"slot {slot} was not started from a branch worktree (no --source recorded): use "
            f"`inv down --slot={slot}` instead",
            Exit.USAGE,
        )
    cloned_from = clones.source_of(Path(source), environ)
    if cloned_from is not None:
        return DoneTarget(cloned_from, clones.entry(Path(source), environ), slot, clone=True)
    repo = worktrees.owning_repo(Path(source), environ)
    if repo is None:
        raise SandboxError(
            f"slot {slot} runs {source}, which is gone or not a git checkout: `inv down "
            f"--slot={slot}`, then `git worktree prune` in its repository",
            Exit.USAGE,
        )
    entry = worktrees.find_path(repo, Path(source), environ)
    if entry is None or entry.is_main:
        kind = "the main checkout" if entry else "not a worktree"
        raise SandboxError(
            f"slot {slot} runs {source}, {kind} of {repo}: nothing for `inv done` to remove; "
            f"use `inv down --slot={slot}`",
            Exit.USAGE,
        )
    return DoneTarget(repo, entry, slot)


def _of_branch(
    branch: str,
    repo: Path | None,
    sources: Mapping[int, SlotSource],
    environ: Mapping[str, str] | None,
) -> DoneTarget:
    if repo is None:
        running = _one_slot(slots_on_branch(sources, branch), f"branch {branch!r}")
        if running is None:
            raise SandboxError(
                f"no slot runs branch {branch!r}: pass --repo=PATH to find its worktree, or "
                "see `inv status`",
                Exit.USAGE,
            )
        return _of_slot(running, sources, environ)
    repo = worktrees.check_repo(repo, environ)
    worktrees.validate_branch(repo, branch, environ)
    entry = worktrees.find(repo, branch, environ)
    clone = clones.find(repo, branch, environ) if entry is None else None
    if clone is not None:
        slot = _one_slot(slots_running(sources, clone.path), str(clone.path))
        return DoneTarget(repo, clone, slot, clone=True)
    if entry is None:
        raise SandboxError(
            f"branch {branch!r} has no worktree in {repo} (see `git -C {repo} worktree "
            "list`) and no clone made by `inv new`: nothing to do",
            Exit.USAGE,
        )
    if entry.is_main:
        raise SandboxError(
            f"branch {branch!r} is checked out in the main checkout {repo}, not in a worktree: "
            "nothing for `inv done` to remove",
            Exit.USAGE,
        )
    slot = _one_slot(slots_running(sources, entry.path), str(entry.path))
    return DoneTarget(repo, entry, slot)


def resolve_done(
    sources: Mapping[int, SlotSource],
    branch: str | None = None,
    slot: int | None = None,
    repo: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> DoneTarget:
    """The slot and worktree of `inv done --branch=BRANCH [--repo=PATH]` or `inv done --slot=N`.

    `sources` is every slot's `SlotSource` (`status.slot_sources`). With a branch and no
    --repo, the branch is looked up among the running slots' sources; with --repo, in that
    repository's worktrees (so a branch whose slot is already down can still be done).
    """
    if slot is not None and branch is None:
        return _of_slot(slot, sources, environ)
    if branch is not None and slot is None:
        return _of_branch(branch, repo, sources, environ)
    raise SandboxError(
        "name one branch or one slot: `inv done --branch=BRANCH` or `inv done --slot=N`", Exit.USAGE
    )
