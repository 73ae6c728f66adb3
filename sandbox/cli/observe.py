"""`inv status`, `inv verify`, `inv logs`: what the slots are doing, read from the engine.

`inv status` is the task run most often: its imports are measured (tests/unit/test_cli.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.exceptions import Exit as InvokeExit
from invoke.tasks import task

from sandbox import slots
from sandbox.cli import common
from sandbox.cli.common import SLOT_HELP, handled, out
from sandbox.errors import Exit, SandboxError

if TYPE_CHECKING:
    from sandbox import compose
    from sandbox import verify as slot_verify


def _recover_restores(environ: Mapping[str, str], only: int | None) -> None:
    """An interrupted restore of a slot shown is put right here (said on stderr)."""
    from sandbox.snapshots import marker

    for number in marker.interrupted_slots(environ):
        if only in (None, number):
            from sandbox import compose  # only for a slot that needs it
            from sandbox.snapshots import database

            target = compose.load_target(common.ROOT, number)
            database.recover_interrupted(target, environ, common.note)


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
        from sandbox.ui import statusjson

        with common.json_errors(statusjson.SCHEMA):
            only = None if slot is None else slots.parse_slot(slot)
            _recover_restores(environ, only)
            document = statusjson.collect(environ, only, common.ROOT)
        print(statusjson.dumps(document))
        return
    from sandbox import status as slot_status

    only = None if slot is None else slots.parse_slot(slot)
    _recover_restores(environ, only)
    out().status(slot_status.collect(environ, only, common.ROOT), only_slot=only)


def _swarm_slot(slot: str | None, environ: Mapping[str, str]) -> int | None:
    """The slot `--slot` names when this checkout deployed it on a swarm; None otherwise (a
    bad value included: the one-engine path reports it)."""
    try:
        number = None if slot is None else slots.parse_slot(slot)
    except SandboxError:
        return None
    if number is None:
        return None
    from sandbox.swarm import record

    if record.selected_record(common.ROOT, number, environ) is None:
        return None
    return number


def _swarm_status(environ: Mapping[str, str], only: int | None, as_json: bool) -> None:
    from sandbox.swarm import status as swarm_status
    from sandbox.ui import statusjson

    found = swarm_status.status(common.ROOT, environ, only)
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
    from sandbox.ui import statusjson

    with common.json_errors(statusjson.VERIFY_SCHEMA) if json else contextlib.nullcontext():
        if not slot:
            raise SandboxError("which slots? pass --slot=N, repeated for several", Exit.USAGE)
        targets = [common.target(s) for s in dict.fromkeys(slot)]
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
    from sandbox import verify as slot_verify
    from sandbox.swarm import record
    from sandbox.swarm import verify as swarm_verify

    records = {t.slot: record.selected_record(common.ROOT, t.slot, environ) for t in targets}
    local = [t for t in targets if records[t.slot] is None]
    found = (
        {r.slot: r for r in slot_verify.verify(local, common.compose_cli(environ), environ)}
        if local
        else {}
    )
    for target in targets:
        deployed = records[target.slot]
        if deployed is not None:
            found[target.slot] = swarm_verify.verify(target, deployed, environ)
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
    from sandbox import compose, runner
    from sandbox.swarm import access, record
    from sandbox.swarm import status as swarm_status

    target = common.target(slot)
    lines = slots.parse_count(tail, "--tail")
    chosen = slots.parse_service(service) if service else None
    environ = dict(os.environ)
    deployed = record.selected_record(common.ROOT, target.slot, environ)
    if deployed is not None:
        if follow and chosen is None:
            raise SandboxError("on a swarm, --follow needs --service=NAME", Exit.USAGE)
        for name in (
            [chosen]
            if chosen
            else [s.service for s in swarm_status.slot_rows(deployed, environ).rows]
        ):
            cmd = access.logs_command(deployed.stack, name, follow, lines)
            runner.run(
                cmd,
                env=deployed.env(environ),
                capture=False,
                check=f"`{runner.display(cmd)}` failed",
            )
        return
    cmd = compose.logs_command(common.compose_cli(environ), target, chosen, follow, lines)
    env = compose.environment(target, environ)
    runner.run(cmd, env=env, capture=False, check=f"`{runner.display(cmd)}` failed")
