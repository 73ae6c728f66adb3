"""`inv status` of the slots this checkout deployed on a swarm: one row per service."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import (
    ROOT,
)
from sandbox.swarm import stackfile
from sandbox.swarm.cluster import LIVE_STATES, nodes, tasks
from sandbox.swarm.record import Record, recorded_slots, stack_document


@dataclass(frozen=True)
class ServiceRow:
    service: str
    node: str
    address: str
    state: str
    ports: tuple[int, ...]
    error: str = ""


@dataclass(frozen=True)
class SlotRows:
    slot: int
    stack: str
    rows: tuple[ServiceRow, ...]

    @property
    def up(self) -> bool:
        return bool(self.rows) and all(r.state in LIVE_STATES for r in self.rows)

    def document(self) -> dict[str, Any]:
        """The slot in `inv status --json` on a swarm."""
        return {
            "slot": self.slot,
            "backend": "swarm",
            "stack": self.stack,
            "up": self.up,
            "services": [dataclasses.asdict(r) for r in self.rows],
            "nodes": sorted({r.node for r in self.rows if r.node}),
        }


def deployed_ports(root: Path, slot: int) -> dict[str, tuple[int, ...]]:
    """Service -> the ports the slot's stack file publishes ({} when there is none)."""
    try:
        rendered = stackfile.Rendered(stack_document(root, slot) or {})
        by_service: dict[str, tuple[int, ...]] = {}
        for port, service in stackfile.published(rendered).items():
            by_service[service] = (*by_service.get(service, ()), port)
        return by_service
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def slot_rows(record: Record, environ: Mapping[str, str], root: Path = ROOT) -> SlotRows:
    env = record.env(environ)
    found = tasks(record.stack, env)
    known = nodes(env) if found else {}
    ports = deployed_ports(root, record.slot)
    rows = tuple(
        ServiceRow(
            t.service,
            t.node,
            known[t.node].address if t.node in known else "",
            t.state,
            t.ports or ports.get(t.service, ()),
            t.error,
        )
        for t in sorted(found.values(), key=lambda t: t.service)
    )
    return SlotRows(record.slot, record.stack, rows)


def status(root: Path, environ: Mapping[str, str], only: int | None = None) -> list[SlotRows]:
    return [
        slot_rows(r, environ, root) for r in recorded_slots(root) if only is None or r.slot == only
    ]
