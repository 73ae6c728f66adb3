"""`inv new` and `inv done`: a branch's worktree with a slot of its own, and both removed."""

from __future__ import annotations

import os

from invoke.context import Context
from invoke.tasks import task

from sandbox import slots
from sandbox.cli import common, lifecycle
from sandbox.cli.common import MODELS_HELP, NO_WAIT_HELP, TIMEOUT_HELP, TORCH_HELP, handled, out


@task(
    positional=["branch"],
    help={
        "branch": "the branch: new from --base, or an existing one checked out",
        "repo": "the app repository (its main checkout, a worktree, or a bare clone)",
        "slot": "auto (default: the lowest free slot from 1) or a free slot's number",
        "base": "where a new branch starts (default: origin/HEAD, origin/main, ...)",
        "torch": TORCH_HELP,
        "models": MODELS_HELP,
        "no-wait": NO_WAIT_HELP,
        "timeout": TIMEOUT_HELP,
    },
)
@handled
def new(
    c: Context,
    branch: str,
    repo: str | None = None,
    slot: str = "auto",
    base: str | None = None,
    torch: str | None = None,
    models: str = "shared",
    no_wait: bool = False,
    timeout: str | None = None,
) -> None:
    """A worktree of BRANCH next to --repo, a free slot, and `inv up --source=WORKTREE` there."""
    from sandbox import net
    from sandbox.branches import flow

    environ = dict(os.environ)
    request = flow.NewRequest(branch, repo, slot, base, torch, models)
    with flow.new_slot(request, common.ROOT, environ, out().line, out().step) as made:
        lifecycle.start(made.target, made.source, environ, wait=not no_wait, timeout=timeout)
    n = made.target.slot
    urls = net.urls(made.target, environ)
    if no_wait:  # the gate's summary lists them otherwise
        out().steps(list(urls.items()), f"slot {n}")
    out().line(f"slot {n} runs {branch} from {made.path}; API {urls['Backend API']}")


# `--branch` is a flag, not a positional: invoke (3.0) has no optional positional arguments
# (one left out is an error), and `inv done --slot=N` must work without a branch.
@task(
    help={
        "branch": "the branch whose worktree and slot go (or name the slot with --slot)",
        "slot": "the slot whose worktree and slot go",
        "repo": "the app repository, to find a branch whose slot is already down",
        "force": "throw away what the refusal listed (uncommitted changes, untracked files, "
        "ignored files that are not caches, unpushed commits); names each guard it overrides",
    },
)
@handled
def done(
    c: Context,
    branch: str | None = None,
    slot: str | None = None,
    repo: str | None = None,
    force: bool = False,
) -> None:
    """Take a branch's slot down (volumes too) and remove its worktree; unsaved work: --force."""
    from sandbox import compose, stack
    from sandbox.branches import flow

    environ = dict(os.environ)
    number = None if slot is None else slots.parse_slot(slot)
    target = flow.done_target(environ, branch, number, repo)
    report = flow.check_done(target, force, environ)
    if not report.safe:
        overrides = f"--force overrides: {'; '.join(report.at_risk())}; throwing away:"
        out().details("\n".join([overrides, *report.lines()]))
    if target.slot is not None:
        stack.down(
            compose.load_target(common.ROOT, target.slot),
            environ,
            volumes=True,
            on_busy=out().line,
        )
        out().line(f"slot {target.slot} is down; its volumes and .env.sandbox removed")
    removed = flow.remove_worktree(target, force, environ)
    out().line(f"removed the {target.kind} {removed}; the branch stays in {target.repo}")
