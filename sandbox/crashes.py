"""Has an app process died inside a container that keeps running? Read from its log.

A reloader (`uvicorn --reload`, or our own for the reference app) outlives the app process it
runs: when the app raises at import, the container stays "Up (unhealthy)" and nothing about it
exits, so the gate would wait its whole timeout. Both reloaders leave one mark in the log when
their child dies: multiprocessing's `Process SpawnProcess-N:` line right before the child's
traceback (uvicorn), or `reloader: ... exited with status N` (ours). A death mark with no
restart after it means the process is gone until someone edits a file.

Pure functions over log text; the gate reads the logs (`docker logs --timestamps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The child's death, as each reloader writes it.
_DEATH = re.compile(
    r"^(Process (Spawn|Fork|Forkserver)Process-\d+:|reloader: .* exited with status -?\d+)"
)
# A new child after the death: an edit restarted it (it may die again; then a later death).
_RESTART = re.compile(
    r"(Started server process|Application startup complete|reloader: .*restarting)"
)
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (.+)$')
# The exception line closing a traceback: `ModuleNotFoundError: No module named 'x'`.
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)(: .*)?$")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?(.*)$")
MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Crash:
    """An app process that died: its last frame and the exception it died of."""

    frame: str  # `ktrdr/training/worker.py:12 in <module>`; "" when the log has none
    error: str  # `ModuleNotFoundError: No module named 'sklearn'`

    def describe(self) -> str:
        return f"process died: {self.describe_error()}"

    def describe_error(self) -> str:
        where = f" ({self.frame})" if self.frame else ""
        return f"{self.error}{where}"


def merge_streams(stdout: str, stderr: str) -> list[str]:
    """The lines of `docker logs --timestamps` in the order they were written: Docker gives
    the two streams apart, and a traceback (stderr) must be read against the app's own log
    lines (stdout for some log configurations). Timestamps are dropped; a line without one
    sorts after the others of its stream."""
    stamped: list[tuple[tuple[str, str], int, str]] = []
    for order, line in enumerate([*stdout.splitlines(), *stderr.splitlines()]):
        match = _STAMP.match(line)
        if match is None:
            stamped.append((("9", ""), order, line))
            continue
        seconds, fraction, _zone, text = match.groups()
        stamped.append(((seconds, (fraction or "").ljust(9, "0")), order, text))
    return [text for _key, _order, text in sorted(stamped)]


def find_crash(lines: list[str]) -> Crash | None:
    """The crash the log ends in, or None: a death mark with no restart after it."""
    deaths = [i for i, line in enumerate(lines) if _DEATH.match(line)]
    if not deaths:
        return None
    last = deaths[-1]
    if any(_RESTART.search(line) for line in lines[last + 1 :]):
        return None
    # uvicorn: the traceback follows the mark; ours: it precedes it (the child printed it).
    after = _traceback(lines[last + 1 :])
    crash = after if after is not None else _traceback(lines[: last + 1], from_end=True)
    return crash or Crash("", _one_line(lines[last]))


def last_error(lines: list[str]) -> Crash | None:
    """The last traceback of a log (a process that exited: its last words), or None."""
    return _traceback(lines, from_end=True)


def _traceback(lines: list[str], from_end: bool = False) -> Crash | None:
    """The first (or last) traceback in `lines`: its last frame and its exception line."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return None
    start = starts[-1] if from_end else starts[0]
    frame = ""
    for line in lines[start + 1 :]:
        found = _FRAME.match(line)
        if found is not None:
            path, number, function = found.groups()
            frame = f"{_short_path(path)}:{number} in {function}"
            continue
        if line.startswith((" ", "\t")) or not line.strip():
            continue  # the source line of a frame, a caret line
        if _EXCEPTION.match(line.split(": ", 1)[0]):
            return Crash(frame, _one_line(line))
    return None


def _short_path(path: str) -> str:
    """A frame's path from the app's top (`/app/ktrdr/x.py` -> `ktrdr/x.py`)."""
    return path.removeprefix("/app/") if path.startswith("/app/") else path


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MESSAGE_CHARS else flat[: MESSAGE_CHARS - 3] + "..."
