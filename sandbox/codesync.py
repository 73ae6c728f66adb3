"""A `--source` checkout on a remote engine: its code copied to that host, and kept in step.

A bind mount names a path on the engine's host. On this machine's engine that is the checkout
itself; on a remote one (DOCKER_HOST=tcp://... or ssh://..., or such a context) the checkout is
not there. So the files the app kind mounts (`AppKind.mounts`: for KTRDR ktrdr/, config/,
alembic/, alembic.ini) are copied, as a tar stream over the engine's API, into a volume of the
slot's own (`ktrdr-sandbox-N_source`), and the app services bind the copy at the same targets,
read-only, exactly as they bind the checkout locally. The volume's directory on the engine's
host (its `Mountpoint`) is what the binds name; the services also mount the volume itself, so
Compose counts it as the project's and `inv down --volumes` removes it.

`inv up` copies what changed since the last copy; `inv sync --slot=N [--watch]` does the same
on demand or on every change, and the app reloads as it does for a local edit (uvicorn
--reload, the reference app's reloader). What was last sent is recorded in this checkout's
`.sandbox/slot-N.sync.json` (path -> size and modification time), tied to the volume it went
into by a random id on the volume's labels: with no record for that volume (a volume made
anew, another checkout, a lost record) everything is sent, and what the volume holds beyond
the checkout's files is removed.

Nothing a container binds is ever replaced, only rewritten: a bind mount holds on to the inode
it was given, so a directory or file removed and made again would leave the container looking
at the old one. Files are extracted in place (`tar --overwrite`: the bind-mounted alembic.ini
keeps its inode) and directories are never removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox import STATE_DIR, apps, compose, engine, runner
from sandbox.docker import CLIENT_LABEL, client_name
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT, LOCK_WAIT

# Not code the app runs, and rewritten by tools all the time.
SKIP_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")
# A whole KTRDR package is a few MB; a slow link gets this long.
SEND_TIMEOUT = 900.0
WATCH_INTERVAL = 0.5

# Relative path -> (size, modification time in ns): what changed since the last copy.
Listing = dict[str, tuple[int, int]]

# The tar stream comes on stdin; the arguments are paths (relative, from our own listing or
# the volume's) removed since the last copy.
EXTRACT_SCRIPT = (
    'set -e; cd /dest; tar -x --overwrite --no-same-owner -f -; for f do rm -f -- "./$f"; done'
)
# Every file and link in the volume, NUL-separated, relative ("./a/b").
LIST_SCRIPT = "cd /dest && find . -mindepth 1 ! -type d -print0"
# The label a source volume gets at creation, a random value: the record of what was sent
# names it (a volume's CreatedAt moves with its contents, so it cannot say which volume).
COPY_LABEL = "io.ktrdr.sandbox.copy-id"


def volume_name(project: str) -> str:
    return f"{project}_{apps.SOURCE_VOLUME}"


def state_path(root: Path, slot: int) -> Path:
    return root / STATE_DIR / f"slot-{slot}.sync.json"


def listing(source: apps.Source) -> Listing:
    """Every file of `source` its kind mounts, relative to the checkout; caches left out."""
    if source.path is None:
        return {}
    found: Listing = {}
    for mount in source.kind.mounts:
        top = source.path / mount.source
        if top.is_file():
            found[mount.source] = _stamp(top)
            continue
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
            for name in files:
                if name.endswith(SKIP_SUFFIXES):
                    continue
                path = Path(directory, name)
                try:
                    found[path.relative_to(source.path).as_posix()] = _stamp(path)
                except OSError:
                    continue  # gone between listing and stat: the next round sees it
    return found


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.lstat()
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class Plan:
    """What a copy sends and removes; `full`: everything (nothing known of what was sent)."""

    send: tuple[str, ...]
    remove: tuple[str, ...]
    full: bool

    @property
    def empty(self) -> bool:
        return not (self.send or self.remove)


def plan(before: Listing, now: Listing) -> Plan:
    """The copy that takes a volume holding `before` (our record of it) to `now`."""
    send = tuple(sorted(p for p, stamp in now.items() if before.get(p) != stamp))
    remove = tuple(sorted(p for p in before if p not in now))
    return Plan(send, remove, False)


def full_plan(present: Iterable[str], now: Listing) -> Plan:
    """Everything of `now`, and the removal of what else the volume holds (`present`)."""
    remove = tuple(sorted(p for p in set(present) if p not in now))
    return Plan(tuple(sorted(now)), remove, True)


@dataclass(frozen=True)
class Volume:
    """The slot's source volume on the engine: its name, its directory on the engine's host,
    and the id it was made with ("" for a volume made by someone else); `new`: made just now,
    so it holds nothing."""

    name: str
    mountpoint: str
    copy_id: str
    new: bool = False


def _inspect(name: str, environ: Mapping[str, str]) -> Volume | None:
    template = f'{{{{.Mountpoint}}}}|{{{{index .Labels "{COPY_LABEL}"}}}}'
    cmd = ["docker", "volume", "inspect", "--format", template, name]
    result = runner.run(cmd, env=environ, timeout=ENGINE_QUERY_TIMEOUT)
    if not result.ok:
        if "no such volume" in result.stderr.lower():
            return None
        runner.check_result(result, f"asking the engine about volume {name} failed")
    mountpoint, _, copy_id = result.stdout.strip().partition("|")
    return Volume(name, mountpoint, "" if copy_id == "<no value>" else copy_id)


def ensure_volume(target: compose.Target, environ: Mapping[str, str]) -> Volume:
    """The slot's source volume, created with Compose's project labels (so `compose up`
    adopts it and `down --volumes` removes it) when it does not exist."""
    name = volume_name(target.project)
    found = _inspect(name, environ)
    if found is not None:
        return found
    labels = {
        "com.docker.compose.project": target.project,
        "com.docker.compose.volume": apps.SOURCE_VOLUME,
        CLIENT_LABEL: client_name(),
        COPY_LABEL: secrets.token_hex(8),
    }
    create = ["docker", "volume", "create"]
    create += [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    runner.run(
        [*create, name],
        env=environ,
        timeout=ENGINE_QUERY_TIMEOUT,
        check=f"creating slot {target.slot}'s source volume {name} failed",
    )
    made = _inspect(name, environ)
    if made is None:
        raise SandboxError(f"the engine lost volume {name} as it was made: re-run", Exit.COMMAND)
    return dataclasses.replace(made, new=True)


def remove_volume(target: compose.Target, environ: Mapping[str, str]) -> bool:
    """Remove the slot's source volume (after `down --volumes`); whether there was one. The
    compose file does not declare it, so Compose's own `down --volumes` leaves it."""
    name = volume_name(target.project)
    result = runner.run(["docker", "volume", "rm", name], env=environ, timeout=CLI_TIMEOUT)
    if result.ok:
        return True
    if "no such volume" in result.stderr.lower():
        return False
    runner.check_result(result, f"removing slot {target.slot}'s source volume {name} failed")
    return False


def read_state(root: Path, slot: int, volume: Volume, source: Path) -> Listing | None:
    """What was last sent into `volume` from `source`; None when unknown (another volume,
    another checkout, no record)."""
    if not volume.copy_id:
        return None
    try:
        state = json.loads(state_path(root, slot).read_text())
        if (state["volume"], state["copy_id"], state["source"]) != (
            volume.name,
            volume.copy_id,
            str(source),
        ):
            return None
        return {path: (int(s[0]), int(s[1])) for path, s in state["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_state(root: Path, slot: int, volume: Volume, source: Path, files: Listing) -> None:
    path = state_path(root, slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "volume": volume.name,
        "copy_id": volume.copy_id,
        "source": str(source),
        "files": {p: list(stamp) for p, stamp in sorted(files.items())},
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state) + "\n")
    partial.replace(path)


def extract_command(volume: str, image: str, todo: Plan) -> list[str]:
    """A helper container on the engine's host that unpacks stdin's tar into `volume`."""
    return [
        *engine.HELPER_RUN,
        "-i",
        "--network=none",
        "--volume",
        f"{volume}:/dest",
        image,
        "sh",
        "-c",
        EXTRACT_SCRIPT,
        "sync",
        *todo.remove,
    ]


def present(volume: Volume, image: str, environ: Mapping[str, str]) -> list[str]:
    """The files the volume holds (relative paths), from a helper container on its host."""
    if volume.new:
        return []
    cmd = [
        *engine.HELPER_RUN,
        "--network=none",
        "--volume",
        f"{volume.name}:/dest:ro",
        image,
        "sh",
        "-c",
        LIST_SCRIPT,
    ]
    result = runner.run(
        cmd,
        env=environ,
        timeout=ENGINE_QUERY_TIMEOUT,
        check=f"listing {volume.name} on the engine's host failed",
    )
    return [name.removeprefix("./") for name in result.stdout.split("\0") if name]


def write_tar(checkout: Path, names: tuple[str, ...], into: Path) -> int:
    """A tar of `names` (files of `checkout`, relative paths), owned by nobody in particular;
    the bytes written."""
    with tarfile.open(into, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in names:
            try:
                info = archive.gettarinfo(str(checkout / name), arcname=name)
            except FileNotFoundError:
                continue  # removed since the listing: the next copy removes it there too
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with (checkout / name).open("rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    return into.stat().st_size


@dataclass(frozen=True)
class Synced:
    """One copy: what went, how big, how long, into which volume."""

    volume: Volume
    sent: int
    removed: int
    bytes: int
    seconds: float
    full: bool

    def describe(self, host: str) -> str:
        if not (self.sent or self.removed):
            return f"{self.volume.name} on {host} already matches the checkout"
        size = f"{self.bytes / 1e6:.1f} MB" if self.bytes >= 1e6 else f"{self.bytes / 1e3:.0f} KB"
        done = [f"{'copied' if self.full else 'sent'} {_count(self.sent)} ({size})"]
        if self.removed:
            done = [*done[: 1 if self.sent else 0], f"removed {_count(self.removed)}"]
        return f"{', '.join(done)}: {self.volume.name} on {host}, {self.seconds:.1f} s"


def _count(files: int) -> str:
    return f"{files} file" if files == 1 else f"{files} files"


def send(
    target: compose.Target,
    environ: Mapping[str, str],
    source: apps.Source,
    image: str,
) -> Synced:
    """Copy what changed in `source` since the last copy into the slot's source volume on
    the engine's host (the volume is created when missing)."""
    if source.path is None:
        raise SandboxError("a built-in app has no checkout to copy", Exit.USAGE)
    started = time.monotonic()
    volume = ensure_volume(target, environ)
    now = listing(source)
    before = read_state(target.root, target.slot, volume, source.path)
    todo = full_plan(present(volume, image, environ), now) if before is None else plan(before, now)
    sent_bytes = 0
    if not todo.empty:
        with tempfile.TemporaryDirectory(prefix="ktrdr-sync-") as tmp:
            archive = Path(tmp) / "source.tar"
            sent_bytes = write_tar(source.path, todo.send, archive)
            runner.run(
                extract_command(volume.name, image, todo),
                env=environ,
                stdin=archive,
                timeout=SEND_TIMEOUT,
                check=f"copying {source.path} into {volume.name} on the engine's host failed",
            )
    if before is None or not todo.empty:
        write_state(target.root, target.slot, volume, source.path, now)
    seconds = time.monotonic() - started
    return Synced(volume, len(todo.send), len(todo.remove), sent_bytes, seconds, todo.full)


def slot_source(target: compose.Target) -> apps.Source:
    """The checkout the slot's last `up` from this checkout ran, for `inv sync`."""
    recorded = apps.recorded_source(target.root, target.slot)
    if not recorded:
        raise SandboxError(
            f"slot {target.slot} runs no --source checkout: nothing to sync "
            f"(`inv up --slot={target.slot} --source=PATH` runs one)",
            Exit.USAGE,
        )
    path = Path(recorded)
    if not path.is_dir():
        raise SandboxError(
            f"slot {target.slot}'s checkout {path} is gone: `inv down --slot={target.slot}`, "
            "or restore the checkout",
            Exit.USAGE,
        )
    return apps.detect(path)


def rounds(interval: float = WATCH_INTERVAL) -> Iterator[None]:
    """Forever, one tick every `interval` seconds (tests pass a finite iterator instead)."""
    while True:
        yield
        time.sleep(interval)


def watch(
    target: compose.Target,
    environ: Mapping[str, str],
    source: apps.Source,
    image: str,
    on_sync: Callable[[Synced], None],
    ticks: Iterator[None] | None = None,
) -> None:
    """Send every change of `source` as it happens until Ctrl-C: a stat of each mounted file
    every half second, and a copy (under the slot's lock, so never beside an `inv up`) only
    when something changed; `on_sync` hears each copy that sent something."""
    last: Listing | None = None
    for _ in ticks if ticks is not None else rounds():
        if source.path is None or not source.path.is_dir():
            raise SandboxError(
                f"slot {target.slot}'s checkout {source.path} is gone: stopped watching",
                Exit.USAGE,
            )
        now = listing(source)
        if now == last:
            continue
        with slot_lock(target.slot, wait=LOCK_WAIT):
            synced = send(target, environ, source, image)
        last = now
        if synced.sent or synced.removed:
            on_sync(synced)
