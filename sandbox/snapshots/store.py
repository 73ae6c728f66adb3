"""The snapshot store on the host: names, manifests, listing, and writing files into it
so that a killed writer leaves nothing a reader could take for a snapshot."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sandbox import lock
from sandbox.errors import Exit, SandboxError

SNAPSHOT_DIR_VARIABLE = "KTRDR_SNAPSHOT_DIR"
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
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


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


def _no_such(directory: Path, name: str) -> SandboxError:
    return SandboxError(
        f"no snapshot named {name!r} in {directory}: `inv snapshots` lists them", Exit.USAGE
    )


def load(environ: Mapping[str, str], name: str) -> Manifest:
    """The manifest of snapshot `name`, or one line saying it does not exist."""
    directory = existing_store(environ)
    check_name(name)
    path = manifest_path(directory, name)
    if not path.is_file() or not dump_path(directory, name).is_file():
        raise _no_such(directory, name)
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
        raise _no_such(directory, name)
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
def private_work(directory: Path, label: str) -> Iterator[Path]:
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


def name_taken(directory: Path, name: str) -> SandboxError | None:
    if dump_path(directory, name).exists() or manifest_path(directory, name).exists():
        return SandboxError(
            f"a snapshot named {name!r} exists already: pick another --name, or delete it "
            f"first (`inv snapshot --delete {name}`)",
            Exit.USAGE,
        )
    return None


def publish(work: Path, directory: Path, name: str) -> None:
    """Give the finished dump and manifest in `work` their names, under the store lock, and
    only if the name is free: hard links, which never replace an existing file (a writer
    of an older version, outside the lock, cannot be overwritten either)."""
    final, manifest = dump_path(directory, name), manifest_path(directory, name)
    with _store_lock(directory):
        refused = name_taken(directory, name)
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
            raise name_taken(directory, name) or SandboxError(
                f"snapshot {name!r} appeared while this one was written: pick another --name",
                Exit.USAGE,
            ) from None


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
