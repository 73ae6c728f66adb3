"""Invoke tasks for ktrdr-sandbox: `inv --list`, `inv --help up`.

A table of contents: each task parses its flags, calls into `sandbox/` (most make one call;
`up` also hands the renderer's callbacks in, `verify` first finds the Compose CLI) and renders
what comes back. A `SandboxError` becomes one line on stderr and its exit code in `handled`;
the noxfile never sees one (its sessions run `inv` and pytest as subprocesses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit
from invoke.tasks import task

from sandbox import ROOT, lazy, slots
from sandbox.errors import Exit, SandboxError
from sandbox.settings import GATE_TIMEOUT, LOCK_WAIT

if TYPE_CHECKING:
    from sandbox import (
        apps,
        compose,
        docker,
        docs,
        engine,
        envfiles,
        lock,
        net,
        observability,
        picker,
        runner,
        shared,
        stack,
        teardown,
    )
    from sandbox import status as slot_status
    from sandbox import verify as slot_verify
    from sandbox.branches import flow as branchflow
    from sandbox.branches import worktrees
    from sandbox.images import build as images
    from sandbox.images import provenance
    from sandbox.mcp import server as mcpserver
    from sandbox.remote import codesync, enginehost
    from sandbox.remote import tunnel as forwarding
    from sandbox.snapshots import database as snapshot_db
    from sandbox.snapshots import marker as restoremark
    from sandbox.snapshots import operations as snapshots
    from sandbox.snapshots import store as snapshot_store
    from sandbox.swarm import access as swarm_access
    from sandbox.swarm import cluster as swarm_cluster
    from sandbox.swarm import deploy as swarm_deploy
    from sandbox.swarm import record as swarm_record
    from sandbox.swarm import status as swarm_status
    from sandbox.swarm import teardown as swarm_teardown
    from sandbox.swarm import verify as swarm_verify
    from sandbox.ui import render, statusjson
else:  # each imported at its first use: `inv status` loads only what it touches
    apps = lazy.Module("sandbox.apps")
    branchflow = lazy.Module("sandbox.branches.flow")
    codesync = lazy.Module("sandbox.remote.codesync")
    compose = lazy.Module("sandbox.compose")
    docker = lazy.Module("sandbox.docker")
    docs = lazy.Module("sandbox.docs")
    engine = lazy.Module("sandbox.engine")
    enginehost = lazy.Module("sandbox.remote.enginehost")
    envfiles = lazy.Module("sandbox.envfiles")
    forwarding = lazy.Module("sandbox.remote.tunnel")
    images = lazy.Module("sandbox.images.build")
    lock = lazy.Module("sandbox.lock")
    mcpserver = lazy.Module("sandbox.mcp.server")  # loads the MCP SDK: only `inv mcp` does
    net = lazy.Module("sandbox.net")
    observability = lazy.Module("sandbox.observability")
    picker = lazy.Module("sandbox.picker")
    provenance = lazy.Module("sandbox.images.provenance")
    render = lazy.Module("sandbox.ui.render")
    restoremark = lazy.Module("sandbox.snapshots.marker")
    runner = lazy.Module("sandbox.runner")
    shared = lazy.Module("sandbox.shared")
    slot_status = lazy.Module("sandbox.status")
    slot_verify = lazy.Module("sandbox.verify")
    snapshots = lazy.Module("sandbox.snapshots.operations")
    snapshot_db = lazy.Module("sandbox.snapshots.database")
    snapshot_store = lazy.Module("sandbox.snapshots.store")
    stack = lazy.Module("sandbox.stack")
    statusjson = lazy.Module("sandbox.ui.statusjson")
    swarm_access = lazy.Module("sandbox.swarm.access")
    swarm_cluster = lazy.Module("sandbox.swarm.cluster")
    swarm_deploy = lazy.Module("sandbox.swarm.deploy")
    swarm_record = lazy.Module("sandbox.swarm.record")
    swarm_status = lazy.Module("sandbox.swarm.status")
    swarm_teardown = lazy.Module("sandbox.swarm.teardown")
    swarm_verify = lazy.Module("sandbox.swarm.verify")
    teardown = lazy.Module("sandbox.teardown")
    worktrees = lazy.Module("sandbox.branches.worktrees")

F = TypeVar("F", bound=Callable[..., Any])
SLOT_HELP = "slot number, 0-10 (slot 0 uses KTRDR's standard ports)"


@functools.cache
def out() -> render.Renderer:
    """The renderer of stdout, chosen at the first thing shown (plain output loads no rich)."""
    return render.for_stdout()


def handled(body: F) -> F:
    """Turn expected failures into one line and an exit code; Ctrl-C into 130; an OSError
    (permissions, a full disk) into one line as well."""

    @functools.wraps(body)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        try:
            shared.settle_home(os.environ)
            return body(c, *args, **kwargs)
        except SandboxError as exc:
            if exc.details:
                out().details(exc.details)
            raise InvokeExit(f"error: {exc}", code=int(exc.code)) from None
        except KeyboardInterrupt:
            raise InvokeExit("interrupted", code=130) from None
        except OSError as exc:
            # A file the user's system refused us (permissions, a full disk): one line too.
            raise InvokeExit(f"error: {exc}", code=int(Exit.FAILED)) from None

    return wrapper  # type: ignore[return-value]


def _slot(value: str | None) -> int:
    if value is None:
        raise SandboxError("which slot? pass --slot=N with N from 0 to 10", Exit.USAGE)
    return slots.parse_slot(value)


def _target(value: str | None) -> compose.Target:
    return compose.load_target(ROOT, _slot(value), os.environ)


def _compose(environ: Mapping[str, str]) -> list[str]:
    """The Compose CLI, after making sure an engine answers (its error is the clearer one)."""
    docker.check_engine(environ)
    return compose.find_compose(environ)


SOURCE_HELP = (
    "run the app of this checkout (KTRDR, or a reference app source), mounted read-only with "
    "hot reload; default: the reference app built into its image"
)
TORCH_HELP = (
    "a --source checkout's torch, for its training workers: debian (default: Debian's CPU "
    "build), locked (exactly what its uv.lock pins: CUDA wheels, GBs) or none (a lighter "
    "image that cannot train)"
)
TIMEOUT_HELP = (
    f"seconds the gate waits for readiness (default {GATE_TIMEOUT:.0f}, or KTRDR_GATE_TIMEOUT)"
)
RELOAD_HELP = (
    "which app services of a --source checkout restart on edits: backend (default) or workers "
    "(the workers too; each reloader costs CPU while the slot idles)"
)
NO_WAIT_HELP = "return after `docker compose up -d`, without the startability gate"
MODELS_HELP = (
    "where the slot's models live: shared (default: the shared directory's models/, seen by "
    "every slot) or slot (its own, under the shared directory's slots/; a `*_latest` model "
    "is then this slot's)"
)
OTHERS_HELP = (
    "act on a database another checkout created (or one older than provenance labels, with "
    "--all): it is replaced or removed, its data lost"
)


@task(
    help={
        "slot": SLOT_HELP + "; auto: the lowest free one from 1 (printed before anything starts)",
        "source": SOURCE_HELP,
        "torch": TORCH_HELP,
        "models": MODELS_HELP,
        "workers": "worker profile: full (default: two backtest and two training workers), "
        "light (one of each) or none",
        "observability": "own (default: the slot runs its own Jaeger, Prometheus, Grafana) or "
        "shared (the machine's one stack; `inv observability up` first)",
        "reload": RELOAD_HELP,
        "build": "rebuild the reference app image before starting",
        "no-wait": NO_WAIT_HELP,
        "timeout": TIMEOUT_HELP,
        "fresh": "recreate the slot's database (everything in it is lost); asks first",
        "yes": "with --fresh: do not ask (for scripts)",
        "swarm": "deploy the slot as a stack on the swarm DOCKER_HOST manages (also "
        "KTRDR_SWARM=1, or KTRDR_SWARM=auto when the engine is a manager)",
        "other-checkouts": "with --fresh: " + OTHERS_HELP,
    }
)
@handled
def up(
    c: Context,
    slot: str | None = None,
    source: str | None = None,
    torch: str | None = None,
    models: str = "shared",
    workers: str | None = None,
    observability: str | None = None,
    reload: str | None = None,
    build: bool = False,
    no_wait: bool = False,
    timeout: str | None = None,
    fresh: bool = False,
    yes: bool = False,
    swarm_: bool = False,
    other_checkouts: bool = False,
) -> None:
    """Start a slot's stack: preflight, `docker compose up -d`, then the startability gate."""
    layout = slots.parse_layout(workers, observability)
    reloads = apps.parse_reload(reload)
    chosen = apps.from_flag(source, torch)
    chosen = dataclasses.replace(chosen, models=apps.check_models(models))
    environ = dict(os.environ)
    if (swarm_ or os.environ.get("KTRDR_SWARM")) and swarm_cluster.wanted(environ, swarm_):
        _swarm_up(slot, chosen, environ, layout, wait=not no_wait, timeout=timeout)
        return
    wipe = functools.partial(_confirm_fresh, yes) if fresh else None
    if slot is None or slot.strip().lower() != "auto":
        target = _target(slot)
        _start(
            target,
            chosen,
            environ,
            build=build,
            wait=not no_wait,
            timeout=timeout,
            layout=layout,
            fresh=wipe,
            reload=reloads,
            other_checkouts=other_checkouts,
        )
        return
    with picker.claim_slot(environ, None, picker.Claim(on_busy=out().line)) as number:
        out().line(f"slot {number}: the lowest free slot (--slot=auto)")
        target = compose.load_target(ROOT, number, environ)
        _start(
            target,
            chosen,
            environ,
            build=build,
            wait=not no_wait,
            timeout=timeout,
            layout=layout,
            reload=reloads,
        )


def _start(
    target: compose.Target,
    source: apps.Source,
    environ: dict[str, str],
    *,
    build: bool = False,
    wait: bool = True,
    timeout: str | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    fresh: Callable[[int], bool] | None = None,
    reload: str | None = None,
    other_checkouts: bool = False,
) -> None:
    """`inv up`'s body for one slot: stack.up with the renderer's callbacks, then its report.
    `fresh`: recreate the slot's database once preflight passed and it says yes."""
    with out().gate_progress(target.slot) as on_gate:
        hooks = stack.Hooks(
            preflight=out().preflight,
            busy=out().line,
            compose=out().compose_up,
            gate=on_gate,
            step=out().step,
            build=functools.partial(_rebuild, environ) if build else None,
            app_image=lambda src: stack.app_image(src, ROOT, environ, out().step),
            fresh=fresh,
            queue=out().line,
        )
        result = stack.up(
            target,
            environ,
            source=source,
            layout=layout,
            recreate=build,
            wait=wait,
            timeout=stack.gate_timeout(timeout, target, environ),
            hooks=hooks,
            reload=apps.parse_reload(reload),
            other_checkouts=other_checkouts,
        )
    snapshot_db.recover_interrupted(target, environ, out().line)
    _report_up(target.slot, result)


def _swarm_up(
    slot: str | None,
    source: apps.Source,
    environ: dict[str, str],
    layout: slots.Layout,
    *,
    wait: bool,
    timeout: str | None,
) -> None:
    """`inv up` on a swarm: the slot as the stack ktrdr-sandbox-N (sandbox/swarm/)."""
    if slot is not None and slot.strip().lower() == "auto":
        raise SandboxError("--slot=auto is not supported on a swarm: pass --slot=N", Exit.USAGE)
    target = _target(slot)
    with out().gate_progress(target.slot) as on_gate:
        options = swarm_deploy.Options(
            source, layout, wait, stack.gate_timeout(timeout, target, environ)
        )
        hooks = stack.Hooks(
            busy=out().line,
            gate=on_gate,
            step=out().step,
            app_image=lambda src: swarm_deploy.app_image(src, ROOT, environ, out().step),
        )
        result = swarm_deploy.up(target, environ, options, hooks)
    out().step("stack", f"`docker stack deploy` took {result.compose_seconds:.1f}s")
    if result.gate is None:
        out().line(
            f"slot {target.slot} deployed without waiting; `inv status --slot={target.slot}`"
        )
        return
    out().step("nodes", swarm_deploy.summary(result))
    out().gate_summary(result.gate, result.logs)
    if not result.gate.passed:
        raise InvokeExit(
            f"error: slot {target.slot} did not become ready on the swarm; failing checks and "
            f"their logs are above (`inv logs --slot={target.slot}` for more)",
            code=int(Exit.FAILED),
        )


def _confirm_fresh(yes: bool, slot: int) -> bool:
    """`--fresh` deletes a database: asked on a terminal, `--yes` in scripts."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise SandboxError(
            f"--fresh deletes slot {slot}'s database: add --yes to confirm it when not on a "
            "terminal",
            Exit.USAGE,
        )
    return input(provenance.confirm_question(slot)).strip().lower() in ("y", "yes")


def _rebuild(environ: Mapping[str, str]) -> None:
    out().step("build", "reference app image")
    images.build_app(ROOT, environ)


def _report_up(slot: int, result: stack.UpResult) -> None:
    if result.gate is None:
        out().line(f"slot {slot} started without waiting; check it with `inv verify`")
        return
    out().up_result(result)
    if not result.gate.passed:
        raise InvokeExit(
            f"error: slot {slot} did not become ready; failing checks and their logs "
            f"are above (`inv logs --slot={slot}` for more)",
            code=int(Exit.FAILED),
        )


@task(
    name="observability",
    positional=["action"],
    help={"action": "up, down or status"},
)
@handled
def observability_task(c: Context, action: str) -> None:
    """The machine's one shared Jaeger, Prometheus and Grafana (for --observability=shared)."""
    environ = dict(os.environ)
    if action == "up":
        observability.up(ROOT, environ)
    elif action == "down":
        observability.down(ROOT, environ)
        out().line(f"{observability.PROJECT} is down")
        return
    elif action != "status":
        raise SandboxError(
            f"unknown action {action!r}: use `inv observability up`, `down` or `status`",
            Exit.USAGE,
        )
    out().observability(observability.status(environ))


@task(
    help={
        "slot": SLOT_HELP,
        "volumes": "also remove the database volume(s) (data lost)",
        "all": "every slot of this engine, orphans included (lists them and asks first)",
        "yes": "with --all: do not ask (for scripts; without a terminal it is required)",
        "other-checkouts": "with --volumes: " + OTHERS_HELP,
    }
)
@handled
def down(
    c: Context,
    slot: str | None = None,
    volumes: bool = False,
    all_: bool = False,
    yes: bool = False,
    other_checkouts: bool = False,
) -> None:
    """Stop and remove a slot's containers (or every slot's, --all); volumes only with --volumes."""
    if all_:
        _down_all(slot, volumes, yes, other_checkouts)
        return
    target = _target(slot)
    record = swarm_record.selected_record(ROOT, target.slot, os.environ)
    if record is not None:
        swarm_teardown.down(target, dict(os.environ), record, volumes=volumes)
        kept = "removed its volumes" if volumes else "kept its volumes"
        out().line(f"slot {target.slot} (stack {record.stack}) is down on the swarm; {kept}")
        return
    stack.down(
        target,
        dict(os.environ),
        volumes=volumes,
        on_busy=out().line,
        on_orphan=lambda old: out().line(
            f"slot {target.slot} was started from {old}, which no longer exists (orphaned); "
            "taking it down from here"
        ),
        other_checkouts=other_checkouts,
    )
    kept = "removed its volumes" if volumes else "kept its volumes"
    out().line(f"slot {target.slot} ({target.project}) is down; {kept}")


def _down_all(slot: str | None, volumes: bool, yes: bool, others: bool) -> None:
    if slot is not None:
        raise SandboxError("pass --slot=N or --all, not both", Exit.USAGE)
    environ = dict(os.environ)
    compose_cmd = _compose(environ)
    found = teardown.survey(environ, ROOT)
    # With --volumes a database that stays (another checkout's) is listed too, as kept.
    shown = [e for e in found if e.acts(volumes, others) or (volumes and e.volumes)]
    entries = [e for e in shown if e.acts(volumes, others)]
    for entry in shown:
        out().line(entry.describe(volumes, others))
    if not entries:
        out().line("no slot has containers" + ("" if volumes else " (volumes are kept)"))
        return
    if not teardown.confirm_or_refuse(entries, yes, sys.stdin.isatty(), input):
        raise InvokeExit("nothing taken down", code=int(Exit.FAILED))
    for entry in entries:
        removes = volumes and (entry.ours or others)
        teardown.take_down(entry, compose_cmd, environ, volumes=removes, root=ROOT)
        kept = "" if removes or not entry.volumes else "; kept its volumes"
        out().line(f"slot {entry.slot} ({entry.project}) is down{kept}")


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
    environ = dict(os.environ)
    if torch is not None:
        apps.check_torch(torch)
    apps.check_models(models)
    wanted = picker.parse_choice(slot)
    plan = branchflow.check_new(repo, branch, base, environ)
    with picker.claim_slot(environ, wanted, picker.Claim(on_busy=out().line)) as n:
        out().line(f"slot {n}: {'the lowest free slot' if wanted is None else 'free'}")
        made = worktrees.create(plan.repo, branch, base, environ)
        out().step("worktree", f"{made.path} (branch {branch})")
        target = compose.load_target(ROOT, n, environ)
        try:
            source = dataclasses.replace(apps.detect(made.path, torch), models=models)
            _start(target, source, environ, wait=not no_wait, timeout=timeout)
        except (SandboxError, InvokeExit):
            out().line(branchflow.kept_hint(plan, made.path))
            raise
    urls = net.urls(target, environ)
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
    environ = dict(os.environ)
    number = None if slot is None else slots.parse_slot(slot)
    target = branchflow.done_target(environ, branch, number, repo)
    report = branchflow.check_done(target, force, environ)
    if not report.safe:
        overrides = f"--force overrides: {'; '.join(report.at_risk())}; throwing away:"
        out().details("\n".join([overrides, *report.lines()]))
    if target.slot is not None:
        stack.down(
            compose.load_target(ROOT, target.slot), environ, volumes=True, on_busy=out().line
        )
        out().line(f"slot {target.slot} is down; its volumes and .env.sandbox removed")
    removed = branchflow.remove_worktree(target, force, environ)
    out().line(f"removed the worktree {removed}; the branch stays in {target.repo}")


@task(help={"slot": SLOT_HELP, "service": "the service (default backend)"})
@handled
def shell(c: Context, slot: str | None = None, service: str = "backend") -> None:
    """An interactive shell in a slot's service: bash, else sh."""
    _exec(_target(slot), slots.parse_service(service), stack.SHELL)


@task(
    name="exec",
    help={"slot": SLOT_HELP, "service": "the service (default backend)"},
)
@handled
def exec_(c: Context, slot: str | None = None, service: str = "backend") -> None:
    """Run a command in a slot's service: `inv exec --slot=N --service=S -- CMD ARGS...`."""
    argv = stack.after_double_dash(sys.argv, c.remainder)
    _exec(_target(slot), slots.parse_service(service), argv)


def _exec(target: compose.Target, service: str, argv: list[str]) -> None:
    environ = dict(os.environ)
    record = swarm_record.selected_record(ROOT, target.slot, environ)
    if record is not None:
        done = swarm_access.run_exec(record, service, argv, environ, sys.stdin.isatty())
        if not done.ok:
            raise InvokeExit(code=done.returncode if done.returncode > 0 else int(Exit.COMMAND))
        return
    cmd = stack.exec_command(_compose(environ), target, service, argv, sys.stdin.isatty())
    result = runner.run(cmd, env=compose.environment(target, environ), capture=False)
    if not result.ok:  # the command's own status; Compose or the command said why
        raise InvokeExit(code=result.returncode if result.returncode > 0 else int(Exit.COMMAND))


@task(name="mcp")
@handled
def mcp_server(c: Context) -> None:
    """An MCP server on stdin/stdout: the slot life cycle as tools (README: registering it)."""
    mcpserver.serve()


@task(help={"slot": SLOT_HELP, "watch": "keep sending every change until Ctrl-C"})
@handled
def sync(c: Context, slot: str | None = None, watch: bool = False) -> None:
    """Send a remote slot's --source checkout to the engine's host again; the app reloads."""
    target = _target(slot)
    environ = dict(os.environ)
    where = engine.detect(environ)
    if where.local and apps.recorded_copy(ROOT, target.slot):
        raise SandboxError(
            f"slot {target.slot} was started on a remote engine, which holds its copy: set "
            "DOCKER_HOST (or the context) as for that `inv up`, then re-run",
            Exit.USAGE,
        )
    if where.local:
        out().line(
            f"slot {target.slot} runs on this machine's engine: it mounts the checkout, so "
            "edits reach it as they are saved; nothing to sync"
        )
        return
    source = codesync.slot_source(target)
    image = enginehost.helper_image(ROOT, environ)

    def report(synced: codesync.Synced) -> None:
        out().step("source", synced.describe(where.host))

    if not watch:
        with lock.slot_lock(target.slot, wait=LOCK_WAIT, on_busy=out().line):
            report(codesync.send(target, environ, source, image))
        return
    out().line(f"watching {source.path} for slot {target.slot} on {where.host} (Ctrl-C stops)")
    try:
        codesync.watch(target, environ, source, image, report, on_busy=out().line)
    except KeyboardInterrupt:
        out().line("stopped watching")


@task(help={"slot": SLOT_HELP})
@handled
def tunnel(c: Context, slot: str | None = None) -> None:
    """Forward a slot's ports from an ssh:// engine's loopback to this machine's (Ctrl-C)."""
    target = _target(slot)
    environ = dict(os.environ)
    where = engine.detect(environ)
    ports = forwarding.slot_ports(target)
    cmd = forwarding.command(where, ports)
    lock_dir = lock.default_lock_dir(environ)
    cleaned = forwarding.reclaim(lock_dir, target.slot)
    if cleaned:
        out().line(cleaned)
    forwarding.check_free(ports)
    out().line(
        f"forwarding slot {target.slot}'s {len(ports)} ports from {where.host}'s loopback to "
        f"127.0.0.1 (same numbers); with KTRDR_CONNECT_HOST=127.0.0.1 the tasks use them. "
        "Ctrl-C closes the tunnel"
    )

    def record(ssh_pid: int) -> None:
        made = forwarding.Record(target.slot, ssh_pid, os.getpid(), tuple(ports), time.time())
        forwarding.write_record(lock_dir, made)

    try:
        result = runner.run(cmd, env=environ, capture=False, started=record)
    except KeyboardInterrupt:
        out().line("tunnel closed")
        return
    finally:
        forwarding.clear_record(lock_dir, target.slot, os.getpid())
    if result.returncode == 127:
        raise SandboxError(
            "no `ssh` on PATH: install OpenSSH's client (the one Docker uses for ssh:// "
            "engines), then re-run",
            Exit.COMMAND,
        )
    if not result.ok:
        raise SandboxError(
            f"the tunnel to {forwarding.destination(where)[-1]} ended (ssh exit status "
            f"{result.returncode}): ssh's lines above say why",
            Exit.COMMAND,
        )


@contextlib.contextmanager
def _json_errors(schema: str) -> Iterator[None]:
    """With --json, a failure still prints a document on stdout (its `error` member says
    what stderr says), so a script always parses something; the exit code is unchanged."""
    try:
        yield
    except SandboxError as exc:
        print(statusjson.dumps(statusjson.error_document(schema, str(exc), int(exc.code))))
        if exc.details:  # stdout holds the document and nothing else: the rest to stderr
            sys.stderr.write(exc.details.rstrip("\n") + "\n")
        raise SandboxError(str(exc), exc.code) from None
    except OSError as exc:
        print(statusjson.dumps(statusjson.error_document(schema, str(exc), int(Exit.FAILED))))
        raise


def _note(text: str) -> None:
    """A line beside a command's output, on stderr (stdout may be a JSON document)."""
    print(text, file=sys.stderr)


def _recover_restores(environ: Mapping[str, str], only: int | None) -> None:
    """An interrupted restore of a slot shown is put right here (said on stderr)."""
    for number in restoremark.interrupted_slots(environ):
        if only in (None, number):
            snapshot_db.recover_interrupted(compose.load_target(ROOT, number), environ, _note)


@task(
    help={
        "slot": "show only this slot",
        "json": "one JSON document (STATUS_JSON.md)",
        "swarm": "the slots this checkout deployed on a swarm (a slot's own status shows "
        "its swarm view by itself)",
    }
)
@handled
def status(c: Context, slot: str | None = None, json: bool = False, swarm_: bool = False) -> None:
    """One table for every slot that has containers (one Docker call for all)."""
    environ = dict(os.environ)
    if swarm_ or _swarm_slot(slot, environ) is not None:
        _swarm_status(environ, _swarm_slot(slot, environ), json)
        return
    if json:
        with _json_errors(statusjson.SCHEMA):
            only = None if slot is None else slots.parse_slot(slot)
            _recover_restores(environ, only)
            document = statusjson.collect(environ, only, ROOT)
        print(statusjson.dumps(document))
        return
    only = None if slot is None else slots.parse_slot(slot)
    _recover_restores(environ, only)
    out().status(slot_status.collect(environ, only, ROOT), only_slot=only)


def _swarm_slot(slot: str | None, environ: Mapping[str, str]) -> int | None:
    """The slot `--slot` names when this checkout deployed it on a swarm; None otherwise (a
    bad value included: the one-engine path reports it)."""
    try:
        number = None if slot is None else slots.parse_slot(slot)
    except SandboxError:
        return None
    if number is None or swarm_record.selected_record(ROOT, number, environ) is None:
        return None
    return number


def _swarm_status(environ: Mapping[str, str], only: int | None, as_json: bool) -> None:
    found = swarm_status.status(ROOT, environ, only)
    if as_json:
        print(statusjson.dumps({"swarm": [s.document() for s in found]}))
        return
    if not found:
        out().line("no slot of this checkout is deployed on a swarm")
        return
    header = ["slot", "service", "node", "address", "state", "ports"]
    rows = [
        [
            str(s.slot),
            r.service,
            r.node,
            r.address,
            r.state + (f" ({r.error})" if r.error else ""),
            ",".join(map(str, r.ports)),
        ]
        for s in found
        for r in s.rows
    ]
    out().table(header, rows or [[str(s.slot), "-", "-", "-", "no services", "-"] for s in found])


@task(
    iterable=["slot"],
    help={
        "slot": "slot to verify; repeat for several: --slot=1 --slot=2",
        "json": "one JSON document (STATUS_JSON.md); the exit status still says pass or fail",
    },
)
@handled
def verify(c: Context, slot: list[str], json: bool = False) -> None:
    """What makes a running slot a slot, as named checks: health, own db, ports, shared dir."""
    with _json_errors(statusjson.VERIFY_SCHEMA) if json else contextlib.nullcontext():
        if not slot:
            raise SandboxError("which slots? pass --slot=N, repeated for several", Exit.USAGE)
        targets = [_target(s) for s in dict.fromkeys(slot)]
        environ = dict(os.environ)
        reports = _verify(targets, environ)
    if json:
        print(statusjson.dumps(statusjson.verify_document(reports)))
    else:
        out().verify(reports)
    failed = [r.slot for r in reports if not r.passed]
    if failed:
        where = "the JSON above" if json else "the table above"
        raise InvokeExit(
            f"error: verify failed for slot {', '.join(map(str, failed))}; see {where}",
            code=int(Exit.FAILED),
        )


def _verify(
    targets: list[compose.Target], environ: dict[str, str]
) -> list[slot_verify.VerifyReport]:
    """Each slot's report in the order asked: a swarm slot's from the swarm."""
    records = {t.slot: swarm_record.selected_record(ROOT, t.slot, environ) for t in targets}
    local = [t for t in targets if records[t.slot] is None]
    found = (
        {r.slot: r for r in slot_verify.verify(local, _compose(environ), environ)} if local else {}
    )
    for target in targets:
        record = records[target.slot]
        if record is not None:
            found[target.slot] = swarm_verify.verify(target, record, environ)
    return [found[t.slot] for t in targets]


@task(
    help={
        "slot": SLOT_HELP,
        "service": f"one service: {', '.join(slots.SERVICES)}",
        "follow": "keep streaming new lines (Ctrl-C to stop)",
        "tail": "how many lines of history per service (default 100)",
    }
)
@handled
def logs(
    c: Context,
    slot: str | None = None,
    service: str | None = None,
    follow: bool = False,
    tail: str = "100",
) -> None:
    """Show a slot's container logs."""
    target = _target(slot)
    lines = slots.parse_count(tail, "--tail")
    chosen = slots.parse_service(service) if service else None
    environ = dict(os.environ)
    record = swarm_record.selected_record(ROOT, target.slot, environ)
    if record is not None:
        if follow and chosen is None:
            raise SandboxError("on a swarm, --follow needs --service=NAME", Exit.USAGE)
        for name in (
            [chosen]
            if chosen
            else [s.service for s in swarm_status.slot_rows(record, environ).rows]
        ):
            cmd = swarm_access.logs_command(record.stack, name, follow, lines)
            runner.run(
                cmd, env=record.env(environ), capture=False, check=f"`{runner.display(cmd)}` failed"
            )
        return
    cmd = stack.logs_command(_compose(environ), target, chosen, follow, lines)
    env = compose.environment(target, environ)
    runner.run(cmd, env=env, capture=False, check=f"`{runner.display(cmd)}` failed")


@task(help={"slot": SLOT_HELP})
@handled
def psql(c: Context, slot: str | None = None) -> None:
    """Open psql on a slot's database (as ktrdr, database ktrdr)."""
    target = _target(slot)
    environ = dict(os.environ)
    if swarm_record.selected_record(ROOT, target.slot, environ) is not None:
        _exec(target, "db", ["psql", "-U", "ktrdr", "ktrdr"])
        return
    cmd = stack.psql_command(_compose(environ), target, sys.stdin.isatty())
    env = compose.environment(target, environ)
    failed = f"psql on slot {target.slot} failed; is it up? (`inv status --slot={target.slot}`)"
    runner.run(cmd, env=env, capture=False, check=failed)


@task(
    help={
        "slot": SLOT_HELP,
        "export": "print `export NAME=value` lines for eval in a shell",
        "check": "validate every env file (ports distinct and in range, nothing missing)",
        "write": "regenerate env/slot-*.env and the docs' port table from sandbox/slots.py",
    }
)
@handled
def env(
    c: Context,
    slot: str | None = None,
    export: bool = False,
    check: bool = False,
    write: bool = False,
) -> None:
    """Print a slot's env file, or check / regenerate all of them."""
    if write:
        _write_env_files()
    if check:
        _check_env_files()
    if not (write or check):
        _print_env(_target(slot), export)


def _write_env_files() -> None:
    changed = envfiles.write_all(ROOT)
    out().line(f"rewrote {len(changed)} env file(s)" if changed else "env files are up to date")
    if docs.sync(ROOT):
        out().line(f"rewrote the port tables in {docs.MANUAL} and {docs.README}")


def _check_env_files() -> None:
    problems = envfiles.check_all(ROOT)
    for problem in problems:
        out().line(str(problem))
    if problems:
        raise InvokeExit(f"error: {len(problems)} problem(s) in env/", code=int(Exit.BAD_ENV))
    out().line(f"env/: {len(slots.SLOTS)} files valid, no port shared between slots")


def _print_env(target: compose.Target, export: bool) -> None:
    if not export:
        out().line(target.env_file.read_text().rstrip("\n"))
        return
    for name, value in target.values.items():
        out().line(f"export {name}={shlex.quote(value)}")


@task(
    name="init-shared",
    help={"from": "a KTRDR checkout whose data/, models/, strategies/ to copy (never overwrites)"},
)
@handled
def init_shared(c: Context, from_: str | None = None) -> None:
    """Create ~/.ktrdr/shared/{data,models,strategies}; optionally fill it from a checkout.
    With a remote engine (DOCKER_HOST, a context): on that engine's host, same path."""
    target = envfiles.SHARED_DIR_DEFAULT
    source = shared.check_source(Path(from_).expanduser()) if from_ else None
    environ = dict(os.environ)
    where = engine.detect(environ)
    if not where.local:
        _init_remote_shared(str(target), source, environ, where)
        return
    created = shared.ensure(target)
    out().line("created " + ", ".join(map(str, created)) if created else f"{target} already exists")
    if source is not None:
        report = shared.copy_missing(source, target)
        out().line(
            f"copied {len(report.copied)} file(s) into {target}; "
            f"left {len(report.skipped)} existing file(s) as they were"
        )


def _init_remote_shared(
    directory: str, source: Path | None, environ: Mapping[str, str], where: engine.Engine
) -> None:
    docker.check_engine(environ)
    image = enginehost.helper_image(ROOT, environ)
    done = enginehost.init_shared(directory, source, image, environ)
    made = ", ".join(done.created) if done.created else "nothing (it exists)"
    out().line(f"{directory} on {where.host}: created {made}")
    if source is not None:
        out().line(
            f"streamed {', '.join(done.sent)} of {source} ({done.files} file(s)) into it; "
            "files already there were kept"
        )


@task(
    name="images",
    help={
        "offline": "build every image locally with no registry (Debian base via debootstrap)",
        "online": "pull upstream images (fail rather than fall back to offline)",
        "to-engine": "send this machine's images (docker save | docker load) to the remote "
        "engine DOCKER_HOST or the current context names; builds nothing",
        "source": "only the dependency image of this KTRDR checkout (what `inv up --source` "
        "runs on): built, or reused when its lock is unchanged; ahead of several `inv new`",
        "torch": TORCH_HELP,
    },
)
@handled
def build_images(
    c: Context,
    offline: bool = False,
    online: bool = False,
    to_engine: bool = False,
    source: str | None = None,
    torch: str | None = None,
) -> None:
    """Get every image the compose file needs: pulled upstream, or built offline."""
    environ = dict(os.environ)
    docker.check_engine(environ)
    if to_engine:
        _send_images(environ)
        return
    if source is not None:
        if offline or online:
            raise SandboxError(
                "--source builds with the images `inv images` chose (./.env): leave out "
                "--offline/--online",
                Exit.USAGE,
            )
        checkout = apps.from_flag(source, torch)
        if stack.app_image(checkout, ROOT, environ, out().step) is None:
            raise SandboxError(
                f"{source} runs on the reference app's image: plain `inv images` builds it",
                Exit.USAGE,
            )
        return
    if offline and online:
        raise SandboxError("pick one of --offline and --online", Exit.USAGE)
    if not offline and not online:
        offline = not images.registry_reachable(environ)
        if offline:
            out().line("no registry reachable: building every image locally (--offline)")
    built = images.build(ROOT, offline, environ, on_step=lambda s: out().step("building", s.what))
    out().images(built, offline)


def _send_images(environ: Mapping[str, str]) -> None:
    loaded = images.to_engine(ROOT, environ)
    for image in loaded.images:
        out().step("sent", image)
    for image in loaded.skipped:
        out().step("there already", image)
    out().line(
        f"images: {len(loaded.images)} sent ({loaded.bytes / 1e6:.0f} MB in "
        f"{loaded.seconds:.1f}s), {len(loaded.skipped)} already on the engine"
    )


# --- data between slots: snapshots, restore, clone -----------------------------------------


def _confirm(question: str) -> bool:
    """Ask on a terminal; with no terminal the answer is no (scripts pass --yes)."""
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


@task(
    help={
        "slot": "the slot whose database to dump",
        "name": "the snapshot's name (default: slot<N>-<UTC time>)",
        "delete": "delete the snapshot of this name instead",
    }
)
@handled
def snapshot(
    c: Context, slot: str | None = None, name: str | None = None, delete: str | None = None
) -> None:
    """Dump a slot's database into ~/.ktrdr/snapshots (or $KTRDR_SNAPSHOT_DIR)."""
    environ = dict(os.environ)
    if delete is not None:
        out().line(f"deleted {snapshot_store.delete(environ, delete)}")
        return
    target = _target(slot)
    _no_swarm(target.slot, "snapshot")
    app, _ = snapshots.running_app(target.slot, environ)
    made = snapshots.snapshot(
        target, _compose(environ), environ, name=name, app=app, on_step=out().line
    )
    out().line(
        f"snapshot {made.name}: slot {made.source_slot}, {snapshot_store.human_size(made.size)}"
    )


def _no_swarm(slot: int, what: str) -> None:
    if swarm_record.selected_record(ROOT, slot, os.environ) is not None:
        raise SandboxError(
            f"{what} of a swarm slot is not supported yet: its database lives on the db "
            f"node; `inv exec --slot={slot} --service=db -- pg_dump -U ktrdr ktrdr` dumps it",
            Exit.USAGE,
        )


@task(name="snapshots")
@handled
def list_snapshots(c: Context) -> None:
    """List snapshots: name, source slot, app, size, age, migration."""
    rows = snapshot_store.list_snapshots(dict(os.environ))
    out().snapshots(rows)


@task(
    help={
        "slot": "the slot whose database is replaced",
        "name": "the snapshot to restore",
        "yes": "replace a database that has tables without asking",
        "other-checkouts": OTHERS_HELP,
    }
)
@handled
def restore(
    c: Context, name: str, slot: str | None = None, yes: bool = False, other_checkouts: bool = False
) -> None:
    """Replace a slot's database with a snapshot (asks first when it has tables)."""
    target = _target(slot)
    _no_swarm(target.slot, "restore")
    environ = dict(os.environ)
    app, chain = snapshots.running_app(target.slot, environ)
    done = snapshots.restore(
        target, _compose(environ), environ, name, yes=yes, confirm=_confirm, app=app,
        migrations=chain, on_step=out().line, other_checkouts=other_checkouts,
    )  # fmt: skip
    _report_restored(done)


@task(
    name="clone",
    help={
        "from": "the slot to copy the database from",
        "to": "the slot whose database is replaced",
        "yes": "replace a database that has tables without asking",
        "other-checkouts": OTHERS_HELP,
    },
)
@handled
def clone_slot(
    c: Context,
    from_: str | None = None,
    to: str | None = None,
    yes: bool = False,
    other_checkouts: bool = False,
) -> None:
    """Copy one slot's database over another's (asks first when the target has tables)."""
    source, destination = _target(from_), _target(to)
    environ = dict(os.environ)
    _, chain = snapshots.running_app(destination.slot, environ)
    done = snapshots.clone(
        source, destination, _compose(environ), environ, yes=yes, confirm=_confirm,
        migrations=chain, on_step=out().line, other_checkouts=other_checkouts,
    )  # fmt: skip
    _report_restored(done)


def _report_restored(done: snapshots.Restored) -> None:
    out().line(f"slot {done.slot} now holds {done.source} ({snapshot_store.human_size(done.size)})")
    if done.note():
        out().line(done.note())
