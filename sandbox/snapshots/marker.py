"""The marker of a restore in progress: `slot-N.restoring` next to the slot locks.

A restore writes it before its first change on the server and removes it once the server is
settled (sandbox/snapshots/database.py). One left behind means that restore was interrupted
(Ctrl-C that could not finish, kill -9, a lost engine); `inv up` and `inv status` look for it
with one directory listing, no engine call, and only then ask the server what to put right. Its
own module so that `inv status` does not load the snapshot code to look.
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


# How far the restore got: the side database is being loaded, or it holds the whole archive.
LOADING = "loading"
LOADED = "loaded"


def mark(environ: Mapping[str, str], slot: int, phase: str = LOADING) -> Path:
    """Write the marker (private: 0600 in a 0700 directory): our pid and the phase, replaced
    whole (a rename), so a reader never sees half of it."""
    marker = path(environ, slot)
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = marker.with_name(f".{marker.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()} {phase}\n")
    os.replace(partial, marker)
    return marker


def loaded(environ: Mapping[str, str], slot: int) -> bool:
    """Whether the side database held the whole archive when the restore stopped. A marker
    without a phase (an older version's) or no marker (an older version's leftovers) counts
    as loaded: those versions only ever left a complete side database alone."""
    try:
        words = path(environ, slot).read_text().split()
    except OSError:
        return True
    return words[1:2] != [LOADING]


def clear(environ: Mapping[str, str], slot: int) -> None:
    path(environ, slot).unlink(missing_ok=True)
