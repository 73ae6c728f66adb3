"""How a slot's last `inv up` ended, kept in its checkout's state directory.

A failed or interrupted `up` leaves containers behind (some running, some created, some not
there at all) and nothing on them says why. So `up` writes `.sandbox/slot-N.up.json` (the
state directory of `sandbox.apps`) when it starts Compose, and again when it ends: ready,
failed with the reason, or interrupted. A `kill -9` cannot write the end: the record keeps
saying "starting" with the pid of an `inv` that no longer runs, which is itself the reason.
`inv status` reads the record from the checkout the containers were started from; `down`
clears it (the slot no longer has a start to explain); `down --volumes` clears the whole
state directory (`slotfiles.remove_state`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sandbox import STATE_DIR


class Outcome(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    # Never written: what a STARTING record is once the `inv up` that wrote it no longer runs.
    KILLED = "killed"


STARTING, READY, FAILED = Outcome.STARTING, Outcome.READY, Outcome.FAILED
INTERRUPTED, KILLED = Outcome.INTERRUPTED, Outcome.KILLED


@dataclass(frozen=True)
class LastUp:
    outcome: Outcome  # STARTING, READY, FAILED or INTERRUPTED (never KILLED)
    reason: str  # one line: why it failed, or "" when there is nothing to say
    pid: int  # the `inv up` that wrote it
    at: float  # time.time() of writing

    @property
    def state(self) -> Outcome:
        """The outcome as it stands now: a STARTING whose `inv up` is gone is KILLED."""
        if self.outcome == STARTING and not pid_alive(self.pid):
            return KILLED
        return self.outcome

    @property
    def finished(self) -> bool:
        """Whether the start it records completed: ready, or still being worked on."""
        return self.state in (READY, STARTING)

    def explain(self) -> str:
        """Why the slot is not (yet) ready, in words for `inv status`; "" when it is."""
        when = time.strftime("%H:%M", time.localtime(self.at))
        state = self.state
        if state == STARTING:
            return f"starting (inv up, pid {self.pid})"
        if state == KILLED:
            return f"last up did not finish: inv up (pid {self.pid}) was killed at or after {when}"
        if self.outcome == INTERRUPTED:
            return f"last up interrupted at {when}"
        if self.outcome == FAILED:
            return f"last up failed at {when}: {self.reason}" if self.reason else "last up failed"
        return ""


def path(root: Path, slot: int) -> Path:
    return root / STATE_DIR / f"slot-{slot}.up.json"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def write(root: Path, slot: int, outcome: Outcome, reason: str = "") -> None:
    """Record `outcome`; never fails an `up` over its own bookkeeping."""
    record = {"outcome": outcome, "reason": " ".join(reason.split()), "pid": os.getpid()}
    record["at"] = time.time()
    target = path(root, slot)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        # Private: the reason may quote paths and errors of the user's work.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record) + "\n")
        os.chmod(temporary, 0o600)  # an older, wider file of that name keeps its mode
        temporary.replace(target)
    except OSError:
        pass


def read(root: Path | str, slot: int) -> LastUp | None:
    """The record in checkout `root`, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path(Path(root), slot).read_text())
        return LastUp(
            Outcome(str(data["outcome"])), str(data["reason"]), int(data["pid"]), float(data["at"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(root: Path, slot: int) -> None:
    path(root, slot).unlink(missing_ok=True)
