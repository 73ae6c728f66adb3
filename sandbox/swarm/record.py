"""What this checkout keeps of a slot it deployed on a swarm: the record, the stack file's
directory."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import (
    STATE_DIR,
    slots,
)
from sandbox.swarm.cluster import SWITCH

STACK_DIR = "swarm"


def record_path(root: Path, slot: int) -> Path:
    return root / STATE_DIR / f"slot-{slot}.swarm.json"


@dataclass(frozen=True)
class Record:
    """A slot deployed on a swarm from this checkout: which manager, which registry."""

    slot: int
    manager: str  # DOCKER_HOST of the manager, "" for the current context
    registry: str
    address: str  # the manager's node address

    @property
    def stack(self) -> str:
        return slots.project_name(self.slot)

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` pointed at the manager the slot was deployed through."""
        if not self.manager:
            return dict(environ)
        env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
        return {**env, "DOCKER_HOST": self.manager}


def write_record(root: Path, record: Record) -> Path:
    path = record_path(root, record.slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n")
    return path


def read_record(root: Path, slot: int) -> Record | None:
    try:
        data = json.loads(record_path(root, slot).read_text())
        return Record(
            int(data["slot"]), str(data["manager"]), str(data["registry"]), str(data["address"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_slots(root: Path) -> list[Record]:
    found = [read_record(root, n) for n in slots.SLOTS]
    return [r for r in found if r is not None]


def selected_record(root: Path, slot: int, environ: Mapping[str, str]) -> Record | None:
    """The slot's swarm record, when this checkout deployed it on a swarm; None otherwise
    (or with KTRDR_SWARM=0, which forces the one-engine path)."""
    if environ.get(SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    return read_record(root, slot)


def stack_dir(root: Path, slot: int) -> Path:
    return root / STATE_DIR / STACK_DIR / slots.project_name(slot)


STACK_FILE = "stack.json"


def stack_document(root: Path, slot: int) -> dict[str, Any] | None:
    """The stack file the slot was last deployed with, as data (None: none, or unreadable)."""
    try:
        document = json.loads((stack_dir(root, slot) / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
