"""The marker of a restore in progress: `slot-N.restoring` next to the slot locks.

A restore writes it before its first change on the server and removes it once the server is
settled (sandbox/snapshots.py). One left behind means that restore was interrupted (Ctrl-C
that could not finish, kill -9, a lost engine); `inv up` and `inv status` look for it with one
directory listing, no engine call, and only then ask the server what to put right. Its own
module so that `inv status` does not load the snapshot code to look.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sandbox import lock, slots

MARKER = "slot-{slot}.restoring"


def path(environ: Mapping[str, str], slot: int) -> Path:
    return lock.default_lock_dir(environ) / MARKER.format(slot=slot)


def interrupted_slots(environ: Mapping[str, str]) -> list[int]:
    """Slots whose restore was interrupted (or is running now: the slot lock tells)."""
    directory = lock.default_lock_dir(environ)
    return [s for s in slots.SLOTS if (directory / MARKER.format(slot=s)).exists()]


def mark(environ: Mapping[str, str], slot: int) -> Path:
    """Write the marker (private: 0600 in a 0700 directory), holding our pid."""
    marker = path(environ, slot)
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    return marker


def clear(environ: Mapping[str, str], slot: int) -> None:
    path(environ, slot).unlink(missing_ok=True)
