"""The one rule for a step that destroys data (`up --fresh`, `restore`, `clone`, `down --all`).

`--yes` agrees. Without it, a terminal is asked `QUESTION [y/N]` and only y or yes agrees.
With neither, the step is refused in one line (USAGE) that names `--yes`: a script never
waits on a prompt nobody sees, and never gets a silent "no" that looks like a failure of the
step itself. What a "no" on the terminal leaves unchanged is for the caller to say.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sandbox.errors import Exit, SandboxError


def confirm(
    question: str,
    yes: bool,
    refusal: str,
    *,
    interactive: bool | None = None,
    ask: Callable[[str], str] = input,
) -> bool:
    """Whether to go on. `refusal`: the one line when there is neither --yes nor a terminal
    (it says to re-run with --yes). `interactive`: whether stdin is a terminal (default: ask
    the process's stdin); `ask`: reads the answer (tests pass their own)."""
    if yes:
        return True
    if not (sys.stdin.isatty() if interactive is None else interactive):
        raise SandboxError(refusal, Exit.USAGE)
    return ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")
