"""The one door to the outside: every subprocess the host side starts goes through `run`.

Commands are argument lists, never shell strings; each call gets an explicit environment.
Checking the result is the caller's step: `run` never raises for a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sandbox.run")

Command = Sequence[str | Path]


@dataclass(frozen=True)
class Result:
    """What a finished command left behind."""

    args: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 20) -> str:
        """The last lines of what the command said, stderr first, for error messages."""
        text = (self.stderr.strip() + "\n" + self.stdout.strip()).strip()
        return "\n".join(text.splitlines()[-lines:])


def display(cmd: Command) -> str:
    """A command as a user could paste it into a shell."""
    return shlex.join(str(part) for part in cmd)


def run(
    cmd: Command,
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    cwd: Path | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
) -> Result:
    """Run `cmd` and return its result.

    `env` replaces the inherited environment when given (pass `os.environ` explicitly to keep
    it). With `capture=False` the command shares this terminal (logs --follow, psql).
    A missing program or a timeout comes back as a failed `Result`, not an exception.
    """
    args = tuple(str(part) for part in cmd)
    log.debug("run: %s", display(args))
    try:
        proc = subprocess.run(
            args,
            env=dict(env) if env is not None else dict(os.environ),
            cwd=cwd,
            capture_output=capture,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except FileNotFoundError:
        return Result(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(args, 124, "", f"{display(args)}: timed out after {timeout}s")
    return Result(args, proc.returncode, proc.stdout or "", proc.stderr or "")
