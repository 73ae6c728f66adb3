"""One slot's database, through `docker compose exec` and `docker cp`: dump, load into a
side database, the swap in one transaction, and putting an interrupted restore right."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import compose, lock, runner
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display
from sandbox.snapshots import marker as restoremark
from sandbox.snapshots.store import DUMP_SUFFIX, human_size

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
CONTAINER_TMP = "/tmp"
CONTAINER_PREFIX = "ktrdr-"  # dump files in the container: /tmp/ktrdr-<kind>-<random>.dump
# A dump or restore of a large database is slow but must end: an hour, then a clear failure.
COMMAND_TIMEOUT = 3600.0
SQL_TIMEOUT = 60.0
RESTORE_JOBS = "2"
# Text a full disk leaves in pg_dump's or docker cp's error output.
DISK_FULL_PATTERN = re.compile(r"no space left on device|could not write", re.IGNORECASE)


def say(on_step: Callable[[str], None] | None, text: str) -> None:
    if on_step is not None:
        on_step(text)


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
    return accepting(SlotDatabase(target, tuple(compose_cmd), env, ids[0]))


def accepting(db: SlotDatabase, up: str = "") -> SlotDatabase:
    """`db` once it accepts connections, or one line saying to wait for `up` (default: `inv up
    --slot=N`) to pass its gate."""
    ready = db.exec("pg_isready", "-U", DB_USER, "-d", DATABASE, timeout=SQL_TIMEOUT)
    if not ready.ok:
        raise SandboxError(
            f"slot {db.target.slot}'s database does not accept connections yet: wait for "
            f"`{up or f'inv up --slot={db.target.slot}'}` to pass its gate, then retry",
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
    side, previous = SIDE_DATABASE in found, PREVIOUS_DATABASE in found
    if DATABASE in found:
        return _beside_database(slot, side, previous)
    return _without_database(slot, side, previous, loaded)


def _drop(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


def _rename_to_main(name: str) -> str:
    return f'ALTER DATABASE "{name}" RENAME TO "{DATABASE}"'


def _interrupted(slot: int) -> str:
    return f"slot {slot}: an interrupted restore was"


def _beside_database(slot: int, side: bool, previous: bool) -> Recovery:
    lead = _interrupted(slot)
    if previous:
        drops = (_drop(PREVIOUS_DATABASE),) + ((_drop(SIDE_DATABASE),) if side else ())
        return Recovery(
            drops, f"{lead} finished (the restored database was in place; dropped "
            f"{PREVIOUS_DATABASE}, the one it replaced)", finished=True,
        )  # fmt: skip
    if side:
        return Recovery(
            (_drop(SIDE_DATABASE),),
            f"{lead} rolled back (dropped its unfinished {SIDE_DATABASE}; the database "
            "is as it was before)",
        )
    return Recovery((), "")


def _without_database(slot: int, side: bool, previous: bool, loaded: bool) -> Recovery:
    lead = _interrupted(slot)
    if previous:
        statements = (_rename_to_main(PREVIOUS_DATABASE),) + (
            (_drop(SIDE_DATABASE),) if side else ()
        )
        return Recovery(statements, f"{lead} rolled back ({PREVIOUS_DATABASE} is {DATABASE} again)")
    if side and loaded:
        return Recovery(
            (_rename_to_main(SIDE_DATABASE),),
            f"{lead} finished ({SIDE_DATABASE} had been restored completely and is {DATABASE} now)",
            finished=True,
        )
    fix = f"`inv restore --slot={slot} NAME` loads a snapshot, `inv up --slot={slot} --fresh` "
    if side:
        return Recovery(
            (_drop(SIDE_DATABASE),),
            f"slot {slot} has no {DATABASE} database, and the restore into it stopped half "
            f"way (dropped its {SIDE_DATABASE}): {fix}starts empty",
            missing=True,
        )
    return Recovery(
        (),
        f"slot {slot} has no {DATABASE} database and nothing to recover it from: {fix}starts empty",
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


def say_swept(db: SlotDatabase, on_step: Callable[[str], None] | None) -> None:
    swept = sweep_container(db)
    if swept:
        say(on_step, swept)


def recover(
    db: SlotDatabase, environ: Mapping[str, str], on_step: Callable[[str], None] | None
) -> Recovery:
    """Before a restore or clone into `db`, and from `inv up`/`inv status` when the marker
    says one was interrupted: its leftovers put right, and said."""
    say_swept(db, on_step)
    plan = settle(db, environ)
    if plan.said and not plan.missing:
        say(on_step, plan.said)
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
        say(on_step, f"swapping the restored database into slot {db.target.slot}")
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
