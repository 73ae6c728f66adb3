"""Database snapshots of a slot: take, list, delete, restore, clone.

A snapshot is two files in `~/.ktrdr/snapshots` (or `$KTRDR_SNAPSHOT_DIR`), never in a
checkout: `<name>.dump`, a `pg_dump` custom-format archive of the slot's `ktrdr` database, and
`<name>.json`, its manifest (source slot, app kind, migration version, sizes, time, server).

How the bytes move, measured with `benchmarks/bench_snapshots.py` (Docker 20.10, 2 busy cores):
`pg_dump` writes the archive to a file inside the db container and `docker cp` carries it to
the host (and back for a restore). Piping `docker compose exec -T db pg_dump` to the host goes
through the engine's attach stream instead: 300 MB took 17 s that way against 3 s with
`docker cp`, and a whole gzip -1 snapshot 162 s against 86 s. A one-off `pg_dump` container
writing into a bind mount took 42 s against 14 s, and needs the host user's uid and a mount
the engine can see. Every command goes through `runner.run`; no bytes pass through Python.

A restore never touches the slot's database until the new one is complete: `pg_restore` fills
a side database, then one `DROP DATABASE ... WITH (FORCE)` and a rename swap it in. A failed
restore leaves the slot as it was, and the result holds exactly the snapshot's objects (unlike
`pg_restore --clean`, which keeps any table the snapshot does not have).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from sandbox import compose, docker, lock, runner, settings
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display

SNAPSHOT_DIR_VARIABLE = "KTRDR_SNAPSHOT_DIR"
DEFAULT_APP = "reference"
# The compose file's POSTGRES_DB and POSTGRES_USER (the same for every slot).
DATABASE = "ktrdr"
DB_USER = "ktrdr"
# Filled by pg_restore, then renamed to DATABASE; a leftover of a killed restore is dropped.
SIDE_DATABASE = f"{DATABASE}_restoring"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
CONTAINER_TMP = "/tmp"
# pg_dump's gzip level. Uncompressed: on a busy 2-core machine a 373 MB database dumped in
# 16 s at level 0, 86 s at 1 and 166 s at 6 (PostgreSQL 15 has no lz4/zstd for pg_dump);
# level 1 is 2.3x smaller. Speed wins for a developer's copies; `compression` trades back.
SNAPSHOT_COMPRESSION = "0"
# A clone's archive lives only until it is restored: never compressed.
CLONE_COMPRESSION = "0"
# A dump or restore of a large database is slow but must end: an hour, then a clear failure.
COMMAND_TIMEOUT = 3600.0
SQL_TIMEOUT = 60.0
RESTORE_JOBS = "2"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Text a full disk leaves in pg_dump's or docker cp's error output.
DISK_FULL_PATTERN = re.compile(r"no space left on device|could not write", re.IGNORECASE)

Confirm = Callable[[str], bool]


# --- names and the store -------------------------------------------------------------------


def snapshot_dir(environ: Mapping[str, str]) -> Path:
    """`$KTRDR_SNAPSHOT_DIR` when set, else `$HOME/.ktrdr/snapshots`."""
    value = environ.get(SNAPSHOT_DIR_VARIABLE)
    if value:
        return Path(value).expanduser()
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".ktrdr" / "snapshots"


def check_name(name: str) -> str:
    """A name that is one plain file name: letters, digits, `.`, `_`, `-`, at most 80."""
    if not NAME_PATTERN.fullmatch(name) or name.endswith((DUMP_SUFFIX, MANIFEST_SUFFIX)):
        raise SandboxError(
            f"snapshot name {name!r} is not usable: use letters, digits, '.', '_' and '-' "
            "(up to 80, starting with a letter or digit, no .dump/.json ending)",
            Exit.USAGE,
        )
    return name


def default_name(slot: int, now: datetime) -> str:
    return f"slot{slot}-{now.astimezone(UTC):%Y%m%d-%H%M%S}"


def dump_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{DUMP_SUFFIX}"


def manifest_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{MANIFEST_SUFFIX}"


@dataclass(frozen=True)
class Manifest:
    """What is known about a snapshot, stored next to its dump as JSON."""

    name: str
    source_slot: int
    app: str
    migration: str | None  # alembic_version of the source, None when it has no such table
    size: int  # bytes of the dump file
    created: str  # ISO 8601, UTC
    database: str
    pg_version: str
    database_size: int  # pg_database_size of the source when dumped
    format: str = "pg_dump custom"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            data = json.loads(text)
            return cls(
                name=str(data["name"]),
                source_slot=int(data["source_slot"]),
                app=str(data["app"]),
                migration=None if data["migration"] is None else str(data["migration"]),
                size=int(data["size"]),
                created=str(data["created"]),
                database=str(data["database"]),
                pg_version=str(data["pg_version"]),
                database_size=int(data.get("database_size", 0)),
                format=str(data.get("format", "pg_dump custom")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                f"snapshot manifest {where} is unreadable ({exc}): delete it or restore it "
                "from a backup",
                Exit.FAILED,
            ) from exc

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)


@dataclass(frozen=True)
class Row:
    """One line of `inv snapshots`."""

    name: str
    source_slot: int
    app: str
    size: int
    age: timedelta
    migration: str | None


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit} ago"
    return f"{seconds}s ago"


def load(environ: Mapping[str, str], name: str) -> Manifest:
    """The manifest of snapshot `name`, or one line saying it does not exist."""
    directory = snapshot_dir(environ)
    check_name(name)
    path = manifest_path(directory, name)
    if not path.is_file() or not dump_path(directory, name).is_file():
        raise SandboxError(
            f"no snapshot named {name!r} in {directory}: `inv snapshots` lists them",
            Exit.USAGE,
        )
    return Manifest.from_json(path.read_text(), path)


def list_snapshots(environ: Mapping[str, str], now: datetime | None = None) -> list[Row]:
    """Every complete snapshot (manifest and dump both present), newest first."""
    directory = snapshot_dir(environ)
    if not directory.is_dir():
        return []
    moment = now or datetime.now(UTC)
    rows = []
    for path in directory.glob(f"*{MANIFEST_SUFFIX}"):
        name = path.name.removesuffix(MANIFEST_SUFFIX)
        if not NAME_PATTERN.fullmatch(name) or not dump_path(directory, name).is_file():
            continue
        m = Manifest.from_json(path.read_text(), path)
        rows.append(Row(m.name, m.source_slot, m.app, m.size, moment - m.created_at, m.migration))
    return sorted(rows, key=lambda row: row.age)


def delete(environ: Mapping[str, str], name: str) -> Manifest:
    """Remove snapshot `name` (its dump, then its manifest)."""
    manifest = load(environ, name)
    directory = snapshot_dir(environ)
    dump_path(directory, name).unlink(missing_ok=True)
    manifest_path(directory, name).unlink(missing_ok=True)
    return manifest


# --- migration versions --------------------------------------------------------------------


class Drift(Enum):
    """How the slot's migration version stands against the snapshot's; values are the text."""

    SAME = "the same migration version"
    SLOT_NEWER = "newer"
    SLOT_OLDER = "older"
    DIFFERENT = "different"  # neither found in the chain: cannot tell which is newer


@dataclass(frozen=True)
class VersionCheck:
    drift: Drift
    snapshot: str | None
    slot: str | None

    def describe(self, slot: int, source: str) -> str:
        """One sentence for the question and the result ("snapshot NAME" or "slot N" as
        `source`); empty when the versions agree."""
        if self.drift is Drift.SAME:
            return ""
        theirs = self.snapshot or "no migrations"
        ours = self.slot or "no migrations"
        order = {
            Drift.DIFFERENT: "a different migration version than",
            Drift.SLOT_NEWER: "a newer schema than",
            Drift.SLOT_OLDER: "an older schema than",
        }[self.drift]
        return (
            f"slot {slot}'s database has {order} {source} ({ours} vs {theirs}); afterwards "
            f"it is at {theirs}, which the app running in slot {slot} may not expect"
        )


def compare_migrations(
    snapshot: str | None, slot: str | None, chain: Sequence[str] | None = None
) -> VersionCheck:
    """Compare two alembic versions. `chain` lists revisions oldest first (see
    `alembic_chain`); without it, or when one is missing from it, only "different" is
    known. No version at all counts as older than any revision."""
    if snapshot == slot:
        return VersionCheck(Drift.SAME, snapshot, slot)
    position: dict[str | None, int] = {None: -1}
    position.update((revision, index) for index, revision in enumerate(chain or ()))
    if chain and snapshot in position and slot in position:
        newer = position[slot] > position[snapshot]
        return VersionCheck(Drift.SLOT_NEWER if newer else Drift.SLOT_OLDER, snapshot, slot)
    return VersionCheck(Drift.DIFFERENT, snapshot, slot)


def _assigned_string(tree: ast.Module, variable: str) -> str | None:
    """The string a module assigns to `variable` at top level (`x = "..."` or
    `x: str = "..."`); None when it assigns None, something else, or nothing."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == variable for t in targets):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            return None
    return None


def alembic_chain(versions_dir: Path) -> list[str]:
    """The revisions of an alembic `versions/` directory, oldest first, read without
    importing them. A branched history (a merge revision) gives [] (order unknown)."""
    parent_of: dict[str, str | None] = {}
    for path in sorted(versions_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        revision = _assigned_string(tree, "revision")
        if revision:
            parent_of[revision] = _assigned_string(tree, "down_revision")
    children: dict[str | None, list[str]] = {}
    for revision, parent in parent_of.items():
        children.setdefault(parent, []).append(revision)
    chain: list[str] = []
    current: str | None = None
    while len(children.get(current, [])) == 1:
        current = children[current][0]
        chain.append(current)
    return chain if len(chain) == len(parent_of) else []


# --- one slot's database, through `docker compose exec` and `docker cp` --------------------


@dataclass(frozen=True)
class SlotDatabase:
    """The `db` service of a running slot: SQL, commands in its container, files in and out."""

    target: Target
    compose_cmd: tuple[str, ...]
    env: Mapping[str, str]  # compose.environment(target, ...): what every command runs with
    container: str  # the db container's id, for `docker cp`

    def exec(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        cmd = compose.command(self.compose_cmd, self.target, "exec", "-T", "db", *args)
        return runner.run(cmd, env=self.env, cwd=self.target.root, timeout=timeout)

    def sql(self, *statements: str, database: str = DATABASE) -> str:
        """Run each statement in its own transaction (DROP DATABASE needs that); the
        unaligned output of the last one."""
        args = ["psql", "-U", DB_USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-tAX"]
        for statement in statements:
            args += ["-c", statement]
        result = self.exec(*args, timeout=SQL_TIMEOUT)
        if not result.ok:
            raise SandboxError(
                f"SQL on slot {self.target.slot}'s database failed: {statements[-1]}",
                Exit.COMMAND,
                details=result.tail(10),
            )
        return result.stdout.strip()

    def migration(self) -> str | None:
        """The alembic version(s) of the database, comma-joined; None without the table."""
        if self.sql("SELECT to_regclass('alembic_version') IS NOT NULL") != "t":
            return None
        found = self.sql(
            "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"
        )
        return found or None

    def tables(self) -> tuple[int, int]:
        """User tables and their approximate live rows (statistics, not a count)."""
        text = self.sql("SELECT count(*), coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables")
        count, rows = text.split("|")
        return int(count), int(rows)

    def copy(self, source: str, destination: str, what: str) -> None:
        """`docker cp` one way or the other (`source`/`destination` as docker cp takes them)."""
        cmd = ["docker", "cp", "--quiet", source, destination]
        result = runner.run(cmd, env=self.env, timeout=COMMAND_TIMEOUT)
        if not result.ok:
            raise failure(f"copying {what} failed (`{display(cmd)}`)", result)

    def remove(self, path: str) -> None:
        # Best effort: the file is in the container's /tmp, gone with the container anyway.
        self.exec("rm", "-f", path, timeout=SQL_TIMEOUT)


def failure(what: str, result: Result) -> SandboxError:
    """A failed command as one line, naming a full disk when that is the cause."""
    if DISK_FULL_PATTERN.search(result.stderr + result.stdout):
        return SandboxError(
            f"{what}: the disk is full; free some space and retry (the partial file was removed)",
            Exit.FAILED,
            details=result.tail(10),
        )
    return SandboxError(what, Exit.COMMAND, details=result.tail(10))


def open_database(
    target: Target, compose_cmd: Sequence[str], environ: Mapping[str, str]
) -> SlotDatabase:
    """The running slot's database, or one line saying the slot is not running."""
    env = compose.environment(target, environ)
    ps = compose.command(compose_cmd, target, "ps", "--quiet", "--status", "running", "db")
    result = runner.run(ps, env=env, cwd=target.root, timeout=SQL_TIMEOUT)
    ids = result.stdout.split() if result.ok else []
    if not ids:
        raise SandboxError(
            f"slot {target.slot} is not running: `inv up --slot={target.slot}` first",
            Exit.USAGE,
        )
    db = SlotDatabase(target, tuple(compose_cmd), env, ids[0])
    ready = db.exec("pg_isready", "-U", DB_USER, "-d", DATABASE, timeout=SQL_TIMEOUT)
    if not ready.ok:
        raise SandboxError(
            f"slot {target.slot}'s database does not accept connections yet: wait for "
            f"`inv up --slot={target.slot}` to pass its gate, then retry",
            Exit.FAILED,
            details=ready.tail(5),
        )
    return db


def container_file(kind: str) -> str:
    return f"{CONTAINER_TMP}/ktrdr-{kind}-{secrets.token_hex(6)}.dump"


def dump_to_host(db: SlotDatabase, destination: Path, compression: str) -> int:
    """pg_dump the slot's database into `destination` on the host; its size in bytes.

    Removes `destination` and the container's copy whatever happens, unless it succeeded.
    """
    inner = container_file("dump")
    try:
        cmd = ["pg_dump", "-U", DB_USER, "-d", DATABASE, "-Fc", "-Z", compression, "-f", inner]
        result = db.exec(*cmd)
        if not result.ok:
            raise failure(f"pg_dump of slot {db.target.slot}'s database failed", result)
        db.copy(f"{db.container}:{inner}", str(destination), "the dump to the host")
        return destination.stat().st_size
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    finally:
        db.remove(inner)


def load_from_host(db: SlotDatabase, source: Path) -> None:
    """Replace the slot's database with the archive `source`: restore into a side database,
    then swap it in. On failure the slot's database is untouched."""
    inner = container_file("restore")
    original_dropped = False
    try:
        db.copy(str(source), f"{db.container}:{inner}", "the dump into the container")
        db.sql(
            f'DROP DATABASE IF EXISTS "{SIDE_DATABASE}" WITH (FORCE)',
            f'CREATE DATABASE "{SIDE_DATABASE}" OWNER "{DB_USER}" TEMPLATE template0',
            database="postgres",
        )
        result = db.exec(
            "pg_restore", "-U", DB_USER, "-d", SIDE_DATABASE, "--no-owner", "--no-privileges",
            "--exit-on-error", "--jobs", RESTORE_JOBS, inner,
        )  # fmt: skip
        if not result.ok:
            raise failure(
                f"pg_restore into slot {db.target.slot} failed; its database is unchanged", result
            )
        # WITH (FORCE) ends the app's connections; it reconnects to the new database.
        db.sql(f'DROP DATABASE "{DATABASE}" WITH (FORCE)', database="postgres")
        original_dropped = True
        db.sql(f'ALTER DATABASE "{SIDE_DATABASE}" RENAME TO "{DATABASE}"', database="postgres")
    finally:
        db.remove(inner)
        # Once the original is gone the side database is the only copy: never drop it then
        # (a failed rename leaves it under SIDE_DATABASE, which the error names).
        if not original_dropped:
            db.exec(
                "psql", "-U", DB_USER, "-d", "postgres", "-c",
                f'DROP DATABASE IF EXISTS "{SIDE_DATABASE}" WITH (FORCE)',
                timeout=SQL_TIMEOUT,
            )  # fmt: skip


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


def _say(on_step: Callable[[str], None] | None, text: str) -> None:
    if on_step is not None:
        on_step(text)


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
) -> Manifest:
    """Dump slot `target`'s database into the snapshot store as `name` (default
    slot<N>-<UTC time>). Refuses a name in use; leaves no partial file behind.
    `compression` is pg_dump's gzip level, 0-9."""
    moment = now or datetime.now(UTC)
    name = check_name(name) if name is not None else default_name(target.slot, moment)
    directory = snapshot_dir(environ)
    final, manifest_file = dump_path(directory, name), manifest_path(directory, name)
    if final.exists() or manifest_file.exists():
        raise SandboxError(
            f"a snapshot named {name!r} exists already: pick another --name, or delete it "
            f"first (`inv snapshot --delete {name}`)",
            Exit.USAGE,
        )
    partial = directory / f".{name}{DUMP_SUFFIX}{PARTIAL_SUFFIX}"
    partial_manifest = directory / f".{name}{MANIFEST_SUFFIX}{PARTIAL_SUFFIX}"
    with _locked(environ, target.slot):
        db = open_database(target, compose_cmd, environ)
        directory.mkdir(parents=True, exist_ok=True)
        migration = db.migration()
        pg_version = db.sql("SHOW server_version")
        database_size = int(db.sql("SELECT pg_database_size(current_database())"))
        _say(on_step, f"pg_dump of slot {target.slot} ({human_size(database_size)})")
        try:
            size = dump_to_host(db, partial, compression)
            manifest = Manifest(
                name, target.slot, app, migration, size, moment.isoformat(), DATABASE,
                pg_version, database_size,
            )  # fmt: skip
            partial_manifest.write_text(manifest.to_json())
            # The dump first: `list_snapshots` shows a snapshot once its manifest exists.
            os.replace(partial, final)
            os.replace(partial_manifest, manifest_file)
        finally:
            partial.unlink(missing_ok=True)
            partial_manifest.unlink(missing_ok=True)
    return manifest


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
        db = open_database(target, compose_cmd, environ)
        versions = compare_migrations(manifest.migration, db.migration(), migrations)
        replaced = _ask(db, source, versions, yes, confirm)
        _say(on_step, f"pg_restore of {name} ({human_size(manifest.size)}) into slot {target.slot}")
        load_from_host(db, dump_path(snapshot_dir(environ), name))
    return Restored(target.slot, source, versions, replaced, manifest.size)


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
) -> Restored:
    """Copy slot `source`'s database over slot `destination`'s (asked first when it has
    tables), through a temporary archive in the snapshot directory that is always removed."""
    if source.slot == destination.slot:
        raise SandboxError(
            f"--from and --to are both slot {source.slot}: pick two different slots", Exit.USAGE
        )
    label = f"slot {source.slot}"
    directory = snapshot_dir(environ)
    temporary = directory / f".clone-{source.slot}-to-{destination.slot}{PARTIAL_SUFFIX}"
    with _locked(environ, source.slot, destination.slot):
        src = open_database(source, compose_cmd, environ)
        dst = open_database(destination, compose_cmd, environ)
        versions = compare_migrations(src.migration(), dst.migration(), migrations)
        replaced = _ask(dst, label, versions, yes, confirm)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            _say(on_step, f"pg_dump of slot {source.slot}")
            size = dump_to_host(src, temporary, CLONE_COMPRESSION)
            _say(on_step, f"pg_restore into slot {destination.slot} ({human_size(size)})")
            load_from_host(dst, temporary)
        finally:
            temporary.unlink(missing_ok=True)
    return Restored(destination.slot, label, versions, replaced, size)
