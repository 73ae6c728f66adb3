"""The one door to the outside: every subprocess the host side starts goes through `run`.

Commands are argument lists, never shell strings; each call gets an explicit environment.
`run` never raises for a non-zero exit unless asked: `run(..., check="what failed")` (or
`check_result(result, message)` on a result in hand) is the one place a failed command becomes a
`SandboxError` carrying the command's last lines. `run` starts every process through
`execute`, and modules call `runner.run`, never an imported copy: tests patch `runner.execute`
alone, and the checking still runs as it does for real.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypedDict, Unpack

from sandbox.errors import Exit, SandboxError

log = logging.getLogger("sandbox.run")

# How many lines of a failed command's output a SandboxError carries for the user to read.
DETAIL_LINES = 20

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
    stdin: Path | None = None,
    check: str | None = None,
    code: Exit = Exit.COMMAND,
    started: Callable[[int], None] | None = None,
) -> Result:
    """Run `cmd` and return its result.

    `env` replaces the inherited environment when given (pass `os.environ` explicitly to keep
    it). With `capture=False` the command shares this terminal (logs --follow, psql).
    `stdin` is a file read as the command's standard input, byte for byte (a tar stream).
    A missing program or a timeout comes back as a failed `Result`, not an exception, unless
    `check` is given: then a failure raises `SandboxError(check, code)` (see `check_result`).
    `started(pid)` is called once the process runs, before it is waited for (with
    `capture=False`): `inv tunnel` records its ssh's pid so a later run can find it.
    """
    options: Options = {"env": env, "capture": capture, "cwd": cwd, "timeout": timeout}
    if started is not None:
        options["started"] = started
    if input_text is not None:
        options["input_text"] = input_text
    if stdin is not None:
        options["stdin"] = stdin
    result = execute(cmd, **options)
    if check is not None:
        check_result(result, check, code)
    return result


def check_result(result: Result, message: str, code: Exit = Exit.COMMAND) -> Result:
    """`result` when it succeeded; else SandboxError(message, code) with its last lines."""
    if not result.ok:
        raise SandboxError(message, code, details=result.tail(DETAIL_LINES))
    return result


class Options(TypedDict, total=False):
    """How `execute` runs a command: `run`'s keyword arguments, without the checking."""

    env: Mapping[str, str] | None
    capture: bool
    cwd: Path | None
    timeout: float | None
    input_text: str | None
    stdin: Path | None
    started: Callable[[int], None]


def execute(cmd: Command, **options: Unpack[Options]) -> Result:
    """The process itself, unchecked (see `run` for the options). Tests replace this."""
    args = tuple(str(part) for part in cmd)
    env, timeout = options.get("env"), options.get("timeout")
    log.debug("run: %s", display(args))
    stdin_path = options.get("stdin")
    started = options.get("started")
    if started is not None:
        return _execute_watched(args, env, options.get("cwd"), timeout, started)
    capture = options.get("capture", True)
    try:
        with contextlib.ExitStack() as stack:
            stdin: IO[bytes] | int | None = None
            if stdin_path:
                stdin = stack.enter_context(stdin_path.open("rb"))
            elif capture and options.get("input_text") is None:
                # A captured command is not the user's: it must not read this process's stdin
                # (under `inv mcp` that is the protocol's channel; `compose exec -T` keeps
                # stdin open and would swallow the client's next message).
                stdin = subprocess.DEVNULL
            proc = subprocess.run(
                args,
                env=dict(env) if env is not None else dict(os.environ),
                cwd=options.get("cwd"),
                capture_output=capture,
                text=True,
                timeout=timeout,
                input=options.get("input_text"),
                stdin=stdin,
                check=False,
            )
    except FileNotFoundError:
        return Result(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(args, 124, "", f"{display(args)}: timed out after {timeout}s")
    return Result(args, proc.returncode, proc.stdout or "", proc.stderr or "")


def _execute_watched(
    args: tuple[str, ...],
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float | None,
    started: Callable[[int], None],
) -> Result:
    """A command on this terminal whose pid `started` learns before it is waited for. Any
    exception here (Ctrl-C) takes the child down with it, as `subprocess.run` would."""
    try:
        proc = subprocess.Popen(
            args, env=dict(env) if env is not None else dict(os.environ), cwd=cwd
        )
    except FileNotFoundError:
        return Result(args, 127, "", f"{args[0]}: command not found")
    with proc:
        try:
            started(proc.pid)
            return Result(args, proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return Result(args, 124, "", f"{display(args)}: timed out after {timeout}s")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
