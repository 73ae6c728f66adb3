"""The one error type the host side raises for expected failures.

Only the task layer (`tasks.handled`) turns a `SandboxError` into an exit code, so every
expected failure reaches the user as one line and a distinct status, never a traceback. (The
noxfile runs `inv` and pytest as subprocesses and never sees one.)
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """Exit statuses, distinct per kind of failure so scripts can tell them apart."""

    OK = 0
    FAILED = 1  # a check ran and said no (gate, verify)
    USAGE = 2  # bad input: slot, service, option
    NO_ENGINE = 3  # Docker engine not reachable
    NO_COMPOSE = 4  # no Compose v2 CLI
    BAD_ENV = 5  # env file missing or invalid
    PORT_TAKEN = 6  # a host port of the slot is held by something else
    OTHER_CHECKOUT = 7  # the slot's project runs from another checkout
    LOCKED = 8  # another `inv` holds the slot's lock
    COMMAND = 9  # an external command failed (docker build, compose up, ...)
    SHARED_DIR = 10  # the shared directory cannot be created or read
    OTHER_SOURCE = 11  # the slot runs another app source than the one asked for
    NO_SLOT = 12  # --slot=auto found no free slot (the message says what holds each)
    UNSAVED_WORK = 13  # `inv done`: the worktree holds work that exists nowhere else
    OTHER_LAYOUT = 14  # the slot runs another worker profile / observability than asked for
    NO_SHARED_OBSERVABILITY = 15  # --observability=shared, but the shared stack is not up
    INTERRUPTED = 130  # Ctrl-C: the shell's own code for SIGINT (128 + 2)


class SandboxError(Exception):
    """An expected failure. The message says what is wrong and what to run next."""

    def __init__(self, message: str, code: Exit = Exit.FAILED, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        # Output of a failed command (its last lines), shown above the one-line message.
        self.details = details

    @property
    def message(self) -> str:
        return str(self)
