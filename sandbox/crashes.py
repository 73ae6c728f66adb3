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

# The child's death, as each reloader writes it: multiprocessing's line before the traceback
# of a child that raised (uvicorn --reload), ours, and uvicorn's own two exits of a child that
# could not load the app or whose start-up failed (`sys.exit(3)`: no traceback from
# multiprocessing then). The last two carry a log prefix: searched, not matched.
_DEATH = re.compile(
    r"^Process (Spawn|Fork|Forkserver)Process-\d+:$"
    r"|^reloader: .* exited with status -?\d+"
    r"|Application startup failed\. Exiting\."
    r"|Error loading ASGI app"
)
# A new child after the death: an edit restarted it (it may die again; then a later death),
# or the container was started again (its log keeps the old lines).
_RESTART = re.compile(
    r"(Started server process|Application startup complete|reloader: .*restarting"
    r"|reloader: watching .*; started)"
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
    lines (stdout for some log configurations). Timestamps are dropped; lines without one
    sort after every stamped line."""
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
    """The crash the log ends in, or None: a death mark followed by nothing but its
    traceback. Anything the app logged after it (a request served, a restart) means the app
    lives: a process of its own that died (the app's multiprocessing) is not the app."""
    deaths = [i for i, line in enumerate(lines) if _DEATH.search(line)]
    if not deaths:
        return None
    last = deaths[-1]
    rest = lines[last + 1 :]
    if any(_RESTART.search(line) for line in rest):
        return None
    after = _traceback(rest)
    if after is not None:  # uvicorn: the traceback follows the mark
        return after if _ends_the_log(rest) else None
    if any(line.strip() for line in rest):
        return None
    # Ours: the child printed its traceback before the reloader's line.
    before = _traceback(lines[:last], from_end=True)
    return before or Crash("", _one_line(lines[last]))


def last_error(lines: list[str]) -> Crash | None:
    """What a process that exited said last: the traceback that ends its log, else its last
    line (`Error loading ASGI app...`, a message of its own); None for an empty log. A
    traceback it logged and went on from is not its last word."""
    text = [line for line in lines if line.strip()]
    if not text:
        return None
    crash = _traceback(lines, from_end=True)
    if crash is not None and _ends_the_log(_from_last_traceback(lines)):
        return crash
    return Crash("", _one_line(text[-1]))


def _from_last_traceback(lines: list[str]) -> list[str]:
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    return lines[starts[-1] :] if starts else []


def _ends_the_log(lines: list[str]) -> bool:
    """`lines` hold one traceback and nothing after its exception line (blank lines aside)."""
    closing = None
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent") or not line.strip():
            continue
        if _FRAME.match(line) or line.startswith((" ", "\t")):
            continue
        if _EXCEPTION.match(line.split(": ", 1)[0]):
            closing = index
            break
    if closing is None:
        return False
    return not any(line.strip() for line in lines[closing + 1 :])


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
