"""`inv mcp`: the slot life cycle as MCP tools over stdio, for coding agents.

Built on the official `mcp` SDK (its `MCPServer`), never a protocol of our own. Each tool calls
the library functions the Invoke task of the same name calls and answers with one JSON document
(sandbox/mcp/docs.py; `status` and `verify` with the `--json` documents themselves). A
`SandboxError` becomes a tool error carrying the task's one line and exit code (an `error`
document in the structured content), never a traceback. `up` and `new` report each preflight
step, the Compose start and each change of the gate's round as MCP progress notifications.

Destructive tools ask for `confirm=true` on top of the tasks' own guards: `down` with
`volumes`, `restore` and `done`; `done` still refuses unsaved work unless `force`.

The SDK runs a tool that is a plain function in a worker thread, so the blocking library calls
stay as they are; progress goes back to the event loop with `anyio.from_thread`. Importing this
module loads the SDK (pydantic, starlette, ...): tasks/mcp.py imports it only inside `inv mcp`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from sandbox import (
    ROOT,
    apps,
    checks,
    compose,
    docker,
    picker,
    shared,
    slots,
    stack,
)
from sandbox import verify as slot_verify
from sandbox.branches import flow as branchflow
from sandbox.errors import Exit, SandboxError
from sandbox.mcp import docs as mcpdocs
from sandbox.runner import run
from sandbox.snapshots import operations as snapshots
from sandbox.ui import statusjson

NAME = "ktrdr-sandbox"
INSTRUCTIONS = (
    "Run isolated copies of the KTRDR stack (slots 0-10) with Docker Compose. Every tool "
    "answers with one JSON document naming its schema and version; a refused call is a tool "
    "error whose structured content is an 'error' document (message, exit_code). Destructive "
    "tools (down with volumes, restore, done) need confirm=true."
)
# Seconds an `exec` may run before it is stopped and reported (exit 124, as `timeout` says).
EXEC_TIMEOUT = 600.0

Progress = Callable[[str], None]


# ------------------------------------------------------------------------- answers


def answer(document: Mapping[str, Any]) -> CallToolResult:
    """A document as the tool's result: structured, and as JSON text for older clients."""
    return CallToolResult(
        content=[TextContent(type="text", text=statusjson.dumps(document))],
        structured_content=dict(document),
    )


def refusal(exc: SandboxError, document: Mapping[str, Any] | None = None) -> CallToolResult:
    """A SandboxError as a tool error: the task's line first, then the error document."""
    error = mcpdocs.error(exc, document)
    text = f"error: {exc} (exit {int(exc.code)})"
    return CallToolResult(
        content=[
            TextContent(type="text", text=text),
            TextContent(type="text", text=statusjson.dumps(error)),
        ],
        structured_content=error,
        is_error=True,
    )


def answered(work: Callable[[], Mapping[str, Any]]) -> CallToolResult:
    """Run one tool's work the way `tasks.handled` runs a task: expected failures (and a
    file the system refused us) become a tool error, everything else a document."""
    try:
        shared.settle_home(os.environ)
        return answer(work())
    except Failed as failed:
        return refusal(failed.error, failed.document)
    except SandboxError as exc:
        return refusal(exc)
    except OSError as exc:
        return refusal(SandboxError(str(exc), Exit.FAILED))


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


# ------------------------------------------------------------------------- progress


class Reporter:
    """Progress notifications from a tool running in the SDK's worker thread. The counter only
    grows (MCP wants increasing progress); a message equal to the last one is not sent again,
    so a gate polling every fraction of a second notifies only when a check changes."""

    def __init__(self, ctx: Context | None) -> None:
        self.ctx = ctx
        self.count = 0
        self.last = ""

    def __call__(self, message: str) -> None:
        if self.ctx is None or message == self.last:
            return
        self.last = message
        self.count += 1
        anyio.from_thread.run(
            functools.partial(self.ctx.report_progress, self.count, None, message)
        )


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
        app_image=lambda src: stack.app_image(src, ROOT, environ, on_step),
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
    layout = slots.parse_layout(workers, observability)
    chosen = apps.from_flag(source, torch)  # "" (an unset variable) is refused, not "none"
    chosen = dataclasses.replace(chosen, models=apps.check_models(models))
    wanted = picker.parse_choice(slot)
    if wanted is not None:
        return start(
            compose.load_target(ROOT, wanted, environ), chosen, environ, say, layout, timeout
        )
    with picker.claim_slot(environ, None, picker.Claim(on_busy=say)) as number:
        say(f"slot {number}: the lowest free slot (slot=auto)")
        target = compose.load_target(ROOT, number, environ)
        return start(target, chosen, environ, say, layout, timeout)


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
    """`inv new`: the same checks, claim, worktree and start, in the same order."""
    if torch is not None:
        apps.check_torch(torch)
    apps.check_models(models)
    wanted = picker.parse_choice(slot)
    plan = branchflow.check_new(repo, branch, base, environ)
    with picker.claim_slot(environ, wanted, picker.Claim(on_busy=say)) as number:
        say(f"slot {number}: {'the lowest free slot' if wanted is None else 'free'}")
        made = branchflow.create(plan, base, environ)
        say(f"{'clone' if plan.clone else 'worktree'}: {made.path} (branch {branch})")
        target = compose.load_target(ROOT, number, environ)
        try:
            source = dataclasses.replace(apps.detect(made.path, torch), models=models)
            document = start(target, source, environ, say, timeout=timeout)
        except Failed as failed:
            hint = branchflow.kept_hint(plan, made.path)
            raise Failed(
                SandboxError(f"{failed.error}; {hint}", failed.error.code),
                mcpdocs.new(branch, str(made.path), failed.document),
            ) from None
        except SandboxError as exc:
            raise SandboxError(
                f"{exc}; {branchflow.kept_hint(plan, made.path)}", exc.code, exc.details
            ) from None
    return mcpdocs.new(branch, str(made.path), document)


def status(environ: Mapping[str, str], slot: int | None = None) -> dict[str, Any]:
    only = None if slot is None else slots.parse_slot(slot)
    return statusjson.collect(environ, only, ROOT)


def verify(environ: Mapping[str, str], slot: list[int]) -> dict[str, Any]:
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
    target = compose.load_target(ROOT, slots.parse_slot(slot), environ)
    app, _ = snapshots.running_app(target.slot, environ)
    made = snapshots.snapshot(target, _compose(environ), environ, name=name, app=app, on_step=say)
    return mcpdocs.snapshot(made.name, made.source_slot, made.app, made.size, made.migration)


def restore(
    environ: Mapping[str, str], say: Progress, slot: int, name: str, confirm: bool = False
) -> dict[str, Any]:
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
    """`inv done`: its guard first (unsaved work refused unless `force`), then confirm."""
    number = None if slot is None else slots.parse_slot(slot)
    target = branchflow.done_target(environ, branch, number, repo)
    report = branchflow.check_done(target, force, environ)
    confirmed(
        confirm,
        f"done takes slot {target.slot} down with its database and removes the worktree "
        f"{target.worktree.path}",
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


# ------------------------------------------------------------------------- the server


DESTRUCTIVE = ToolAnnotations(destructive_hint=True)
READ_ONLY = ToolAnnotations(read_only_hint=True)


def build() -> MCPServer:
    """The server with its ten tools; each one a thin wrapper over a function above."""
    server: MCPServer = MCPServer(NAME, instructions=INSTRUCTIONS)

    @server.tool(name="new")
    def new_tool(
        branch: str,
        repo: str,
        ctx: Context,
        slot: str = "auto",
        base: str | None = None,
        torch: str | None = None,
        timeout: str | None = None,
        models: str = "shared",
    ) -> CallToolResult:
        """A git worktree of `branch` next to the repository `repo`, a free slot (`slot`:
        "auto" or a number) and its stack started from the worktree: `inv new`."""
        say = Reporter(ctx)
        return answered(
            lambda: new(dict(os.environ), say, branch, repo, slot, base, torch, timeout, models)
        )

    @server.tool(name="up")
    def up_tool(
        ctx: Context,
        slot: str = "auto",
        source: str | None = None,
        workers: str | None = None,
        observability: str | None = None,
        torch: str | None = None,
        timeout: str | None = None,
        models: str = "shared",
    ) -> CallToolResult:
        """Start a slot (`slot`: a number 0-10 or "auto") and wait for the startability gate:
        `inv up`. `source`: a KTRDR checkout to run; `workers`: full, light or none; `torch`:
        debian (default), locked or none; `models`: shared (default) or slot (its own)."""
        say = Reporter(ctx)
        return answered(
            lambda: up(
                dict(os.environ), say, slot, source, workers, observability, torch, timeout, models
            )
        )

    @server.tool(name="status", annotations=READ_ONLY)
    def status_tool(slot: int | None = None) -> CallToolResult:
        """Every slot of this engine (or one): the `inv status --json` document."""
        return answered(lambda: status(dict(os.environ), slot))

    @server.tool(name="verify", annotations=READ_ONLY)
    def verify_tool(slot: list[int]) -> CallToolResult:
        """Health, own database, ports, shared directory of each slot: `inv verify --json`."""
        return answered(lambda: verify(dict(os.environ), slot))

    @server.tool(name="logs", annotations=READ_ONLY)
    def logs_tool(slot: int, service: str | None = None, tail: int = 100) -> CallToolResult:
        """The last `tail` lines of a slot's container logs (one service, or all)."""
        return answered(lambda: logs(dict(os.environ), slot, service, tail))

    @server.tool(name="exec")
    def exec_tool(
        slot: int, argv: list[str], service: str = "backend", timeout: float = EXEC_TIMEOUT
    ) -> CallToolResult:
        """Run `argv` (no shell) in a slot's service; its exit code, stdout and stderr."""
        return answered(lambda: exec_(dict(os.environ), slot, argv, service, timeout))

    @server.tool(name="snapshot")
    def snapshot_tool(ctx: Context, slot: int, name: str | None = None) -> CallToolResult:
        """Dump a slot's database into the snapshot directory (pg_dump), with a manifest."""
        say = Reporter(ctx)
        return answered(lambda: snapshot(dict(os.environ), say, slot, name))

    @server.tool(name="restore", annotations=DESTRUCTIVE)
    def restore_tool(ctx: Context, slot: int, name: str, confirm: bool = False) -> CallToolResult:
        """Replace a slot's database with the snapshot `name`. Destructive: confirm=true."""
        say = Reporter(ctx)
        return answered(lambda: restore(dict(os.environ), say, slot, name, confirm))

    @server.tool(name="done", annotations=DESTRUCTIVE)
    def done_tool(
        ctx: Context,
        branch: str | None = None,
        slot: int | None = None,
        repo: str | None = None,
        force: bool = False,
        confirm: bool = False,
    ) -> CallToolResult:
        """Take a branch's slot down with its database and remove its worktree: `inv done`.
        Refuses unsaved work unless force=true. Destructive: confirm=true."""
        say = Reporter(ctx)
        return answered(lambda: done(dict(os.environ), say, branch, slot, repo, force, confirm))

    @server.tool(name="down")
    def down_tool(
        ctx: Context, slot: int, volumes: bool = False, confirm: bool = False
    ) -> CallToolResult:
        """Stop and remove a slot's containers; its database too with volumes=true, which
        needs confirm=true."""
        say = Reporter(ctx)
        return answered(lambda: down(dict(os.environ), say, slot, volumes, confirm))

    return server


def serve() -> None:
    """Serve the tools on stdin/stdout until the client closes them."""
    build().run("stdio")
