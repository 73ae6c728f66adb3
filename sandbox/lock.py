"""The machine's locks, all in one directory (`~/.ktrdr/locks`, or `$KTRDR_LOCK_DIR`).

One lock per slot (`slot-N.lock`), so two `inv up`/`inv down` of the same slot cannot
interleave; different slots lock different files and run in parallel. Machine-wide: picking a
free slot (`pick.lock`), creating a worktree (`worktrees.lock`), building one image
(`image-<tag>.lock`). Each is an `flock`: the kernel drops it when its holder exits, however it
exits, so a crashed `inv` never leaves a stale lock behind. The holder writes its pid into the
file so a refused command can name it. (flock on NFS is emulated with POSIX locks on Linux;
keep the lock directory on a local disk.)
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sandbox import slots
from sandbox.errors import Exit, SandboxError

LOCK_DIR_VARIABLE = "KTRDR_LOCK_DIR"
POLL_SECONDS = 0.1
PICK_LOCK = "pick.lock"
WORKTREE_LOCK = "worktrees.lock"

# Locks this process holds: path -> (pid, depth). flock conflicts between two open() of the
# same file even within one process, so a nested `slot_lock` of a slot already held here (e.g.
# a task calling down() then up()) must not lock again. The pid guards against a forked child,
# which inherits this dict but not the right to the lock.
_held: dict[Path, tuple[int, int]] = {}


def default_lock_dir(environ: Mapping[str, str]) -> Path:
    """`$KTRDR_LOCK_DIR` when set, else ~/.ktrdr/locks."""
    value = environ.get(LOCK_DIR_VARIABLE)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".ktrdr" / "locks"


def lock_path(slot: int, lock_dir: Path) -> Path:
    return lock_dir / f"slot-{slot}.lock"


def holder(pid: int | None) -> str:
    """Who holds a lock, in a few words, by its pid when known."""
    return f"another `inv` command (pid {pid})" if pid else "another `inv` command"


def busy_message(slot: int, pid: int | None) -> str:
    return f"slot {slot} is busy: {holder(pid)} is working on it; wait for it or retry"


def holder_pid(fd: int) -> int | None:
    """The pid the lock's holder wrote into the file, when there is one."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def open_lock_file(path: Path) -> int:
    """The lock file's descriptor, its directory made first; one line when it cannot be."""
    try:
        # Private: a holder's pid says what this user is running.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SandboxError(
            f"cannot open the lock file {path} ({exc.strerror}): set {LOCK_DIR_VARIABLE} to a "
            "writable directory, then re-run",
            Exit.LOCKED,
        ) from exc


def acquire(
    fd: int,
    wait: float,
    refusal: Callable[[int | None], SandboxError],
    on_busy: Callable[[int | None, float], None] | None = None,
) -> None:
    """Take an exclusive flock on `fd`, retrying for up to `wait` seconds. While another
    process holds it, `on_busy(its pid, seconds left)` hears it once; past `wait`,
    `refusal(its pid)` is raised."""
    deadline = time.monotonic() + max(wait, 0.0)
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise refusal(holder_pid(fd)) from None
            if on_busy is not None and not told:
                on_busy(holder_pid(fd), remaining)
                told = True
            time.sleep(min(POLL_SECONDS, remaining))


@contextmanager
def signed(fd: int) -> Iterator[None]:
    """With the flock on `fd` taken: our pid in the file for the block (so a refused command
    can name us), emptied before the lock is released (a pid left behind would name a process
    that no longer holds it)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def slot_lock(
    slot: int,
    *,
    wait: float = 0.0,
    lock_dir: Path | None = None,
    on_busy: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold slot `slot`'s lock for the `with` block.

    When another process holds it, retry for up to `wait` seconds, then raise
    SandboxError(LOCKED) naming that process; `on_busy` hears once that it waits. Released
    on leaving the block, exceptions included; the lock file stays. Re-entrant within one
    process.
    """
    path = lock_path(slot, lock_dir if lock_dir is not None else default_lock_dir(os.environ))
    path = path.absolute()
    pid = os.getpid()
    owner, depth = _held.get(path, (0, 0))
    if owner == pid:
        _held[path] = (pid, depth + 1)
        try:
            yield
        finally:
            _held[path] = (pid, depth)
        return

    def refusal(holder_pid: int | None) -> SandboxError:
        return SandboxError(busy_message(slot, holder_pid), Exit.LOCKED)

    def waiting(holder_pid: int | None, remaining: float) -> None:
        if on_busy is not None:
            on_busy(
                f"slot {slot} is busy: {holder(holder_pid)}; waiting up to {remaining:.0f}s for it"
            )

    fd = open_lock_file(path)
    try:
        acquire(fd, wait, refusal, waiting)
        with signed(fd):
            _held[path] = (pid, 1)
            try:
                yield
            finally:
                _held.pop(path, None)
    finally:
        os.close(fd)


@contextmanager
def file_lock(
    path: Path,
    *,
    wait: float,
    doing: str,
    advice: str,
    on_busy: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an flock on `path` for the `with` block, our pid written inside; wait up to `wait`
    seconds for its holder ("<holder> <doing>" is what `on_busy` hears), then
    SandboxError(LOCKED) ending in `advice`. The kernel drops it when the holder dies, so it is
    never stale."""

    def refusal(pid: int | None) -> SandboxError:
        return SandboxError(
            f"{holder(pid)} {doing} and does not finish: {advice} (lock {path})", Exit.LOCKED
        )

    def waiting(pid: int | None, remaining: float) -> None:
        if on_busy is not None:
            on_busy(f"{holder(pid)} {doing}; waiting up to {remaining:.0f}s")

    fd = open_lock_file(path)
    try:
        acquire(fd, wait, refusal, waiting)
        with signed(fd):
            yield
    finally:
        os.close(fd)


def held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (False when the file is gone). Probed
    with a non-blocking flock taken and dropped at once; nothing is created."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def held_slots(lock_dir: Path) -> frozenset[int]:
    """Slots whose lock another `inv` holds now."""
    return frozenset(slot for slot in slots.SLOTS if held(lock_path(slot, lock_dir)))


def pick_lock(
    environ: Mapping[str, str],
    *,
    wait: float,
    lock_dir: Path | None = None,
    on_busy: Callable[[str], None] | None = None,
) -> AbstractContextManager[None]:
    """The machine-wide lock of `--slot=auto`'s picking: `pick.lock` next to the slot locks."""
    path = (lock_dir if lock_dir is not None else default_lock_dir(environ)) / PICK_LOCK
    return file_lock(
        path,
        wait=wait,
        doing="is picking a slot",
        advice="wait for it or pass --slot=N",
        on_busy=on_busy,
    )


def worktree_lock(
    environ: Mapping[str, str], *, wait: float, lock_dir: Path | None = None
) -> AbstractContextManager[None]:
    """The machine-wide lock around creating a worktree: two `inv new` of one branch must not
    both pass the checks, and a failed one must not roll back the other's worktree."""
    path = (lock_dir if lock_dir is not None else default_lock_dir(environ)) / WORKTREE_LOCK
    return file_lock(
        path, wait=wait, doing="is creating a worktree", advice="wait for it and re-run"
    )


def image_lock(
    tag: str, environ: Mapping[str, str], *, wait: float, on_busy: Callable[[str], None] | None
) -> AbstractContextManager[None]:
    """This machine's lock on building image `tag`."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", tag)
    return file_lock(
        default_lock_dir(environ) / f"image-{name}.lock",
        wait=wait,
        doing=f"is building {tag}",
        advice="stop it or wait for it, then run the same command again",
        on_busy=on_busy,
    )
