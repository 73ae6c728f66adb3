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
a side database, then ONE server-side transaction ends the app's connections and renames
`ktrdr` to `ktrdr_previous` and the side database to `ktrdr` (PostgreSQL renames databases
transactionally; only CREATE/DROP DATABASE cannot run in a transaction block). Only after that
has committed is the previous database dropped. So at every instant the server has a `ktrdr`,
the old one or the new one, whatever happens to this process (Ctrl-C, kill -9), and the result
holds exactly the snapshot's objects (unlike `pg_restore --clean`, which keeps any table the
snapshot does not have).

What the server did is always asked of the server (`server_databases`), never guessed from a
client's exit status: a psql killed mid-swap may still have committed it. A leftover of an
interrupted restore (`ktrdr_restoring`, `ktrdr_previous`, or `ktrdr` missing beside one of
them, as an older version could leave it) is put right by `recovery` at the start of the next
restore, and by the next `inv up`/`inv status` of the slot, which find a marker file the
restore writes before its first change and removes once the server is settled.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from sandbox import compose, docker, lock, preflight, runner, settings
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display
from sandbox.snapshots import marker as restoremark

SNAPSHOT_DIR_VARIABLE = "KTRDR_SNAPSHOT_DIR"
DEFAULT_APP = "reference"
# The compose file's POSTGRES_DB and POSTGRES_USER (the same for every slot).
DATABASE = "ktrdr"
DB_USER = "ktrdr"
# Filled by pg_restore, then renamed to DATABASE; a leftover of a killed restore is dropped.
SIDE_DATABASE = f"{DATABASE}_restoring"
# What DATABASE is renamed to in the swap's transaction; dropped once that has committed.
PREVIOUS_DATABASE = f"{DATABASE}_previous"
# The swap needs the app's connections to `ktrdr` gone; one that arrives between the
# terminate and the rename's lock makes the rename wait 5 s and fail. Tried this often.
SWAP_TRIES = 4
BUSY_DATABASE = "is being accessed by other users"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
# Snapshots hold a slot's data: only their user may read them.
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
# In the store: the lock around its names (`_store_lock`), and in each writer's private
# `.LABEL.<random>.partial/` directory the lock that says its writer is alive.
STORE_LOCK = ".store.lock"
WORK_LOCK = ".writer.lock"
STORE_LOCK_WAIT = 30.0  # held for a name check and two links, or a sweep: milliseconds
# A hidden `.partial` file (not a directory) is an older version's; nothing writes one now,
# but such a version may still be running somewhere: removed once untouched this long.
LEGACY_PARTIAL_AGE = 600.0
CONTAINER_TMP = "/tmp"
CONTAINER_PREFIX = "ktrdr-"  # dump files in the container: /tmp/ktrdr-<kind>-<random>.dump
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
    """`$KTRDR_SNAPSHOT_DIR` when set, else `$HOME/.ktrdr/snapshots`.

    A relative `$KTRDR_SNAPSHOT_DIR` is refused rather than resolved: against the working
    directory it would put a slot's data into whichever checkout `inv` ran from (and into
    its git status), and no other directory is an obvious anchor.
    """
    value = environ.get(SNAPSHOT_DIR_VARIABLE)
    if value:
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise SandboxError(
                f"{SNAPSHOT_DIR_VARIABLE}={value} is a relative path (snapshots would land in "
                f"whatever directory `inv` runs from): set it to an absolute path, e.g. "
                f"{SNAPSHOT_DIR_VARIABLE}=$HOME/snapshots",
                Exit.BAD_ENV,
            )
        return path
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".ktrdr" / "snapshots"


def existing_store(environ: Mapping[str, str]) -> Path:
    """The snapshot directory, refused in one line when something other than a directory is
    in its place (it may not exist yet)."""
    directory = snapshot_dir(environ)
    if directory.exists() and not directory.is_dir():
        raise SandboxError(
            f"the snapshot directory {directory} is not a directory: move what is there aside, "
            f"or set {SNAPSHOT_DIR_VARIABLE} to a directory",
            Exit.USAGE,
        )
    return directory


def private_store(directory: Path, default: bool = True) -> list[str]:
    """Create the store private to this user (0700), and make the snapshots in an existing
    one private (0600: a dump holds a slot's data). What was tightened. Only snapshot pairs
    (`NAME.dump` with its `NAME.json`) are touched; the directory itself only when it is the
    default store (a `KTRDR_SNAPSHOT_DIR` of the user's may be shared on purpose: said)."""
    said = []
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    info = directory.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        if default:
            directory.chmod(PRIVATE_DIR)
            said.append(f"made the snapshot directory {directory} private (0700)")
        else:
            said.append(
                f"the snapshot directory {directory} is open to other users "
                f"(mode {stat.S_IMODE(info.st_mode):o}); `chmod 700` it if that is not meant"
            )
    opened = 0
    for dump in directory.glob(f"*{DUMP_SUFFIX}"):
        pair = (dump, dump.with_suffix(MANIFEST_SUFFIX))
        if not all(p.is_file() and not p.is_symlink() for p in pair):
            continue
        for path in pair:
            mode = path.stat()
            if mode.st_uid == os.getuid() and mode.st_mode & 0o077:
                path.chmod(PRIVATE_FILE)
                opened += 1
    if opened:
        said.append(f"made {opened} snapshot file(s) in {directory} private (0600)")
    return said


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
                created=_created(data["created"]).isoformat(),
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
        return _created(self.created)


def _created(value: object) -> datetime:
    """A manifest's time: ISO 8601; one without a zone is UTC (ValueError otherwise)."""
    if not isinstance(value, str):
        raise ValueError(f"'created' is {value!r}, not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'created' is {value!r}, not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    """One line of `inv snapshots`."""

    name: str
    source_slot: int
    app: str
    size: int
    age: timedelta
    migration: str | None
    problem: str = ""  # why its manifest cannot be read; the other fields are then blank


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
    directory = existing_store(environ)
    check_name(name)
    path = manifest_path(directory, name)
    if not path.is_file() or not dump_path(directory, name).is_file():
        raise SandboxError(
            f"no snapshot named {name!r} in {directory}: `inv snapshots` lists them",
            Exit.USAGE,
        )
    return Manifest.from_json(path.read_text(), path)


def _row(path: Path, name: str, moment: datetime) -> Row:
    """One snapshot's line; a manifest that cannot be read is a line saying why, so that it
    neither ends the listing nor hides the good ones."""
    try:
        m = Manifest.from_json(path.read_text(), path)
    except (SandboxError, OSError, UnicodeDecodeError) as exc:
        why = exc.__cause__ if isinstance(exc, SandboxError) and exc.__cause__ else exc
        size = dump_path(path.parent, name).stat().st_size
        return Row(name, 0, "", size, timedelta(0), None, problem=str(why) or type(why).__name__)
    return Row(m.name, m.source_slot, m.app, m.size, moment - m.created_at, m.migration)


def list_snapshots(environ: Mapping[str, str], now: datetime | None = None) -> list[Row]:
    """Every complete snapshot (manifest and dump both present), newest first; those whose
    manifest is unreadable last, with the reason."""
    directory = existing_store(environ)
    if not directory.is_dir():
        return []
    moment = now or datetime.now(UTC)
    rows = []
    for path in directory.glob(f"*{MANIFEST_SUFFIX}"):
        name = path.name.removesuffix(MANIFEST_SUFFIX)
        if not NAME_PATTERN.fullmatch(name) or not dump_path(directory, name).is_file():
            continue
        rows.append(_row(path, name, moment))
    return sorted(rows, key=lambda row: (bool(row.problem), row.age, row.name))


def delete(environ: Mapping[str, str], name: str) -> str:
    """Remove snapshot `name` (its dump, then its manifest), even one whose manifest is
    unreadable; what was deleted, in words."""
    directory = existing_store(environ)
    check_name(name)
    manifest = manifest_path(directory, name)
    if not manifest.is_file() and not dump_path(directory, name).is_file():
        raise SandboxError(
            f"no snapshot named {name!r} in {directory}: `inv snapshots` lists them",
            Exit.USAGE,
        )
    try:
        m = Manifest.from_json(manifest.read_text(), manifest)
        what = f"snapshot {name} (slot {m.source_slot}, {m.app})"
    except (SandboxError, OSError, UnicodeDecodeError):
        what = f"snapshot {name} (its manifest was unreadable)"
    with _store_lock(directory):
        dump_path(directory, name).unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
    return what


# --- writing into the store: private partial files, one lock for the names ----------------


@contextmanager
def _store_lock(directory: Path) -> Iterator[None]:
    """The store's own lock (`.store.lock` in it), whoever writes there (any slot, any
    checkout using this directory): a name is checked and taken under it, and stale partial
    files are swept under it."""
    fd = lock.open_lock_file(directory / STORE_LOCK)
    try:
        os.fchmod(fd, PRIVATE_FILE)

        def refusal(pid: int | None) -> SandboxError:
            return SandboxError(
                f"the snapshot directory {directory} is locked by {lock.holder(pid)} for "
                f"more than {STORE_LOCK_WAIT:.0f}s: wait for it and retry",
                Exit.LOCKED,
            )

        lock.acquire(fd, STORE_LOCK_WAIT, refusal)
        with lock.signed(fd):
            yield
    finally:
        os.close(fd)


@contextmanager
def _private_work(directory: Path, label: str) -> Iterator[Path]:
    """A directory only this process writes in, `.LABEL.<random>.partial` (0700), removed on
    the way out. Its `.writer.lock` is flocked from its creation (under the store lock, so
    a sweep never sees it unlocked) until it is removed: a sweep that can take that lock
    knows its writer is dead."""
    with _store_lock(directory):
        work = directory / f".{label}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        work.mkdir(mode=PRIVATE_DIR)
        fd = os.open(work / WORK_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)


def _writer_gone(work: Path) -> bool:
    """Whether the writer of a partial directory is dead (its lock can be taken)."""
    try:
        fd = os.open(work / WORK_LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # made under the store lock with its lock file: a half-removed one
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def sweep_partials(directory: Path, now: float | None = None) -> str:
    """Remove what killed writers left in the store: `.partial` directories whose writer is
    gone, and an older version's `.partial` files untouched for 10 minutes. What was
    removed, in words, or ''."""
    if not directory.is_dir():
        return ""
    moment = time.time() if now is None else now
    removed, size = 0, 0
    with _store_lock(directory):
        # This version's partial directories, and an older version's exact partial names
        # (`.NAME.dump.partial`, `.NAME.json.partial`): nothing else of the directory's.
        legacy = (f".*{DUMP_SUFFIX}{PARTIAL_SUFFIX}", f".*{MANIFEST_SUFFIX}{PARTIAL_SUFFIX}")
        found = [p for p in directory.glob(f".*{PARTIAL_SUFFIX}") if p.is_dir()]
        found += [p for pattern in legacy for p in directory.glob(pattern) if not p.is_dir()]
        for path in found:
            try:
                if path.is_dir() and not _writer_gone(path):
                    continue
                if not path.is_dir() and moment - path.stat().st_mtime < LEGACY_PARTIAL_AGE:
                    continue
                size += _size(path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
    if not removed:
        return ""
    return (
        f"removed {removed} partial file(s) ({human_size(size)}) an interrupted snapshot or "
        f"clone left in {directory}"
    )


def _taken(directory: Path, name: str) -> SandboxError | None:
    if dump_path(directory, name).exists() or manifest_path(directory, name).exists():
        return SandboxError(
            f"a snapshot named {name!r} exists already: pick another --name, or delete it "
            f"first (`inv snapshot --delete {name}`)",
            Exit.USAGE,
        )
    return None


def _publish(work: Path, directory: Path, name: str) -> None:
    """Give the finished dump and manifest in `work` their names, under the store lock, and
    only if the name is free: hard links, which never replace an existing file (a writer
    of an older version, outside the lock, cannot be overwritten either)."""
    final, manifest = dump_path(directory, name), manifest_path(directory, name)
    with _store_lock(directory):
        refused = _taken(directory, name)
        if refused is not None:
            raise refused
        try:
            # The dump first: `list_snapshots` shows a snapshot once its manifest exists.
            os.link(work / "dump", final)
            try:
                os.link(work / "manifest", manifest)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        except FileExistsError:
            raise _taken(directory, name) or SandboxError(
                f"snapshot {name!r} appeared while this one was written: pick another --name",
                Exit.USAGE,
            ) from None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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
    return f"{CONTAINER_TMP}/{CONTAINER_PREFIX}{kind}-{secrets.token_hex(6)}{DUMP_SUFFIX}"


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


# --- the swap, and putting an interrupted one right -------------------------------------------


def server_databases(db: SlotDatabase) -> frozenset[str]:
    """Which of `ktrdr`, its side and its previous database the server has now."""
    names = ", ".join(f"'{n}'" for n in (DATABASE, SIDE_DATABASE, PREVIOUS_DATABASE))
    text = db.sql(
        f"SELECT datname FROM pg_database WHERE datname IN ({names})", database="postgres"
    )
    return frozenset(text.split())


def swap_sql(replace_existing: bool) -> str:
    """The side database in as `ktrdr`, in one transaction: the server commits all of it or
    none. The app's connections to `ktrdr` are ended inside it (a rename needs none); one that
    comes back waits on the rename's lock, then finds the new database under the name."""
    if not replace_existing:  # no `ktrdr` at all: one statement, atomic by itself
        return f'ALTER DATABASE "{SIDE_DATABASE}" RENAME TO "{DATABASE}"'
    return (
        "BEGIN; "
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid(); "
        f'ALTER DATABASE "{DATABASE}" RENAME TO "{PREVIOUS_DATABASE}"; '
        f'ALTER DATABASE "{SIDE_DATABASE}" RENAME TO "{DATABASE}"; '
        "COMMIT"
    )


@dataclass(frozen=True)
class Recovery:
    """What puts a slot's databases right after an interrupted restore: SQL statements (each
    in its own transaction), and what to tell the user ('' when there was nothing to do)."""

    statements: tuple[str, ...]
    said: str
    finished: bool = False  # the restored database is the slot's `ktrdr` now
    missing: bool = False  # no `ktrdr`, and nothing to make one from


def recovery(found: frozenset[str] | set[str], slot: int, loaded: bool = True) -> Recovery:
    """From the databases the server has (`server_databases`), the way back to exactly one
    `ktrdr`. Pure. A `ktrdr_previous` exists only once the swap committed, so beside `ktrdr`
    it means "finish"; a `ktrdr_restoring` beside `ktrdr` means the swap never happened, so
    "roll back". Without `ktrdr` (an older version dropped it first) the previous database
    comes back, else the restored copy when it was `loaded` whole (a half-loaded one is
    dropped: the slot then has no database, and says so)."""

    def drop(name: str) -> str:
        return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'

    def rename(name: str) -> str:
        return f'ALTER DATABASE "{name}" RENAME TO "{DATABASE}"'

    side, previous = SIDE_DATABASE in found, PREVIOUS_DATABASE in found
    lead = f"slot {slot}: an interrupted restore was"
    if DATABASE in found:
        if previous:
            drops = (drop(PREVIOUS_DATABASE),) + ((drop(SIDE_DATABASE),) if side else ())
            return Recovery(
                drops, f"{lead} finished (the restored database was in place; dropped "
                f"{PREVIOUS_DATABASE}, the one it replaced)", finished=True,
            )  # fmt: skip
        if side:
            return Recovery(
                (drop(SIDE_DATABASE),),
                f"{lead} rolled back (dropped its unfinished {SIDE_DATABASE}; the database "
                "is as it was before)",
            )
        return Recovery((), "")
    if previous:
        statements = (rename(PREVIOUS_DATABASE),) + ((drop(SIDE_DATABASE),) if side else ())
        return Recovery(statements, f"{lead} rolled back ({PREVIOUS_DATABASE} is {DATABASE} again)")
    if side and loaded:
        return Recovery(
            (rename(SIDE_DATABASE),),
            f"{lead} finished ({SIDE_DATABASE} had been restored completely and is {DATABASE} now)",
            finished=True,
        )
    if side:
        return Recovery(
            (drop(SIDE_DATABASE),),
            f"slot {slot} has no {DATABASE} database, and the restore into it stopped half "
            f"way (dropped its {SIDE_DATABASE}): `inv restore --slot={slot} NAME` loads a "
            f"snapshot, `inv up --slot={slot} --fresh` starts empty",
            missing=True,
        )
    return Recovery(
        (),
        f"slot {slot} has no {DATABASE} database and nothing to recover it from: "
        f"`inv restore --slot={slot} NAME` loads a snapshot, `inv up --slot={slot} --fresh` "
        "starts empty",
        missing=True,
    )


def settle(db: SlotDatabase, environ: Mapping[str, str]) -> Recovery:
    """Ask the server what it has, put it right (`recovery`), then drop the marker: the
    server is settled. Raises SandboxError when it cannot ask (the marker stays)."""
    slot = db.target.slot
    loaded = restoremark.loaded(environ, slot)
    plan = recovery(server_databases(db), slot, loaded)
    if plan.statements:
        db.sql(*plan.statements, database="postgres")
        # A killed restore's own psql may still commit its swap after we looked: look again,
        # and tell what the second look did when it did something (it decided the outcome).
        after = recovery(server_databases(db), slot, loaded)
        if after.statements:
            db.sql(*after.statements, database="postgres")
            plan = after
    restoremark.clear(environ, slot)
    return plan


def sweep_container(db: SlotDatabase) -> str:
    """Remove dump files an interrupted snapshot, restore or clone left in the db container's
    /tmp (the caller holds the slot's lock, so no live command of ours is using one). What
    was removed, in words, or ''."""
    result = db.exec(
        "find", CONTAINER_TMP, "-maxdepth", "1", "-name", f"{CONTAINER_PREFIX}*{DUMP_SUFFIX}",
        "-printf", "%s\\n", "-delete", timeout=SQL_TIMEOUT,
    )  # fmt: skip
    sizes = [int(line) for line in result.stdout.split() if line.isdigit()] if result.ok else []
    if not sizes:
        return ""
    return (
        f"removed {len(sizes)} dump file(s) ({human_size(sum(sizes))}) an interrupted command "
        f"left in slot {db.target.slot}'s db container"
    )


def _say_swept(db: SlotDatabase, on_step: Callable[[str], None] | None) -> None:
    swept = sweep_container(db)
    if swept:
        _say(on_step, swept)


def recover(
    db: SlotDatabase, environ: Mapping[str, str], on_step: Callable[[str], None] | None
) -> Recovery:
    """Before a restore or clone into `db`, and from `inv up`/`inv status` when the marker
    says one was interrupted: its leftovers put right, and said."""
    _say_swept(db, on_step)
    plan = settle(db, environ)
    if plan.said and not plan.missing:
        _say(on_step, plan.said)
    return plan


def recover_interrupted(
    target: Target, environ: Mapping[str, str], on_step: Callable[[str], None]
) -> None:
    """For `inv up`/`inv status`: when a restore of slot `target` was interrupted (its marker
    is there), put it right now and say what was done. Nothing at all to do (no engine call)
    without the marker; nothing done while another command holds the slot (a restore running
    now); a stopped slot only hears how it will be put right."""
    if not restoremark.path(environ, target.slot).exists():
        return
    slot = target.slot
    try:
        with lock.slot_lock(slot, wait=0.0, lock_dir=lock.default_lock_dir(environ)):
            db = open_database(target, compose.find_compose(environ), environ)
            plan = recover(db, environ, on_step)
    except SandboxError as exc:
        if exc.code is Exit.USAGE:  # not running
            on_step(
                f"slot {slot}: a restore was interrupted; `inv up --slot={slot}` (or `inv "
                f"restore --slot={slot} NAME`) puts it right once its database runs"
            )
        return
    if plan.missing or not plan.said:
        on_step(plan.said or f"slot {slot}: an interrupted restore had left nothing to put right")


def _swap(db: SlotDatabase, replace_existing: bool) -> None:
    """Swap the side database in; retried while a connection of the app races the rename.
    The server is asked what happened, whatever psql's exit status says."""
    for _ in range(SWAP_TRIES):
        result = db.exec(
            "psql", "-U", DB_USER, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAX",
            "-c", swap_sql(replace_existing), timeout=SQL_TIMEOUT,
        )  # fmt: skip
        found = server_databases(db)
        if SIDE_DATABASE not in found and DATABASE in found:
            return  # swapped (psql may have died after the commit: the server says so)
        if BUSY_DATABASE not in result.stderr:
            break
    raise SandboxError(
        f"swapping the restored database into slot {db.target.slot} failed; its database is "
        "unchanged",
        Exit.COMMAND,
        details=result.tail(10),
    )


def load_from_host(
    db: SlotDatabase,
    source: Path,
    environ: Mapping[str, str],
    *,
    replace_existing: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> None:
    """Replace the slot's database with the archive `source`: restore into a side database,
    then swap it in (`swap_sql`). Whatever ends this, the server is settled on the way out
    (`settle`): the new database in place, or the old one as it was. Ctrl-C becomes
    SandboxError(INTERRUPTED) saying which; a settle that cannot run (the engine gone, a
    second Ctrl-C) leaves the marker for the next command. `replace_existing=False`: the
    slot has no `ktrdr` (recovery found nothing to make one from)."""
    inner = container_file("restore")
    restoremark.mark(environ, db.target.slot)
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
        restoremark.mark(environ, db.target.slot, restoremark.LOADED)
        _say(on_step, f"swapping the restored database into slot {db.target.slot}")
        _swap(db, replace_existing)
        db.remove(inner)
        settle(db, environ)
    except BaseException as exc:
        _settle_after(db, environ, inner, exc)
        raise


def _settle_after(
    db: SlotDatabase, environ: Mapping[str, str], inner: str, exc: BaseException
) -> None:
    """On the way out of a failed or interrupted restore: the server settled (best effort: the
    marker stays when it cannot be), and Ctrl-C turned into one line saying where it left
    the slot."""
    slot = db.target.slot
    try:
        db.remove(inner)
        plan = settle(db, environ)
    except (SandboxError, KeyboardInterrupt):
        if isinstance(exc, KeyboardInterrupt):
            raise SandboxError(
                f"interrupted: slot {slot}'s restore may be half done; `inv restore "
                f"--slot={slot} NAME` or `inv status --slot={slot}` puts it right",
                Exit.INTERRUPTED,
            ) from None
        return
    if isinstance(exc, KeyboardInterrupt):
        where = (
            "finished (the restored database is in place)"
            if plan.finished
            else "rolled back (its database is as it was)"
        )
        raise SandboxError(
            f"interrupted: slot {slot}'s restore was {where}", Exit.INTERRUPTED
        ) from None


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
    slot<N>-<UTC time>). Refuses a name in use, before the dump and again (under the store's
    lock) as it takes the name: two snapshots of one name from two slots at once, one wins
    and the other is refused. Leaves no partial file behind; one a killed run left is swept
    (and said). `compression` is pg_dump's gzip level, 0-9."""
    moment = now or datetime.now(UTC)
    name = check_name(name) if name is not None else default_name(target.slot, moment)
    directory = existing_store(environ)
    refused = _taken(directory, name)
    if refused is not None:
        raise refused
    with _locked(environ, target.slot):
        db = open_database(target, compose_cmd, environ)
        _prepare_store(db, directory, on_step)
        migration = db.migration()
        pg_version = db.sql("SHOW server_version")
        database_size = int(db.sql("SELECT pg_database_size(current_database())"))
        _say(on_step, f"pg_dump of slot {target.slot} ({human_size(database_size)})")
        with _private_work(directory, name) as work:
            size = dump_to_host(db, work / "dump", compression)
            (work / "dump").chmod(PRIVATE_FILE)
            manifest = Manifest(
                name, target.slot, app, migration, size, moment.isoformat(), DATABASE,
                pg_version, database_size,
            )  # fmt: skip
            _write_private(work / "manifest", manifest.to_json())
            _publish(work, directory, name)
    return manifest


def _prepare_store(
    db: SlotDatabase, directory: Path, on_step: Callable[[str], None] | None
) -> None:
    """Before writing: the store made (private), and what killed runs left in it and in the
    db container's /tmp removed, each said."""
    _say_swept(db, on_step)
    # The default store is ours to close; a directory the user named may be shared on purpose.
    default = directory.name == "snapshots" and directory.parent.name == ".ktrdr"
    for said in private_store(directory, default):
        _say(on_step, said)
    swept = sweep_partials(directory)
    if swept:
        _say(on_step, swept)


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
        command = f"inv restore --slot={target.slot} {name}"
        _check_owner(target, environ, command, other_checkouts)
        present = _ready_for_load(db, environ, on_step)
        current = db.migration() if present else None
        versions = compare_migrations(manifest.migration, current, migrations)
        replaced = _ask(db, source, versions, yes, confirm) if present else 0
        _say(on_step, f"pg_restore of {name} ({human_size(manifest.size)}) into slot {target.slot}")
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
    preflight.check_database_owner(
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
        _say(on_step, f"slot {db.target.slot} has no {DATABASE} database: this creates it")
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
        with _private_work(directory, f"clone-{source.slot}-to-{destination.slot}") as work:
            _say(on_step, f"pg_dump of slot {source.slot}")
            size = dump_to_host(src, work / "dump", CLONE_COMPRESSION)
            _say(on_step, f"pg_restore into slot {destination.slot} ({human_size(size)})")
            load_from_host(dst, work / "dump", environ, replace_existing=present, on_step=on_step)
    return Restored(destination.slot, label, versions, replaced, size)
