"""`inv` in this process: the real Invoke program (parsing, the tasks, their error boundary
`sandbox.cli.common.handled`, the printing of an exit's message), without the interpreter
start a subprocess costs per case.

The route from an exception to a process's exit code and stderr is checked once per route
through a real process (test_cli); every input case runs here. The `inv` fixture
(conftest.py) gives each test HOME and locks of its own and an engine that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from invoke.collection import Collection
from invoke.program import Program

import tasks
from sandbox import runner
from sandbox.cli import common

NO_ENGINE = "unix:///nonexistent-ktrdr-sandbox.sock"


@dataclass
class Ran:
    """What one in-process `inv` did: its exit code, what it printed, what it tried to run."""

    code: int
    stdout: str
    stderr: str
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """stderr's lines that say something."""
        return [line for line in self.stderr.splitlines() if line.strip()]


class Inv:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.commands: list[tuple[str, ...]] = []

    def recording(self, real: Callable[..., runner.Result]) -> Callable[..., runner.Result]:
        """`runner.execute` that notes each command, then runs it."""

        def execute(cmd: runner.Command, **options: Any) -> runner.Result:
            self.commands.append(tuple(str(part) for part in cmd))
            return real(cmd, **options)

        return execute

    def __call__(self, *args: str) -> Ran:
        common.out.cache_clear()  # the renderer keeps the stdout it was made for
        self.commands = []
        self.capsys.readouterr()
        program = Program(namespace=Collection.from_module(tasks), binary="inv")
        code = 0
        try:
            program.run(["inv", *args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            common.out.cache_clear()
        out, err = self.capsys.readouterr()
        return Ran(code, out, err, list(self.commands))
