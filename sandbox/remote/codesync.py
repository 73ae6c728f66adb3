"""A `--source` checkout on a remote engine: its code copied to that host, and kept in step.

A bind mount names a path on the engine's host. On this machine's engine that is the checkout
itself; on a remote one (DOCKER_HOST=tcp://... or ssh://..., or such a context) the checkout is
not there. So the files the app kind mounts (`AppKind.mounts`: for KTRDR ktrdr/, config/,
alembic/, alembic.ini) are copied, as a tar stream over the engine's API, into a volume of the
slot's own (`ktrdr-sandbox-N_source`), and the app services bind the copy at the same targets,
read-only, exactly as they bind the checkout locally. The volume's directory on the engine's
host (its `Mountpoint`) is what the binds name. The services also mount the volume itself, so
nothing prunes it while the slot runs; the compose file does not declare it, so `inv down
--volumes` removes it by name (`remove_volume`), and `inv down --all --volumes` by its Compose
project label.

What to send is decided against the volume itself, never a record kept here: a helper lists
it (size and modification time of each file, to the nanosecond, which the tar carries
exactly), so another checkout's copy, a copy cut short or a volume made anew are all seen as
they are. `inv up` and `inv sync --slot=N` send the difference; `--watch` lists the volume
once, then sends each change as it happens; the app reloads as it does for a local edit
(uvicorn --reload, the reference app's reloader).

Nothing a container binds is replaced, only rewritten: a bind mount holds on to the inode it
was given, so a directory or file removed and made again would leave the container looking at
the old one. Files are extracted in place (`tar --overwrite`: the bound alembic.ini keeps its
inode), and a directory goes only when a file of the checkout now has its path.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox import apps, checkouts, compose, engine, runner, slotfiles, slots
from sandbox.docker import CLIENT_LABEL, PROJECT_LABEL, VOLUME_LABEL, client_name
from sandbox.errors import Exit, SandboxError
from sandbox.lock import slot_lock
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT

# Not code the app runs, and rewritten by tools all the time.
SKIP_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")
# A whole KTRDR package is a few MB; a slow link gets this long.
SEND_TIMEOUT = 900.0
WATCH_INTERVAL = 0.5

# Relative path -> (size, modification time in ns) of each file or link.
Listing = dict[str, tuple[int, int]]

# The arguments are paths (relative, from the listings) to remove first, "--", then the tar
# stream on stdin. Removing first lets a file take the path of a directory and the reverse.
EXTRACT_SCRIPT = (
    'set -e; cd /dest; while [ "$1" != -- ]; do rm -rf -- "./$1"; shift; done; '
    "tar -x --overwrite --no-same-owner -f -"
)
# Every entry of the volume, NUL-separated: type (f file, l link, d directory), size,
# modification time (seconds.nanoseconds), path relative to the volume.
LIST_SCRIPT = r"cd /dest && find . -mindepth 1 -printf '%y %s %T@ %P\0'"


def volume_name(project: str) -> str:
    return slots.volume(project, slotfiles.SOURCE_VOLUME)


# ----------------------------------------------------------------------------- the checkout


def listing(source: apps.Source) -> Listing:
    """Every file and link of `source` its kind mounts, relative to the checkout; caches left
    out. A mount the kind needs that is not there (moved away, the checkout gone) or cannot be
    read is an error: an empty listing would empty the copy."""
    if source.path is None:
        return {}
    # Links are sent as links, and the engine's host resolves a bound one there: a link that
    # leaves the checkout is refused here, before anything is sent (checkouts.check_links).
    checkouts.check_links(source)
    found: Listing = {}
    for mount in source.kind.mounts:
        top = source.path / mount.source
        if not top.exists():
            if mount.optional:
                continue
            raise SandboxError(
                f"{source.path} has no {mount.source} any more: nothing was sent (put it "
                "back, or `inv down` the slot)",
                Exit.USAGE,
            )
        if not top.is_dir() or top.is_symlink():
            found[mount.source] = _stamp(top)
            continue
        for directory, subdirs, files in os.walk(top, onerror=_unreadable):
            # A link to a directory is listed as the link (tar stores it as one), not walked.
            links = [d for d in subdirs if Path(directory, d).is_symlink()]
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and d not in links)
            for name in [*files, *links]:
                if name.endswith(SKIP_SUFFIXES):
                    continue
                path = Path(directory, name)
                try:
                    found[path.relative_to(source.path).as_posix()] = _stamp(path)
                except FileNotFoundError:
                    continue  # gone between listing and stat: the next round sees it
    return found


def _unreadable(error: OSError) -> None:
    raise SandboxError(
        f"cannot read {error.filename} ({error.strerror}): nothing was sent", Exit.USAGE
    )


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.lstat()
    return stat.st_size, stat.st_mtime_ns


def write_tar(checkout: Path, names: tuple[str, ...], into: Path) -> tuple[list[str], int]:
    """A tar of `names` (files and links of `checkout`, relative paths), owned by root, each
    with its modification time to the nanosecond; the names written (a file gone meanwhile is
    left out) and the bytes. A file is read whole before its header is written, so one that
    changes meanwhile cannot break the archive (its newer time sends it again)."""
    written = []
    with tarfile.open(into, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in names:
            path = checkout / name
            try:
                stat = path.lstat()
                info = archive.gettarinfo(str(path), arcname=name)
                data = path.read_bytes() if info.isreg() else b""
            except FileNotFoundError:
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.size = len(data)
            seconds, nanoseconds = divmod(stat.st_mtime_ns, 1_000_000_000)
            info.mtime = seconds
            info.pax_headers = {"mtime": f"{seconds}.{nanoseconds:09d}"}
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
            written.append(name)
    return written, into.stat().st_size


# ----------------------------------------------------------------------------- the volume


@dataclass(frozen=True)
class Volume:
    """The slot's source volume on the engine: its name and its directory on that host."""

    name: str
    mountpoint: str


def find_volume(target: compose.Target, environ: Mapping[str, str]) -> Volume | None:
    """The slot's source volume, or None when the engine has none."""
    name = volume_name(target.project)
    cmd = ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", name]
    result = runner.run(cmd, env=environ, timeout=ENGINE_QUERY_TIMEOUT)
    if not result.ok:
        if "no such volume" in result.stderr.lower():
            return None
        runner.check_result(result, f"asking the engine about volume {name} failed")
    mountpoint = result.stdout.strip()
    if not mountpoint.startswith("/"):
        raise SandboxError(
            f"volume {name} has no directory on the engine's host (Mountpoint "
            f"{mountpoint!r}): the copy needs Docker's local volume driver",
            Exit.COMMAND,
        )
    return Volume(name, mountpoint)


def create_volume(target: compose.Target, environ: Mapping[str, str]) -> Volume:
    """The slot's source volume, created with Compose's project labels when missing."""
    found = find_volume(target, environ)
    if found is not None:
        return found
    name = volume_name(target.project)
    labels = {
        PROJECT_LABEL: target.project,
        VOLUME_LABEL: slotfiles.SOURCE_VOLUME,
        CLIENT_LABEL: client_name(),
    }
    create = ["docker", "volume", "create"]
    create += [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    runner.run(
        [*create, name],
        env=environ,
        timeout=ENGINE_QUERY_TIMEOUT,
        check=f"creating slot {target.slot}'s source volume {name} failed",
    )
    made = find_volume(target, environ)
    if made is None:
        raise SandboxError(f"the engine lost volume {name} as it was made: re-run", Exit.COMMAND)
    return made


def remove_volume(target: compose.Target, environ: Mapping[str, str]) -> bool:
    """Remove the slot's source volume (after `down --volumes`); whether there was one."""
    name = volume_name(target.project)
    result = runner.run(["docker", "volume", "rm", name], env=environ, timeout=CLI_TIMEOUT)
    if result.ok:
        return True
    if "no such volume" in result.stderr.lower():
        return False
    runner.check_result(result, f"removing slot {target.slot}'s source volume {name} failed")
    return False


def helper_command(
    volume: str, image: str, script: str, *args: str, readonly: bool = False, stdin: bool = False
) -> list[str]:
    """`sh -c script args...` in a helper container on the engine's host (no network, nothing
    pulled), with `volume` at /dest; `stdin`: fed from ours."""
    mount = f"{volume}:/dest:ro" if readonly else f"{volume}:/dest"
    interactive = ["-i"] if stdin else []
    return [
        *engine.HELPER_RUN,
        *interactive,
        "--network=none",
        "--volume",
        mount,
        image,
        "sh",
        "-c",
        script,
        *args,
    ]


@dataclass(frozen=True)
class Contents:
    """What a volume holds: its files and links with their stamps, and its directories."""

    files: Listing
    directories: frozenset[str]


def parse_contents(output: str) -> Contents:
    """`LIST_SCRIPT`'s output: NUL-separated "TYPE SIZE SECONDS.NANOSECONDS PATH" entries."""
    files: Listing = {}
    directories = set()
    for entry in output.split("\0"):
        kind, _, rest = entry.partition(" ")
        size, _, rest = rest.partition(" ")
        when, _, path = rest.partition(" ")
        if not path:
            continue
        if kind == "d":
            directories.add(path)
            continue
        seconds, _, fraction = when.partition(".")
        nanoseconds = int(seconds) * 1_000_000_000 + int((fraction + "0" * 9)[:9])
        files[path] = (int(size), nanoseconds)
    return Contents(files, frozenset(directories))


def contents(volume: Volume, image: str, environ: Mapping[str, str]) -> Contents:
    """What the volume holds, from a helper container on its host (read-only, no network)."""
    result = runner.run(
        helper_command(volume.name, image, LIST_SCRIPT, readonly=True),
        env=environ,
        timeout=ENGINE_QUERY_TIMEOUT,
        check=f"listing {volume.name} on the engine's host failed",
    )
    return parse_contents(result.stdout)


# ----------------------------------------------------------------------------- a copy


@dataclass(frozen=True)
class Plan:
    """What a copy sends, and what it removes first (files the checkout no longer has, and
    directories whose path a file of the checkout now takes)."""

    send: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.send or self.remove)


def plan(held: Contents, now: Listing) -> Plan:
    """The copy that takes a volume holding `held` to the checkout's `now`."""
    send = tuple(sorted(p for p, stamp in now.items() if held.files.get(p) != stamp))
    stale = {p for p in held.files if p not in now}
    stale |= {p for p in send if p in held.directories}
    return Plan(send, tuple(sorted(stale)))


def extract_command(volume: str, image: str, todo: Plan) -> list[str]:
    """A helper container on the engine's host that unpacks stdin's tar into `volume`."""
    return helper_command(volume, image, EXTRACT_SCRIPT, "sync", *todo.remove, "--", stdin=True)


@dataclass(frozen=True)
class Synced:
    """One copy: what went, how big, how long, into which volume, and what the volume holds
    afterwards (the next copy of a watch plans against it)."""

    volume: Volume
    sent: int
    removed: int
    bytes: int
    seconds: float
    held: Contents

    def describe(self, host: str) -> str:
        if not (self.sent or self.removed):
            return f"{self.volume.name} on {host} already matches the checkout"
        size = f"{self.bytes / 1e6:.1f} MB" if self.bytes >= 1e6 else f"{self.bytes / 1e3:.0f} KB"
        done = [f"sent {_count(self.sent)} ({size})"] if self.sent else []
        if self.removed:
            done.append(f"removed {_count(self.removed)}")
        return f"{', '.join(done)}: {self.volume.name} on {host}, {self.seconds:.1f} s"


def _count(files: int) -> str:
    return f"{files} file" if files == 1 else f"{files} files"


def send(
    target: compose.Target,
    environ: Mapping[str, str],
    source: apps.Source,
    image: str,
    *,
    create: bool = False,
    held: Contents | None = None,
    now: Listing | None = None,
) -> Synced:
    """Copy what differs between `source` and the slot's source volume into it. `create`
    (`inv up`): make the volume when missing; else a missing volume is an error. `held`: what
    the volume holds, when known (a watch's last copy); else it is listed. `now`: the
    checkout's listing, when the caller has just made it."""
    if source.path is None:
        raise SandboxError("a built-in app has no checkout to copy", Exit.USAGE)
    started = time.monotonic()
    volume = create_volume(target, environ) if create else find_volume(target, environ)
    if volume is None:
        raise SandboxError(
            f"slot {target.slot} has no copy of its checkout on the engine's host: "
            f"`inv up --slot={target.slot} --source={source.path}` makes it",
            Exit.USAGE,
        )
    if now is None:
        now = listing(source)
    if held is None:
        held = contents(volume, image, environ)
    todo = plan(held, now)
    sent: list[str] = []
    size = 0
    if not todo.empty:
        with tempfile.TemporaryDirectory(prefix="ktrdr-sync-") as tmp:
            archive = Path(tmp) / "source.tar"
            sent, size = write_tar(source.path, todo.send, archive)
            runner.run(
                extract_command(volume.name, image, todo),
                env=environ,
                stdin=archive,
                timeout=SEND_TIMEOUT,
                check=f"copying {source.path} into {volume.name} on the engine's host failed",
            )
    files = {p: s for p, s in held.files.items() if p not in todo.remove}
    files |= {p: now[p] for p in sent}
    after = Contents(files, held.directories - set(todo.remove))
    seconds = time.monotonic() - started
    return Synced(volume, len(sent), len(todo.remove), size, seconds, after)


# ----------------------------------------------------------------------------- inv sync


def slot_source(target: compose.Target) -> apps.Source:
    """The checkout the slot's last `up` from this checkout ran, for `inv sync`."""
    recorded = slotfiles.recorded_source(target.root, target.slot)
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
    on_busy: Callable[[str], None] | None = None,
) -> None:
    """Send every change of `source` as it happens until Ctrl-C: a stat of each mounted file
    every half second, and a copy only when something changed, under the slot's lock (a round
    that finds it held by an `inv up` or `down` waits for the next; `on_busy` hears it once).
    The volume is listed once; later copies plan against what the last one left."""
    last: Listing | None = None
    held: Contents | None = None
    told = False
    for _ in ticks if ticks is not None else rounds():
        if source.path is None or not source.path.is_dir():
            raise SandboxError(
                f"slot {target.slot}'s checkout {source.path} is gone: stopped watching",
                Exit.USAGE,
            )
        now = listing(source)
        if now == last:
            continue
        try:
            with slot_lock(target.slot):
                synced = send(target, environ, source, image, held=held, now=now)
        except SandboxError as error:
            if error.code is not Exit.LOCKED:
                raise
            if on_busy is not None and not told:
                on_busy(f"slot {target.slot} is busy ({error.message}); sending when it is free")
            told = True
            held = None  # the other command may change the volume: list it again
            continue
        # A file that vanished before it was sent is not counted as sent: back, it goes.
        last = {p: stamp for p, stamp in now.items() if synced.held.files.get(p) == stamp}
        held, told = synced.held, False
        if synced.sent or synced.removed:
            on_sync(synced)
