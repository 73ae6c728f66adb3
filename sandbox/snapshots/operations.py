"""The operations: snapshot, restore and clone, each holding the slots' locks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sandbox import docker, lock, ownership, settings
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.snapshots.database import (
    DATABASE,
    SlotDatabase,
    dump_to_host,
    load_from_host,
    open_database,
    recover,
    say,
    say_swept,
)
from sandbox.snapshots.store import (
    PRIVATE_FILE,
    Manifest,
    check_name,
    default_name,
    dump_path,
    existing_store,
    human_size,
    load,
    name_taken,
    private_store,
    private_work,
    publish,
    snapshot_dir,
    sweep_partials,
    write_private,
)
from sandbox.snapshots.versions import VersionCheck, alembic_chain, compare_migrations

DEFAULT_APP = "reference"
# How a slot's database is opened: `open_database` through Compose; a swarm slot's on its node
# (sandbox/swarm/database.py).
Opener = Callable[[Target, Sequence[str], Mapping[str, str]], SlotDatabase]
# pg_dump's gzip level. Uncompressed: on a busy 2-core machine a 373 MB database dumped in
# 16 s at level 0, 86 s at 1 and 166 s at 6 (PostgreSQL 15 has no lz4/zstd for pg_dump);
# level 1 is 2.3x smaller. Speed wins for a developer's copies; `compression` trades back.
SNAPSHOT_COMPRESSION = "0"
# A clone's archive lives only until it is restored: never compressed.
CLONE_COMPRESSION = "0"

Confirm = Callable[[str], bool]


# --- the operations ------------------------------------------------------------------------


@contextmanager
def _locked(environ: Mapping[str, str], *slot_numbers: int) -> Iterator[None]:
    """Hold the slots' locks (ascending, so two clones in opposite directions cannot
    deadlock): `inv up`/`down` of these slots waits until the operation is done."""
    with ExitStack() as held:
        for number in sorted(set(slot_numbers)):
            held.enter_context(
                lock.slot_lock(
                    number, wait=settings.LOCK_WAIT, lock_dir=lock.default_lock_dir(environ)
                )
            )
        yield


def running_app(slot: int, environ: Mapping[str, str]) -> tuple[str, list[str] | None]:
    """What slot `slot` runs, for restore's checks: its app kind, and the migration chain of
    its source checkout when it has one (None: unknown, so a drift is only "different")."""
    own = [c for c in docker.sandbox_containers(environ) if c.slot == slot]
    app = next((c.app for c in own if c.app), DEFAULT_APP)
    source = next((c.source for c in own if c.source), "")
    versions = Path(source) / "alembic" / "versions" if source else None
    return app, alembic_chain(versions) if versions and versions.is_dir() else None


def snapshot(
    target: Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    *,
    name: str | None = None,
    app: str = DEFAULT_APP,
    now: datetime | None = None,
    compression: str = SNAPSHOT_COMPRESSION,
    on_step: Callable[[str], None] | None = None,
    database: Opener = open_database,
) -> Manifest:
    """Dump slot `target`'s database into the snapshot store as `name` (default
    slot<N>-<UTC time>). Refuses a name in use, before the dump and again (under the store's
    lock) as it takes the name: two snapshots of one name from two slots at once, one wins
    and the other is refused. Leaves no partial file behind; one a killed run left is swept
    (and said). `compression` is pg_dump's gzip level, 0-9."""
    moment = now or datetime.now(UTC)
    name = check_name(name) if name is not None else default_name(target.slot, moment)
    directory = existing_store(environ)
    refused = name_taken(directory, name)
    if refused is not None:
        raise refused
    with _locked(environ, target.slot):
        db = database(target, compose_cmd, environ)
        _prepare_store(db, directory, on_step)
        migration = db.migration()
        pg_version = db.sql("SHOW server_version")
        database_size = int(db.sql("SELECT pg_database_size(current_database())"))
        say(on_step, f"pg_dump of slot {target.slot} ({human_size(database_size)})")
        with private_work(directory, name) as work:
            size = dump_to_host(db, work / "dump", compression)
            (work / "dump").chmod(PRIVATE_FILE)
            manifest = Manifest(
                name, target.slot, app, migration, size, moment.isoformat(), DATABASE,
                pg_version, database_size,
            )  # fmt: skip
            write_private(work / "manifest", manifest.to_json())
            publish(work, directory, name)
    return manifest


def _prepare_store(
    db: SlotDatabase, directory: Path, on_step: Callable[[str], None] | None
) -> None:
    """Before writing: the store made (private), and what killed runs left in it and in the
    db container's /tmp removed, each said."""
    say_swept(db, on_step)
    # The default store is ours to close; a directory the user named may be shared on purpose.
    default = directory.name == "snapshots" and directory.parent.name == ".ktrdr"
    for said in private_store(directory, default):
        say(on_step, said)
    swept = sweep_partials(directory)
    if swept:
        say(on_step, swept)


@dataclass(frozen=True)
class Restored:
    """What a restore or clone did."""

    slot: int
    source: str  # "snapshot NAME" or "slot N"
    versions: VersionCheck
    replaced_tables: int  # tables the slot's database had before (0: nothing was there)
    size: int  # bytes of the archive loaded

    def note(self) -> str:
        """The migration warning to show after the fact, or ''."""
        return self.versions.describe(self.slot, self.source)


def _ask(db: SlotDatabase, source: str, versions: VersionCheck, yes: bool, confirm: Confirm) -> int:
    """Ask before replacing a database that has tables; the number of tables it had."""
    tables, rows = db.tables()
    if tables and not yes:
        slot = db.target.slot
        question = (
            f"slot {slot}'s database has {tables} table(s), about {rows} row(s): replace it "
            f"with {source}?"
        )
        warning = versions.describe(slot, source)
        if warning:
            question += f" ({warning})"
        if not confirm(question):
            raise SandboxError(
                f"nothing done: slot {slot}'s database is unchanged (pass --yes to replace "
                "it without asking)",
                Exit.FAILED,
            )
    return tables


def restore(
    target: Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    name: str,
    *,
    yes: bool,
    confirm: Confirm,
    app: str = DEFAULT_APP,
    migrations: Sequence[str] | None = None,
    on_step: Callable[[str], None] | None = None,
    other_checkouts: bool = False,
    database: Opener = open_database,
) -> Restored:
    """Replace slot `target`'s database with snapshot `name`.

    Refuses an unknown name and a snapshot of another app kind. A slot database with tables
    is replaced only when `yes` or `confirm(question)` says so; the question names a
    migration version that differs (newer/older when `migrations`, the revisions oldest
    first, orders them).
    """
    manifest = load(environ, name)
    if manifest.app != app:
        raise SandboxError(
            f"snapshot {name} is of the {manifest.app!r} app and slot {target.slot} runs "
            f"{app!r}: restore it into a slot running {manifest.app!r}",
            Exit.USAGE,
        )
    source = f"snapshot {name}"
    with _locked(environ, target.slot):
        db = database(target, compose_cmd, environ)
        command = f"inv restore --slot={target.slot} {name}"
        _check_owner(target, environ, command, other_checkouts)
        present = _ready_for_load(db, environ, on_step)
        current = db.migration() if present else None
        versions = compare_migrations(manifest.migration, current, migrations)
        replaced = _ask(db, source, versions, yes, confirm) if present else 0
        say(on_step, f"pg_restore of {name} ({human_size(manifest.size)}) into slot {target.slot}")
        load_from_host(
            db,
            dump_path(snapshot_dir(environ), name),
            environ,
            replace_existing=present,
            on_step=on_step,
        )
    return Restored(target.slot, source, versions, replaced, manifest.size)


def _check_owner(
    target: Target, environ: Mapping[str, str], command: str, other_checkouts: bool
) -> None:
    """The database about to be replaced must be this checkout's, as for `up` (sandbox/
    preflight.py), unless `--other-checkouts`."""
    own = [c for c in docker.sandbox_containers(environ) if c.slot == target.slot]
    ownership.check_database_owner(
        target, environ, own, command=command, action="replace it anyway",
        other_checkouts=other_checkouts,
    )  # fmt: skip


def _ready_for_load(
    db: SlotDatabase, environ: Mapping[str, str], on_step: Callable[[str], None] | None
) -> bool:
    """Leftovers of an interrupted restore put right (and said); whether the slot has a
    `ktrdr` to replace (without one, the load creates it)."""
    plan = recover(db, environ, on_step)
    if plan.missing:
        say(on_step, f"slot {db.target.slot} has no {DATABASE} database: this creates it")
    return not plan.missing


def clone(
    source: Target,
    destination: Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    *,
    yes: bool,
    confirm: Confirm,
    migrations: Sequence[str] | None = None,
    on_step: Callable[[str], None] | None = None,
    other_checkouts: bool = False,
    database: Opener = open_database,
) -> Restored:
    """Copy slot `source`'s database over slot `destination`'s (asked first when it has
    tables), through a temporary archive in the snapshot directory that is always removed."""
    if source.slot == destination.slot:
        raise SandboxError(
            f"--from and --to are both slot {source.slot}: pick two different slots", Exit.USAGE
        )
    label = f"slot {source.slot}"
    directory = existing_store(environ)
    with _locked(environ, source.slot, destination.slot):
        src = open_database(source, compose_cmd, environ)
        dst = open_database(destination, compose_cmd, environ)
        command = f"inv clone --from={source.slot} --to={destination.slot}"
        _check_owner(destination, environ, command, other_checkouts)
        _prepare_store(src, directory, on_step)
        present = _ready_for_load(dst, environ, on_step)
        current = dst.migration() if present else None
        versions = compare_migrations(src.migration(), current, migrations)
        replaced = _ask(dst, label, versions, yes, confirm) if present else 0
        with private_work(directory, f"clone-{source.slot}-to-{destination.slot}") as work:
            say(on_step, f"pg_dump of slot {source.slot}")
            size = dump_to_host(src, work / "dump", CLONE_COMPRESSION)
            say(on_step, f"pg_restore into slot {destination.slot} ({human_size(size)})")
            load_from_host(dst, work / "dump", environ, replace_existing=present, on_step=on_step)
    return Restored(destination.slot, label, versions, replaced, size)
