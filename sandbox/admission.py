"""Machine-wide admission: at most K slots in their heavy phase at once, the others in line.

Ten `inv up` started together (separate processes, as agents run them) all compete for the same
cores: every one of them then takes minutes and none reaches its gate's timeout ready. The work
is bounded (a slot's start is some tens of CPU-seconds), so the machine does it fastest a few
at a time. The *heavy phase* of a start is `docker compose up` plus the gate until it ends:
containers are created and the app imports and migrates. Preflight and image builds are not in
it (a build of one dependency lock happens once on the machine, under its own lock), nor is
anything after the gate.

The line lives in the lock directory (`KTRDR_LOCK_DIR`, ~/.ktrdr/locks), in `admission/`:
- every start in line or in its heavy phase holds an flock on a file of its own,
  `q-<ticket>.lock`, whose ticket comes from a counter under a short machine-wide flock; the
  file is locked before it becomes visible (made under a temporary name, then renamed), so a
  file nobody holds a lock on is one whose owner is gone (the kernel drops an flock however
  its holder dies: Ctrl-C, kill -9);
- a start is admitted when its ticket is among the K lowest of the live files: first come,
  first served, and since tickets only leave the line, an admitted start stays admitted;
- the admissions are recorded, one JSON object a line, in `admission/record.jsonl` (when each
  slot queued, was admitted and ended), so a test or a user can check "at most K at a time"
  from the tool's own record.

K is `KTRDR_MAX_STARTS` when set, else decided from this machine: one start per core (a start
is CPU-bound, and one per core keeps each start's processes on a core of their own), fewer when
memory would not hold them (`MEMORY_PER_START`). Processes that disagree on K each apply their
own. With a remote engine (`DOCKER_HOST`) the line is this client's, and K is this client's
guess unless set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import Exit, SandboxError
from sandbox.lastup import pid_alive
from sandbox.lock import LOCK_DIR_VARIABLE, default_lock_dir, held

MAX_STARTS_VARIABLE = "KTRDR_MAX_STARTS"
# A real KTRDR slot held 0.6 GB at rest (ten of them 5.9 GB); while it starts, every Python
# process imports the whole app at once. 2 GiB a start leaves room for that and for torch.
MEMORY_PER_START = 2 << 30
# How often a start in line looks again; a start takes tens of seconds, so this is prompt.
QUEUE_POLL = 0.25
SUBDIR = "admission"
RECORD = "record.jsonl"
# The record is trimmed to its last lines when it grows past this (checked when a start ends).
RECORD_MAX_BYTES = 512 * 1024
RECORD_KEEP_LINES = 2000

# A start's lines in the record: it joined the line, began its heavy phase, ended it; or left
# the line without starting (Ctrl-C while waiting).
QUEUED, ADMITTED, ENDED, LEFT = "queued", "admitted", "ended", "left"


# ----------------------------------------------------------------------------- the limit


def machine_limit(cpus: int | None, memory: int | None) -> int:
    """How many starts this machine carries at once: one per core, fewer when memory is
    short; at least one. Unknown facts (None) do not limit."""
    limit = max(1, cpus or 1)
    if memory:
        limit = min(limit, max(1, memory // MEMORY_PER_START))
    return limit


def total_memory() -> int | None:
    """This machine's physical memory in bytes, when the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def parse_limit(raw: str) -> int:
    """`KTRDR_MAX_STARTS`: a whole number from 1."""
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:
        raise SandboxError(
            f"{MAX_STARTS_VARIABLE}={raw!r} is not a number of starts: set it to a whole number "
            f"from 1 (e.g. {MAX_STARTS_VARIABLE}=2), or unset it to let the machine decide",
            Exit.USAGE,
        )
    return int(value)


def limit(environ: Mapping[str, str]) -> int:
    """K: `KTRDR_MAX_STARTS` when set, else `machine_limit` of this machine."""
    raw = environ.get(MAX_STARTS_VARIABLE, "")
    if raw.strip():
        return parse_limit(raw)
    return machine_limit(os.cpu_count(), total_memory())


# ----------------------------------------------------------------------------- the line


@dataclass(frozen=True)
class Entry:
    """One start in line or in its heavy phase, as its file says."""

    ticket: int
    slot: int
    pid: int


@dataclass(frozen=True)
class Place:
    """Where a start stands: admitted, or how many are ahead of it in line."""

    admitted: bool
    ahead: int  # waiting starts before this one (0 when admitted or first in line)
    running: tuple[int, ...]  # slots in their heavy phase now
    limit: int

    def describe(self, slot: int) -> str:
        """One line for the user."""
        running = ", ".join(str(s) for s in self.running) or "none"
        return (
            f"slot {slot} waits for its turn to start: number {self.ahead + 1} in line "
            f"(starting now: slot {running}; at most {self.limit} at once, "
            f"{MAX_STARTS_VARIABLE} sets it)"
        )


def place(mine: int, live: Sequence[Entry], k: int) -> Place:
    """Where ticket `mine` stands among the `live` entries (any order), with limit `k`: the
    K lowest tickets are admitted, the rest wait in ticket order."""
    ordered = sorted(live, key=lambda e: e.ticket)
    tickets = [e.ticket for e in ordered]
    index = tickets.index(mine) if mine in tickets else len(tickets)
    running = tuple(e.slot for e in ordered[:k] if e.ticket != mine)
    if index < k:
        return Place(True, 0, running, k)
    return Place(False, index - k, running, k)


def entry_name(ticket: int) -> str:
    return f"q-{ticket:012d}.lock"


def parse_entry(name: str, text: str) -> Entry | None:
    """An entry from its file's name and content ("slot pid"); None for anything else."""
    if not (name.startswith("q-") and name.endswith(".lock")):
        return None
    ticket, words = name[2:-5], text.split()
    if not ticket.isdigit() or len(words) != 2 or not all(w.isdigit() for w in words):
        return None
    return Entry(int(ticket), int(words[0]), int(words[1]))


@dataclass(frozen=True)
class Line:
    """The admission directory of one lock directory."""

    root: Path

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> Line:
        return cls(default_lock_dir(environ) / SUBDIR)

    @property
    def record_path(self) -> Path:
        return self.root / RECORD

    @contextlib.contextmanager
    def mutex(self) -> Iterator[None]:
        """The short machine-wide lock around taking a ticket and sweeping the dead."""
        fd = self._open(self.root / ".mutex", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open(self, path: Path, flags: int) -> int:
        try:
            # Private, as the slot locks: the record says which slots this user starts when.
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SandboxError(
                f"cannot use the admission directory {self.root} ({exc.strerror}): set "
                f"{LOCK_DIR_VARIABLE} to a writable directory on a local disk, then re-run",
                Exit.LOCKED,
            ) from exc

    def join(self, slot: int) -> tuple[int, int]:
        """Enter the line: (ticket, the descriptor whose flock keeps the entry alive)."""
        with self.mutex():
            ticket = self._next_ticket()
            temporary = self.root / f".new-{os.getpid()}-{ticket}"
            fd = self._open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{slot} {os.getpid()}\n".encode())
            os.rename(temporary, self.root / entry_name(ticket))
        return ticket, fd

    def _next_ticket(self) -> int:
        """Take the next ticket (under the mutex): above the counter and above every entry
        in line, so an emptied or lost counter (a kill or a full disk while it was written)
        cannot hand out a ticket that jumps the starts already waiting. The counter is
        replaced whole (a temporary file renamed over it), never truncated in place."""
        counter = self.root / "next-ticket"
        text = counter.read_text().strip() if counter.exists() else ""
        highest = int(text) if text.isdigit() else 0
        for path in self.root.glob("q-*.lock"):
            number = path.name[2:-5]
            if number.isdigit():
                highest = max(highest, int(number))
        ticket = highest + 1
        temporary = self.root / f".next-ticket-{os.getpid()}"
        temporary.write_text(f"{ticket}\n")
        os.replace(temporary, counter)
        return ticket

    def leave(self, ticket: int, fd: int) -> None:
        """Leave the line: the entry removed, then its lock dropped."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / entry_name(ticket)).unlink()
        os.close(fd)

    def live(self) -> list[Entry]:
        """Every entry whose owner still holds it; entries of dead owners are removed."""
        found = []
        for path in sorted(self.root.glob("q-*.lock")):
            try:
                entry = parse_entry(path.name, path.read_text())
            except OSError:
                continue  # left the line meanwhile
            if entry is None:
                continue
            if held(path):
                found.append(entry)
            else:  # its owner died without leaving: nobody else will remove it
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return found

    def record(self, event: str, slot: int, k: int, at: float | None = None) -> None:
        """One line of the record (O_APPEND: lines of several processes never interleave),
        under the mutex: `trim` replaces the file under it, and a line appended to the old
        file between its read and its rename would be lost."""
        line = {"event": event, "slot": slot, "pid": os.getpid(), "limit": k}
        line["at"] = round(time.time() if at is None else at, 3)
        with self.mutex():
            fd = self._open(self.record_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)

    def trim(self) -> None:
        """Keep the record's last lines once it grows large."""
        with self.mutex():
            path = self.record_path
            if not path.exists() or path.stat().st_size <= RECORD_MAX_BYTES:
                return
            lines = path.read_text().splitlines(keepends=True)[-RECORD_KEEP_LINES:]
            kept = path.with_suffix(".tmp")
            kept.write_text("".join(lines))
            os.replace(kept, path)


@dataclass
class Turn:
    """A start's stay in line: how long it waited, and whether it had to."""

    slot: int
    limit: int
    waited: float = 0.0  # seconds in line before the heavy phase began
    queued: bool = False  # it had to wait at all
    admitted: bool = False


@contextlib.contextmanager
def turn(
    slot: int,
    environ: Mapping[str, str],
    *,
    on_wait: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[Turn]:
    """Wait in line until slot `slot` may start its heavy phase, hold the turn for the block.

    `on_wait` hears a line when the start has to wait and again whenever its place changes.
    Leaving the block, however (Ctrl-C in line included), removes the entry; a process killed
    outright leaves a file nobody holds, which the next start sweeps away.
    """
    k = limit(environ)
    line = Line.of(os.environ)  # where the slot locks are (sandbox/lock.py reads it there too)
    ticket, fd = line.join(slot)
    started = clock()
    state = Turn(slot, k)
    try:
        line.record(QUEUED, slot, k)
        said: Place | None = None
        while True:
            where = place(ticket, line.live(), k)
            if where.admitted:
                break
            state.queued = True
            if on_wait is not None and where != said:
                on_wait(where.describe(slot))
            said = where
            (sleep or time.sleep)(QUEUE_POLL)
        state.waited, state.admitted = clock() - started, True
        line.record(ADMITTED, slot, k)
        yield state
    finally:
        with contextlib.suppress(SandboxError, OSError):
            line.record(ENDED if state.admitted else LEFT, slot, k)
        line.leave(ticket, fd)
        with contextlib.suppress(SandboxError, OSError):
            line.trim()


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Interval:
    """One heavy phase from the record: admitted at `start`, ended at `end` (epoch seconds)."""

    slot: int
    pid: int
    start: float
    end: float | None  # None: not ended (yet, or its process was killed)


def read_record(path: Path) -> list[dict[str, object]]:
    """The record's lines as dicts; lines that do not parse are skipped."""
    if not path.exists():
        return []
    found = []
    for text in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(text)
            if isinstance(item, dict):
                found.append(item)
    return found


def intervals(
    lines: Sequence[Mapping[str, object]], alive: Callable[[int], bool] = pid_alive
) -> list[Interval]:
    """Heavy phases from the record: each `admitted` paired with the same process's next
    `ended` for the same slot. One that never ended is closed rather than counted until now:
    at the same process's next line for that slot (it started that slot again, so the first
    one was over), or, when its process is dead (`alive` says), at the next admission of
    another start (the line admits past a start only once its owner is gone, when the line
    is full), else at its own start. Only a live process's open phase stays open (None)."""
    open_: dict[tuple[int, int], float] = {}
    done: list[Interval] = []
    admitted_at: list[float] = []
    for line in lines:
        slot, pid, at = line.get("slot"), line.get("pid"), line.get("at")
        if not isinstance(slot, int) or not isinstance(pid, int):
            continue
        if not isinstance(at, int | float):
            continue
        event = line.get("event")
        if (slot, pid) in open_ and event != ENDED:  # superseded: that phase was over
            done.append(Interval(slot, pid, open_.pop((slot, pid)), float(at)))
        if event == ADMITTED:
            open_[(slot, pid)] = float(at)
            admitted_at.append(float(at))
        elif event == ENDED and (slot, pid) in open_:
            done.append(Interval(slot, pid, open_.pop((slot, pid)), float(at)))
    for (slot, pid), start in open_.items():
        if alive(pid):
            done.append(Interval(slot, pid, start, None))
        else:
            later = [at for at in admitted_at if at > start]
            done.append(Interval(slot, pid, start, min(later) if later else start))
    return sorted(done, key=lambda i: i.start)


def most_at_once(phases: Sequence[Interval], now: float | None = None) -> int:
    """The largest number of heavy phases that overlapped at any moment (one that has not
    ended counts until `now`)."""
    edges: list[tuple[float, int]] = []
    until = time.time() if now is None else now
    for phase in phases:
        # An end sorts before a start at the same instant: one ended as the next began.
        edges += [(phase.start, 1), (phase.end if phase.end is not None else until, -1)]
    most = current = 0
    for _, step in sorted(edges):
        current += step
        most = max(most, current)
    return most
