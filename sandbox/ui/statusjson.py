"""`inv status --json` and `inv verify --json`: documented, versioned JSON for scripts and agents.

The shapes are described in docs/designs/Sandbox/STATUS_JSON.md and pinned by
tests/unit/test_ui_statusjson.py. Nothing here decides anything about a slot: `document` draws
the `status.SlotStatus` rows that `status.collect` computed (the table of `inv status` draws
the same rows), and `verify_document` the reports of `inv verify`. A change that removes or
retypes a key, or gives a key's value another meaning, bumps VERSION; adding a key does not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from sandbox import lastup, slots, status

SCHEMA = "ktrdr-sandbox/status"
VERIFY_SCHEMA = "ktrdr-sandbox/verify"
VERSION = 1
STATES = status.STATES  # decided by `status.slot_state`, for the table and the JSON alike


def last_up(record: lastup.LastUp | None) -> dict[str, str] | None:
    """The slot's last `inv up` unless it ended ready: what became of it (`LastUp.state`),
    why (as `inv status` words it) and when (UTC); None when it was ready or nothing was
    recorded."""
    reason = status.explain(record)
    if record is None or not reason:
        return None
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.at))
    return {"outcome": record.state, "reason": reason, "at": at}


def _recorded(value: str) -> str | None:
    """A label as the table shows it (`status.one_label`), for JSON: null when absent or the
    containers disagree."""
    return None if value in ("", status.SEVERAL) else value


def slot_entry(row: status.SlotStatus) -> dict[str, Any]:
    """One element of "slots" (see STATUS_JSON.md)."""
    # The documented default when the containers disagree on their layout: what JSON said
    # before the table's "several" existed.
    layout = row.layout or slots.DEFAULT_LAYOUT
    return {
        "slot": row.slot,
        "project": row.project,
        "state": row.state,
        "app": row.source.app,
        "source": row.source.source,
        "branch": row.source.branch,
        "checkout": _recorded(row.checkout),
        "orphaned": row.orphaned,
        "workers": layout.workers,
        "observability": layout.observability,
        "shared_dir": _recorded(row.shared_dir),
        "models_dir": _recorded(row.models_dir),
        "ports": dict(row.ports),
        "urls": dict(row.urls),
        "services": {
            "total": row.services.total,
            "running": row.services.running,
            "healthy": row.services.healthy,
        },
        "volumes": list(row.volumes),
        "last_up": last_up(row.last_up),
        "agent_url": row.agent_url,
    }


def document(rows: Sequence[status.SlotStatus]) -> dict[str, Any]:
    """The `inv status --json` document of `status.collect`'s rows."""
    return {"schema": SCHEMA, "version": VERSION, "slots": [slot_entry(r) for r in rows]}


class CheckLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class ReportLike(Protocol):
    """What `sandbox.verify.VerifyReport` offers (kept structural, so neither module
    imports the other)."""

    @property
    def slot(self) -> int: ...
    @property
    def checks(self) -> Sequence[CheckLike]: ...


def verify_document(reports: Sequence[ReportLike]) -> dict[str, Any]:
    """The `inv verify --json` document: every verified slot's named checks."""
    entries = [
        {
            "slot": r.slot,
            "project": slots.project_name(r.slot),
            "passed": all(c.passed for c in r.checks),
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in r.checks],
        }
        for r in reports
    ]
    return {
        "schema": VERIFY_SCHEMA,
        "version": VERSION,
        "passed": all(e["passed"] for e in entries),
        "slots": entries,
    }


def error_document(schema: str, message: str, code: int) -> dict[str, Any]:
    """What `--json` prints when it cannot answer (the engine unreachable, say), so a script
    always has a document to parse: the schema and version, an `error` member with the one
    line also written to stderr and the exit code, and no slot. STATUS_JSON.md documents it."""
    doc: dict[str, Any] = {"schema": schema, "version": VERSION}
    doc["error"] = {"message": message, "code": code}
    if schema == VERIFY_SCHEMA:
        doc["passed"] = False
    doc["slots"] = []
    return doc


def dumps(doc: Mapping[str, Any]) -> str:
    """The document as printed: indented, keys in the documented order, ASCII-safe."""
    return json.dumps(doc, indent=2)


def collect(
    environ: Mapping[str, str], only_slot: int | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The `inv status --json` document of this engine (`status.collect` with the details:
    volumes, and each source's branch); URLs at the engine's host (DOCKER_HOST, context).
    `root`: this checkout, whose records explain slots that have no container."""
    return document(status.collect(environ, only_slot, root, details=True))
