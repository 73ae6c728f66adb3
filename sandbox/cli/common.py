"""What every task module shares: the error boundary, the renderer, slot flags, help texts.

Task bodies import the `sandbox` modules they use inside the body: `inv` imports this package
before it runs any task, and `inv status` must not pay for Compose, HTTP or rich (the import
budget in tests/unit/test_cli.py). Imports here at the top are the ones every task needs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.exceptions import Exit as InvokeExit

import sandbox
from sandbox import slots
from sandbox.errors import Exit, SandboxError
from sandbox.settings import GATE_TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

    from invoke.context import Context

    from sandbox import compose
    from sandbox.ui import render

F = TypeVar("F", bound=Callable[..., Any])

# The checkout the tasks act on (tests point it at a checkout of their own).
ROOT: Path = sandbox.ROOT

SLOT_HELP = "slot number, 0-10 (slot 0 uses KTRDR's standard ports)"
SOURCE_HELP = (
    "run the app of this checkout (KTRDR, or a reference app source), mounted read-only with "
    "hot reload; default: the reference app built into its image"
)
TORCH_HELP = (
    "a --source checkout's torch, for its training workers: debian (default: Debian's CPU "
    "build), locked (exactly what its uv.lock pins: CUDA wheels, GBs) or none (a lighter "
    "image that cannot train)"
)
TIMEOUT_HELP = (
    f"seconds the gate waits for readiness (default {GATE_TIMEOUT:.0f}, or KTRDR_GATE_TIMEOUT)"
)
RELOAD_HELP = (
    "which app services of a --source checkout restart on edits: backend (default) or workers "
    "(the workers too; each reloader costs CPU while the slot idles)"
)
NO_WAIT_HELP = "return after `docker compose up -d`, without the startability gate"
MODELS_HELP = (
    "where the slot's models live: shared (default: the shared directory's models/, seen by "
    "every slot) or slot (its own, under the shared directory's slots/; a `*_latest` model "
    "is then this slot's)"
)
OTHERS_HELP = (
    "act on a database another checkout created (or one older than provenance labels, with "
    "--all): it is replaced or removed, its data lost"
)


@functools.cache
def out() -> render.Renderer:
    """The renderer of stdout, chosen at the first thing shown (plain output loads no rich)."""
    from sandbox.ui import render

    return render.for_stdout()


def handled(body: F) -> F:
    """Turn expected failures into one line and an exit code; Ctrl-C into 130; an OSError
    (permissions, a full disk) into one line as well."""

    @functools.wraps(body)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        from sandbox import shared

        try:
            shared.settle_home(os.environ)
            return body(c, *args, **kwargs)
        except SandboxError as exc:
            if exc.details:
                out().details(exc.details)
            raise InvokeExit(f"error: {exc}", code=int(exc.code)) from None
        except KeyboardInterrupt:
            raise InvokeExit("interrupted", code=130) from None
        except OSError as exc:
            # A file the user's system refused us (permissions, a full disk): one line too.
            raise InvokeExit(f"error: {exc}", code=int(Exit.FAILED)) from None

    return wrapper  # type: ignore[return-value]


def slot_number(value: str | None) -> int:
    """`--slot=N`, required."""
    return slots.parse_slot(slot_choice(value))


def slot_choice(value: str | None) -> str:
    """`--slot=N` (or auto, where a task takes it), required."""
    if value is None:
        raise SandboxError("which slot? pass --slot=N with N from 0 to 10", Exit.USAGE)
    return value


def target(value: str | None) -> compose.Target:
    """The slot `--slot=N` names, with its env file read."""
    from sandbox import compose

    return compose.load_target(ROOT, slot_number(value), os.environ)


def compose_cli(environ: Mapping[str, str]) -> list[str]:
    """The Compose CLI, after making sure an engine answers (its error is the clearer one)."""
    from sandbox import compose, docker

    docker.check_engine(environ)
    return compose.find_compose(environ)


@contextlib.contextmanager
def json_errors(schema: str) -> Iterator[None]:
    """With --json, a failure still prints a document on stdout (its `error` member says
    what stderr says), so a script always parses something; the exit code is unchanged."""
    from sandbox.ui import statusjson

    try:
        yield
    except SandboxError as exc:
        print(statusjson.dumps(statusjson.error_document(schema, str(exc), int(exc.code))))
        if exc.details:  # stdout holds the document and nothing else: the rest to stderr
            sys.stderr.write(exc.details.rstrip("\n") + "\n")
        raise SandboxError(str(exc), exc.code) from None
    except OSError as exc:
        print(statusjson.dumps(statusjson.error_document(schema, str(exc), int(Exit.FAILED))))
        raise


def note(text: str) -> None:
    """A line beside a command's output, on stderr (stdout may be a JSON document)."""
    print(text, file=sys.stderr)


def exit_with(returncode: int) -> InvokeExit:
    """A command's own exit status as the task's (Compose or the command said why)."""
    return InvokeExit(code=returncode if returncode > 0 else int(Exit.COMMAND))
