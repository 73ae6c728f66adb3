"""`inv new` and `inv done`: the order of their steps, so that a refusal changes nothing.

`inv new BRANCH --repo=PATH`: every check of the worktree (`worktrees.check_new`) before a slot
is claimed; the slot (`picker.claim_slot`) before the worktree is made; the worktree before the
stack starts. So bad input and "no free slot" leave nothing behind; a stack that fails to start
leaves the worktree, and `new_slot` says how to remove it. `inv new` and the MCP server's `new`
tool both go through `new_slot`; each starts the stack its own way inside it.

`inv done --branch=BRANCH|--slot=N`: what to act on (`branches.resolve_done`), then every refusal
(`check_done`: work that exists nowhere else, a worktree git would not remove), and only then
the slot's `down --volumes`, its `.env.sandbox`, and `git worktree remove` of the path git
recorded. The tasks in sandbox/cli/branches.py call these in that order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox import apps, checkouts, compose, docker, picker, status
from sandbox.branches import clones, unsaved, worktrees
from sandbox.branches import git as branches
from sandbox.errors import Exit, SandboxError


@dataclass(frozen=True)
class NewPlan:
    """What `inv new` will make, every check passed."""

    repo: Path  # the app repository's main checkout
    branch: str
    path: Path  # the worktree's path (naming rule)
    clone: bool = False  # a full clone rather than a worktree (`layout`)

    @property
    def kind(self) -> str:
        """What the checkout is, for the user: "clone" or "worktree"."""
        return "clone" if self.clone else "worktree"


def check_new(
    repo: str | None, branch: str, base: str | None, environ: Mapping[str, str]
) -> NewPlan:
    """Every refusal of `inv new` that does not need a slot: --repo given and a repository,
    the branch name, the path free, the branch not checked out elsewhere, --base a commit."""
    if not repo:
        raise SandboxError(
            "which repository? pass --repo=PATH with PATH a checkout of the app", Exit.USAGE
        )
    main = worktrees.check_repo(Path(repo).expanduser(), environ)
    worktrees.validate_branch(main, branch, environ)
    clones.refuse_existing(main, branch, environ)
    path = worktrees.check_new(main, branch, base, environ)
    start = worktrees.start_of(main, branch, base, environ)
    return NewPlan(main, branch, path, clone=layout(main, start.ref, environ) == "clone")


def layout(repo: Path, ref: str, environ: Mapping[str, str]) -> str:
    """How the app at `ref` wants its branches checked out (`AppKind.checkout`): the first kind
    whose every marker is in `ref`'s tree; "worktree" when none is."""
    for kind in apps.KINDS:
        listed = worktrees.git(repo, ["ls-tree", "-r", "--name-only", ref, "--", *kind.markers],
                               environ)  # fmt: skip
        if listed.ok and set(listed.stdout.splitlines()) >= set(kind.markers):
            return kind.checkout
    return "worktree"


def create(plan: NewPlan, base: str | None, environ: Mapping[str, str]) -> worktrees.Worktree:
    """The branch's checkout as `plan` says: a clone, or a worktree."""
    make = clones.create if plan.clone else worktrees.create
    return make(plan.repo, plan.branch, base, environ)


@dataclass(frozen=True)
class NewRequest:
    """What `inv new` (or the MCP `new` tool) was asked for, unchecked."""

    branch: str
    repo: str | None
    slot: str = "auto"  # auto, or a free slot's number
    base: str | None = None
    torch: str | None = None
    models: str = "shared"


@dataclass(frozen=True)
class NewSlot:
    """A claimed slot with its new worktree, ready to start: the caller starts it."""

    target: compose.Target
    source: apps.Source  # the worktree's app, with --torch and --models applied
    path: Path  # the worktree, as made


@contextlib.contextmanager
def new_slot(
    request: NewRequest,
    root: Path,
    environ: Mapping[str, str],
    say: Callable[[str], None],
    step: Callable[[str, str], None] | None = None,
    kept: Callable[[str], None] | None = None,
) -> Iterator[NewSlot]:
    """The checks, the slot (its lock held until the block ends), the worktree, in that order;
    the block starts the stack. `say` hears the slot, `step` (default: `say` as "name: detail")
    the worktree made. When anything fails once the worktree exists, `kept` (default `say`)
    hears how to use or remove it, and the failure goes on up unchanged."""
    if request.torch is not None:
        apps.check_torch(request.torch)
    apps.check_models(request.models)
    wanted = picker.parse_choice(request.slot)
    plan = check_new(request.repo, request.branch, request.base, environ)
    with picker.claim_slot(environ, wanted, picker.Claim(on_busy=say)) as number:
        say(f"slot {number}: {'the lowest free slot' if wanted is None else 'free'}")
        made = create(plan, request.base, environ)
        report = step or (lambda name, detail: say(f"{name}: {detail}"))
        report(plan.kind, f"{made.path} (branch {request.branch})")
        try:
            found = apps.detect(made.path, request.torch)
            source = dataclasses.replace(found, models=request.models)
            yield NewSlot(compose.load_target(root, number, environ), source, made.path)
        except Exception:  # whatever stopped the start, the worktree stays: say so
            (kept or say)(kept_hint(plan, made.path))
            raise


def kept_hint(plan: NewPlan, made: Path) -> str:
    """What to do with a checkout (worktree or clone) whose stack did not start."""
    return (
        f"the {plan.kind} {made} stays: fix the above and `inv up --slot=N --source={made}`, or "
        f"remove it with `inv done --branch={plan.branch} --repo={plan.repo}`"
    )


def done_target(
    environ: Mapping[str, str],
    branch: str | None = None,
    slot: int | None = None,
    repo: str | None = None,
) -> branches.DoneTarget:
    """The slot and worktree `inv done` acts on, from one `docker ps`."""
    if (branch is None) == (slot is None):
        raise SandboxError(
            "name one branch or one slot: `inv done --branch=BRANCH` or `inv done --slot=N`",
            Exit.USAGE,
        )
    sources = status.slot_sources(docker.sandbox_containers(environ), environ)
    where = Path(repo).expanduser() if repo else None
    return branches.resolve_done(sources, branch, slot, where, environ)


def check_done(
    target: branches.DoneTarget, force: bool, environ: Mapping[str, str], cwd: Path | None = None
) -> unsaved.Report:
    """`done`'s refusals, changing nothing: git would not remove the worktree (main checkout,
    locked, holds the current directory), or - unless `force` - it holds uncommitted changes,
    untracked files or commits on no remote (UNSAVED_WORK, the list as details), or, for a
    clone, its branch cannot go back into the repository (`clones.bring_back`). Returns what
    `force` will throw away."""
    path = target.worktree.path
    disposable = (checkouts.ENV_SANDBOX,) if checkouts.ours(path / checkouts.ENV_SANDBOX) else ()
    if target.clone:
        clones.check_removable(target.repo, target.worktree, environ, cwd)
        report = clones.unsafe_to_remove(path, environ, disposable)
    else:
        worktrees.check_removable(target.repo, path, environ, cwd)
        report = unsaved.unsafe_to_remove(path, environ, disposable)
    if not report.safe and not force:
        raise SandboxError(report.summary(), Exit.UNSAVED_WORK, details="\n".join(report.lines()))
    if target.clone and not force:
        refusal = clones.bring_back(target.repo, target.worktree, environ).refusal
        if refusal:
            raise SandboxError(refusal, Exit.UNSAVED_WORK)
    return report


def remove_worktree(
    target: branches.DoneTarget, force: bool, environ: Mapping[str, str], cwd: Path | None = None
) -> Path:
    """After the slot is down: the `.env.sandbox` this tool wrote (a slot already down left
    it), then `git worktree remove [--force]` of git's recorded path, or, for a clone, its
    branch brought back into the repository and its directory deleted."""
    checkouts.remove_env_sandbox(target.worktree.path)
    if target.clone:
        return clones.remove(target.repo, target.worktree, force, environ, cwd)
    return worktrees.remove(target.repo, target.worktree.path, force, environ, cwd)
