"""Data between slots: `inv snapshot`, `inv snapshots`, `inv restore`, `inv clone`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from sandbox.cli import common
from sandbox.cli.common import OTHERS_HELP, handled, out
from sandbox.errors import Exit, SandboxError

if TYPE_CHECKING:
    from sandbox import compose
    from sandbox.snapshots import operations


def _confirm(yes: bool, slot: int) -> Callable[[str], bool]:
    """Replacing a database that has tables: asked on a terminal, `--yes` in scripts
    (sandbox/ask.py)."""
    from sandbox import ask

    refusal = (
        f"nothing done: slot {slot}'s database has tables and there is no terminal to ask: "
        "re-run with --yes to replace it"
    )
    return lambda question: ask.confirm(question, yes, refusal)


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
    from sandbox.snapshots import operations, store

    environ = dict(os.environ)
    if delete is not None:
        out().line(f"deleted {store.delete(environ, delete)}")
        return
    target = common.target(slot)
    app, _, database = _slot_database(target, environ)
    made = operations.snapshot(
        target, common.compose_cli(environ), environ, name=name, app=app, on_step=out().line,
        database=database,
    )  # fmt: skip
    out().line(f"snapshot {made.name}: slot {made.source_slot}, {store.human_size(made.size)}")


def _slot_database(
    target: compose.Target, environ: dict[str, str]
) -> tuple[str, list[str] | None, operations.Opener]:
    """What the slot runs (its app, its migration chain) and how its database is opened: on
    its node for a slot this checkout deployed on a swarm (sandbox/swarm/database.py)."""
    from sandbox.snapshots import database, operations
    from sandbox.swarm import database as swarm_database
    from sandbox.swarm import record as swarm_record

    record = swarm_record.selected_record(common.ROOT, target.slot, environ)
    if record is None:
        app, chain = operations.running_app(target.slot, environ)
        return app, chain, database.open_database
    app, chain = swarm_database.running_app(common.ROOT, target.slot)
    return app, chain, swarm_database.opener(record, environ)


def _no_swarm(slot: int, what: str) -> None:
    from sandbox.swarm import record

    if record.selected_record(common.ROOT, slot, os.environ) is not None:
        raise SandboxError(
            f"{what} of a swarm slot is not supported: `inv snapshot` the one slot and "
            f"`inv restore` the snapshot into the other",
            Exit.USAGE,
        )


@task(name="snapshots")
@handled
def list_snapshots(c: Context) -> None:
    """List snapshots: name, source slot, app, size, age, migration."""
    from sandbox.snapshots import store

    rows = store.list_snapshots(dict(os.environ))
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
    from sandbox.snapshots import operations

    target = common.target(slot)
    environ = dict(os.environ)
    app, chain, database = _slot_database(target, environ)
    done = operations.restore(
        target, common.compose_cli(environ), environ, name, yes=yes,
        confirm=_confirm(yes, target.slot), app=app, migrations=chain, on_step=out().line,
        other_checkouts=other_checkouts, database=database,
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
    from sandbox.snapshots import operations

    source, destination = common.target(from_), common.target(to)
    for target in (source, destination):
        _no_swarm(target.slot, "clone")
    environ = dict(os.environ)
    _, chain = operations.running_app(destination.slot, environ)
    done = operations.clone(
        source, destination, common.compose_cli(environ), environ, yes=yes,
        confirm=_confirm(yes, destination.slot), migrations=chain, on_step=out().line,
        other_checkouts=other_checkouts,
    )  # fmt: skip
    _report_restored(done)


def _report_restored(done: operations.Restored) -> None:
    from sandbox.snapshots import store

    out().line(f"slot {done.slot} now holds {done.source} ({store.human_size(done.size)})")
    if done.note():
        out().line(done.note())
