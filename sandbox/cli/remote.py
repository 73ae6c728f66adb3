"""A remote engine's tasks: `inv sync` (a --source checkout sent again) and `inv tunnel`."""

from __future__ import annotations

import os
import time

from invoke.context import Context
from invoke.tasks import task

from sandbox.cli import common
from sandbox.cli.common import SLOT_HELP, handled, out
from sandbox.errors import Exit, SandboxError
from sandbox.settings import LOCK_WAIT


@task(help={"slot": SLOT_HELP, "watch": "keep sending every change until Ctrl-C"})
@handled
def sync(c: Context, slot: str | None = None, watch: bool = False) -> None:
    """Send a remote slot's --source checkout to the engine's host again; the app reloads."""
    from sandbox import engine, lock, slotfiles
    from sandbox.remote import codesync, enginehost

    target = common.target(slot)
    environ = dict(os.environ)
    where = engine.detect(environ)
    if where.local and slotfiles.recorded_copy(common.ROOT, target.slot):
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
    image = enginehost.helper_image(common.ROOT, environ)

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
    from sandbox import engine, lock, runner
    from sandbox.remote import tunnel as forwarding

    target = common.target(slot)
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
