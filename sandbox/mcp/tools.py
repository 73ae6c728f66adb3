"""The work of each `inv mcp` tool: the library calls its Invoke task makes, answering with one
JSON document (sandbox/mcp/docs.py; `status` and `verify` with the `--json` documents
themselves). Each function's parameters after `environ` (and `say`, for the tools that report
progress) are the tool's arguments, and its docstring is the tool's description
(`server.as_tool`). A call that ran and said no raises `Failed` with its document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox import ROOT, apps, checks, compose, docker, launch, slots, stack, upsteps
from sandbox import verify as slot_verify
from sandbox.branches import flow as branchflow
from sandbox.errors import Exit, SandboxError
from sandbox.mcp import docs as mcpdocs
from sandbox.runner import run
from sandbox.snapshots import operations as snapshots
from sandbox.ui import statusjson

# Seconds an `exec` may run before it is stopped and reported (exit 124, as `timeout` says).
EXEC_TIMEOUT = 600.0

Progress = Callable[[str], None]


class Failed(Exception):
    """A call that ran and said no (a gate that did not pass, a failed verify): its document
    rides along with the error."""

    def __init__(self, error: SandboxError, document: Mapping[str, Any]) -> None:
        super().__init__(str(error))
        self.error = error
        self.document = document


def confirmed(confirm: bool, what: str, call: str) -> None:
    """Destructive tools act only when the caller said so in the call itself."""
    if not confirm:
        raise SandboxError(f"{what}: call {call} again with confirm=true to go ahead", Exit.USAGE)


def gate_round(round_: list[checks.CheckResult]) -> str:
    """One line for a round of the gate: how many checks passed, which are still waited for."""
    passed = [c for c in round_ if c.state is checks.State.PASSED]
    waiting = [c.name for c in round_ if c.state is checks.State.WAITING]
    failed = [c.name for c in round_ if c.state is checks.State.FAILED]
    line = f"gate: {len(passed)}/{len(round_)} passed"
    if failed:
        line += f"; failed: {', '.join(failed)}"
    if waiting:
        line += f"; waiting for {', '.join(waiting)}"
    return line


def up_hooks(
    say: Progress, environ: Mapping[str, str], steps: list[tuple[str, str]]
) -> stack.Hooks:
    """`stack.up`'s callbacks as progress: what `inv up` draws on a terminal, as lines."""

    def on_preflight(checked: Any) -> None:
        for step in checked.steps:
            steps.append((step.name, step.detail))
            say(f"preflight: {step.name}: {step.detail}")

    def on_step(name: str, detail: str) -> None:
        say(f"{name}: {detail}")

    return stack.Hooks(
        preflight=on_preflight,
        busy=say,
        queue=say,  # an agent waiting in the admission line hears its place, as `inv up` says
        compose=lambda cmd: say("compose: docker compose up -d"),
        gate=lambda round_: say(gate_round(round_)),
        step=on_step,
        app_image=lambda src: upsteps.app_image(src, ROOT, environ, on_step),
    )


# ------------------------------------------------------------------------- the work


def start(
    target: compose.Target,
    source: apps.Source,
    environ: Mapping[str, str],
    say: Progress,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    timeout: str | None = None,
) -> dict[str, Any]:
    """`inv up`'s `_start` for one claimed slot: the up document; a gate that did not pass
    is `Failed` (exit 1, as `inv up` exits) carrying it."""
    steps: list[tuple[str, str]] = []
    result = stack.up(
        target,
        environ,
        source=source,
        layout=layout,
        timeout=stack.gate_timeout(timeout, target, environ),
        hooks=up_hooks(say, environ, steps),
    )
    status = statusjson.collect(environ, target.slot, ROOT)
    document = mcpdocs.up(target.slot, result.started, result.gate, steps, result.logs, status)
    if result.gate is not None and not result.gate.passed:
        raise Failed(
            SandboxError(
                f"slot {target.slot} did not become ready; the failing checks and their logs "
                "are in the result",
                Exit.FAILED,
            ),
            document,
        )
    return document


def up(
    environ: Mapping[str, str],
    say: Progress,
    slot: str = "auto",
    source: str | None = None,
    workers: str | None = None,
    observability: str | None = None,
    torch: str | None = None,
    timeout: str | None = None,
    models: str = "shared",
) -> dict[str, Any]:
    """Start a slot (`slot`: a number 0-10 or "auto") and wait for the startability gate:
    `inv up`. `source`: a KTRDR checkout to run; `workers`: full, light or none; `torch`:
    debian (default), locked or none; `models`: shared (default) or slot (its own)."""
    wanted = launch.read_options(source, torch, models, workers, observability)
    with launch.chosen_slot(ROOT, environ, slot, say) as chosen:
        return start(chosen.target, wanted.source, environ, say, wanted.layout, timeout)


def new(
    environ: Mapping[str, str],
    say: Progress,
    branch: str,
    repo: str,
    slot: str = "auto",
    base: str | None = None,
    torch: str | None = None,
    timeout: str | None = None,
    models: str = "shared",
) -> dict[str, Any]:
    """A checkout of `branch` next to the repository `repo` (a git worktree, or a full clone
    for an app that needs one, as KTRDR does), a free slot (`slot`: "auto" or a number) and
    its stack started from the checkout: `inv new`."""
    request = branchflow.NewRequest(branch, repo, slot, base, torch, models)
    kept: list[str] = []  # once the checkout exists: how to use it or remove it
    try:
        with branchflow.new_slot(request, ROOT, environ, say, kept=kept.append) as made:
            document = start(made.target, made.source, environ, say, timeout=timeout)
    except Failed as failed:  # the gate said no; its document goes into new's
        raise Failed(
            SandboxError(f"{failed.error}; {kept[0]}", failed.error.code),
            mcpdocs.new(branch, str(made.path), failed.document),
        ) from None
    except SandboxError as exc:
        if not kept:
            raise
        raise SandboxError(f"{exc}; {kept[0]}", exc.code, exc.details) from None
    return mcpdocs.new(branch, str(made.path), document)


def status(environ: Mapping[str, str], slot: int | None = None) -> dict[str, Any]:
    """Every slot of this engine (or one): the `inv status --json` document."""
    only = None if slot is None else slots.parse_slot(slot)
    return statusjson.collect(environ, only, ROOT)


def verify(environ: Mapping[str, str], slot: list[int]) -> dict[str, Any]:
    """Health, own database, ports, shared directory of each slot: `inv verify --json`."""
    if not slot:
        raise SandboxError("which slots? pass slot=[N, ...]", Exit.USAGE)
    targets = [compose.load_target(ROOT, slots.parse_slot(s), environ) for s in dict.fromkeys(slot)]
    docker.check_engine(environ)
    reports = slot_verify.verify(targets, compose.find_compose(environ), environ)
    document = statusjson.verify_document(reports)
    failed = [r.slot for r in reports if not r.passed]
    if failed:
        error = SandboxError(
            f"verify failed for slot {', '.join(map(str, failed))}; see the result",
            Exit.FAILED,
        )
        raise Failed(error, document)
    return document


def _compose(environ: Mapping[str, str]) -> list[str]:
    docker.check_engine(environ)
    return compose.find_compose(environ)


def logs(
    environ: Mapping[str, str], slot: int, service: str | None = None, tail: int = 100
) -> dict[str, Any]:
    """The last `tail` lines of a slot's container logs (one service, or all)."""
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    lines = slots.parse_count(str(tail), "tail")
    chosen = slots.parse_service(service) if service else None
    cmd = compose.logs_command(_compose(environ), target, chosen, False, lines)
    result = run(
        cmd,
        env=compose.environment(target, environ),
        check=f"logs of slot {target.slot} failed; is it up? (`inv status --slot={target.slot}`)",
    )
    return mcpdocs.logs(target.slot, chosen, lines, result.stdout + result.stderr)


def exec_(
    environ: Mapping[str, str],
    slot: int,
    argv: list[str],
    service: str = "backend",
    timeout: float = EXEC_TIMEOUT,
) -> dict[str, Any]:
    """Run `argv` (no shell) in a slot's service; its exit code, stdout and stderr."""
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    chosen = slots.parse_service(service)
    if not argv:
        raise SandboxError("which command? pass argv=[CMD, ARGS...]", Exit.USAGE)
    cmd = stack.exec_command(_compose(environ), target, chosen, argv, interactive=False)
    result = run(cmd, env=compose.environment(target, environ), timeout=timeout)
    return mcpdocs.exec_result(
        target.slot, chosen, argv, result.returncode, result.stdout, result.stderr
    )


def snapshot(
    environ: Mapping[str, str], say: Progress, slot: int, name: str | None = None
) -> dict[str, Any]:
    """Dump a slot's database into the snapshot directory (pg_dump), with a manifest."""
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    app, _ = snapshots.running_app(target.slot, environ)
    made = snapshots.snapshot(target, _compose(environ), environ, name=name, app=app, on_step=say)
    return mcpdocs.snapshot(made.name, made.source_slot, made.app, made.size, made.migration)


def restore(
    environ: Mapping[str, str], say: Progress, slot: int, name: str, confirm: bool = False
) -> dict[str, Any]:
    """Replace a slot's database with the snapshot `name`. Destructive: confirm=true."""
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    confirmed(confirm, f"restore replaces slot {target.slot}'s database", "restore")
    app, chain = snapshots.running_app(target.slot, environ)
    done_ = snapshots.restore(
        target, _compose(environ), environ, name, yes=True, confirm=lambda _: False, app=app,
        migrations=chain, on_step=say,
    )  # fmt: skip
    return mcpdocs.restore(
        done_.slot, done_.source, done_.replaced_tables, done_.size, done_.note()
    )


def down(
    environ: Mapping[str, str],
    say: Progress,
    slot: int,
    volumes: bool = False,
    confirm: bool = False,
) -> dict[str, Any]:
    """Stop and remove a slot's containers; its database too with volumes=true, which
    needs confirm=true."""
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    if volumes:
        confirmed(confirm, f"down with volumes deletes slot {target.slot}'s database", "down")
    stack.down(
        target,
        environ,
        volumes=volumes,
        on_busy=say,
        on_orphan=lambda old: say(f"slot {target.slot} was started from {old}, now gone"),
    )
    return mcpdocs.down(target.slot, volumes)


def done(
    environ: Mapping[str, str],
    say: Progress,
    branch: str | None = None,
    slot: int | None = None,
    repo: str | None = None,
    force: bool = False,
    confirm: bool = False,
) -> dict[str, Any]:
    """Take a branch's slot down with its database and remove its checkout: `inv done`.
    Refuses unsaved work unless force=true. Destructive: confirm=true."""
    number = None if slot is None else slots.parse_slot(slot)
    target = branchflow.done_target(environ, branch, number, repo)
    report = branchflow.check_done(target, force, environ)
    confirmed(
        confirm,
        f"done takes slot {target.slot} down with its database and removes the "
        f"{target.kind} {target.worktree.path}",
        "done",
    )
    if target.slot is not None:
        stack.down(
            compose.load_target(ROOT, target.slot, environ), environ, volumes=True, on_busy=say
        )
        say(f"slot {target.slot} is down; its volumes and .env.sandbox removed")
    removed = branchflow.remove_worktree(target, force, environ)
    forced = [] if report.safe else report.lines()
    return mcpdocs.done(target.slot, str(removed), str(target.repo), forced)
