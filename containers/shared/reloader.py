"""Hot reload for programs without uvicorn: restart a command when a watched .py file changes.

    python3 -m reloader DIR [DIR ...] -- COMMAND [ARG ...]

Used by the reference app when a slot runs it from a source checkout (`inv up --source=...`):
the checkout is bind-mounted read-only and this process restarts the backend or worker within
about a second of an edit. It polls modification times rather than using inotify: the standard
library has no inotify, and a poll of a few dozen files every half second costs nothing.
SIGTERM and SIGINT are passed on to the command, and this process exits with its status.
Standard library only; copied next to the app in its image, like httpkit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

POLL_SECONDS = 0.5
# A restarted program gets this long to stop on SIGTERM before it is killed.
STOP_SECONDS = 5.0

Snapshot = dict[str, float]


def snapshot(dirs: Sequence[Path]) -> Snapshot:
    """Every .py file under `dirs` with its modification time."""
    found: Snapshot = {}
    for top in dirs:
        for path in top.rglob("*.py"):
            try:
                found[str(path)] = path.stat().st_mtime
            except OSError:
                continue  # removed between listing and stat: the next poll sees it gone
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """Files added, removed or modified between two snapshots."""
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def parse(argv: Sequence[str]) -> tuple[list[Path], list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python3 -m reloader DIR [DIR ...] -- COMMAND [ARG ...]")
    split = list(argv).index("--")
    dirs, command = [Path(d) for d in argv[:split]], list(argv[split + 1 :])
    if not dirs or not command:
        raise SystemExit("usage: python3 -m reloader DIR [DIR ...] -- COMMAND [ARG ...]")
    return dirs, command


def say(message: str) -> None:
    print(f"reloader: {message}", flush=True)


def stop(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def main(argv: Sequence[str]) -> int:
    dirs, command = parse(argv)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    seen = snapshot(dirs)
    child = subprocess.Popen(command)
    say(f"watching {', '.join(map(str, dirs))}; started {' '.join(command)} (pid {child.pid})")
    reported = False
    while not stopping:
        time.sleep(POLL_SECONDS)
        now = snapshot(dirs)
        edits = changed(seen, now)
        seen = now
        if edits:
            say(f"{len(edits)} file(s) changed ({os.path.basename(edits[0])}...): restarting")
            stop(child)
            child = subprocess.Popen(command)
            reported = False
        elif child.poll() is not None and not reported:
            # Crashed: wait for an edit rather than restarting in a loop (as uvicorn does),
            # and say so once: `inv up`'s gate reads this line (sandbox/crashes.py).
            say(f"pid {child.pid} exited with status {child.returncode}: waiting for an edit")
            reported = True
    return stop(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
