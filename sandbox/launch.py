"""What `inv up` and the MCP server's `up` tool share before the stack starts: the options read
into what to run (the app source and the layout), and the slot named or claimed.

Each caller then starts the stack its own way (the task draws progress, the tool reports it),
inside `chosen_slot`, so a claimed slot stays locked until its start is over.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox import apps, compose, picker, slots


@dataclass(frozen=True)
class Launch:
    """What to run in a slot: the app (with its torch and models) and the services."""

    source: apps.Source
    layout: slots.Layout


def read_options(
    source: str | None,
    torch: str | None,
    models: str,
    workers: str | None,
    observability: str | None,
) -> Launch:
    """`--source`, `--torch`, `--models`, `--workers`, `--observability`, each checked (USAGE
    in one line); "" (an unset variable) is refused as a source, not read as none."""
    layout = slots.parse_layout(workers, observability)
    chosen = apps.from_flag(source, torch)
    return Launch(dataclasses.replace(chosen, models=apps.check_models(models)), layout)


@dataclass(frozen=True)
class Chosen:
    """The slot a start goes to."""

    target: compose.Target
    claimed: bool  # picked as the lowest free slot (no containers, no volume)


@contextlib.contextmanager
def chosen_slot(
    root: Path, environ: Mapping[str, str], slot: str, say: Callable[[str], None]
) -> Iterator[Chosen]:
    """`slot`: a number, used as it is (preflight decides whether it can start), or auto: the
    lowest free slot from 1, claimed under the machine-wide lock and said before anything
    starts; its slot lock is held until the block ends."""
    if slot.strip().lower() != "auto":
        yield Chosen(compose.load_target(root, slots.parse_slot(slot), environ), claimed=False)
        return
    with picker.claim_slot(environ, None, picker.Claim(on_busy=say)) as number:
        say(f"slot {number}: the lowest free slot (--slot=auto)")
        yield Chosen(compose.load_target(root, number, environ), claimed=True)
