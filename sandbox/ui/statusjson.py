"""`inv status --json` and `inv verify --json`: documented, versioned JSON for scripts and agents.

The shapes are described in docs/designs/Sandbox/STATUS_JSON.md and pinned by
tests/unit/test_statusjson.py. `document` and `verify_document` are pure: they take the
containers from one `docker ps` and, per slot, what the labels and the filesystem say about its
source (`SlotSource`); `describe_source` and `slot_sources` are the thin part that looks at the
filesystem and at git. A change that removes or retypes a key bumps VERSION; adding a key does not.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sandbox import docker, engine, lastup, net, picker, slots, status
from sandbox.branches import worktrees
from sandbox.settings import ENGINE_ANSWER_TIMEOUT

SCHEMA = "ktrdr-sandbox/status"
VERIFY_SCHEMA = "ktrdr-sandbox/verify"
VERSION = 1
STATES = status.STATES  # decided by `status.slot_state`, for the table and the JSON alike
DEFAULT_HOST = "127.0.0.1"
WILDCARD_ADDRS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True)
class SlotSource:
    """Where a slot's code comes from: the `ktrdr.sandbox.*` labels, the branch checked out
    there, and whether the source and the Compose working dir still exist."""

    source: str | None = None  # the app checkout the slot runs (label ktrdr.sandbox.source)
    app: str | None = None  # the kind of app (label ktrdr.sandbox.app)
    branch: str | None = None  # git branch of `source`; None when detached or not a checkout
    source_exists: bool = True
    checkout_exists: bool = True


# ----------------------------------------------------------------------------- pure parts


def _healthy(container: docker.Container) -> bool:
    # A running container without a healthcheck counts: nothing says it is unwell.
    return container.health == "healthy" or (container.running and container.health == "none")


def last_up(record: lastup.LastUp | None) -> dict[str, str] | None:
    """The slot's last `inv up` unless it ended ready: what became of it (`LastUp.state`),
    why (as `inv status` words it) and when (UTC); None when it was ready or nothing was
    recorded."""
    reason = status.explain(record)
    if record is None or not reason:
        return None
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.at))
    return {"outcome": record.state, "reason": reason, "at": at}


def _published(
    containers: Sequence[docker.Container], spec: slots.PortSpec, slot: int
) -> list[docker.PublishedPort]:
    inner = spec.container_port if spec.container_port is not None else spec.host_port(slot)
    return [
        port
        for c in containers
        if c.service == spec.service
        for port in c.ports
        if port.container_port == inner and port.protocol == "tcp"
    ]


def ports_and_bind(containers: Sequence[docker.Container], slot: int) -> tuple[dict[str, int], str]:
    """Host port by variable (what the containers publish, else the slot scheme's port), and
    the address they are published on (`net.published_bind`, else 127.0.0.1)."""
    bind = net.published_bind(containers) or DEFAULT_HOST
    found: dict[str, int] = {}
    for spec in slots.PORTS:
        published = [p for p in _published(containers, spec, slot) if p.host_ip == bind]
        found[spec.variable] = published[0].host_port if published else spec.host_port(slot)
    return found, bind


def _checkout(containers: Sequence[docker.Container]) -> str | None:
    dirs = {c.working_dir for c in containers if c.working_dir}
    return next(iter(dirs)) if len(dirs) == 1 else None


def slot_entry(
    slot: int,
    containers: Sequence[docker.Container],
    source: SlotSource,
    volumes: Sequence[str] = (),
    where: engine.Engine = engine.LOCAL,
    record: lastup.LastUp | None = None,
) -> dict[str, Any]:
    """One element of "slots" (see STATUS_JSON.md); `record`: how its last `up` ended."""
    orphaned = not (source.source_exists and source.checkout_exists)
    last = last_up(record)
    ports, bind = ports_and_bind(containers, slot)
    layouts = {c.layout for c in containers}
    layout = layouts.pop() if len(layouts) == 1 else slots.DEFAULT_LAYOUT
    services = set(layout.services) | {c.service for c in containers}
    return {
        "slot": slot,
        "project": slots.project_name(slot),
        "state": status.slot_state(containers, orphaned, record),
        "app": source.app,
        "source": source.source,
        "branch": source.branch,
        "checkout": _checkout(containers),
        "orphaned": orphaned,
        "workers": layout.workers,
        "observability": layout.observability,
        "shared_dir": _recorded(status.one_label({c.shared for c in containers})),
        "models_dir": _recorded(status.one_label({c.models for c in containers})),
        "ports": ports,
        "urls": net.service_urls(bind, ports.__getitem__, where),
        "services": {
            "total": max(len(containers), len(services)),
            "running": sum(c.running for c in containers),
            "healthy": sum(_healthy(c) for c in containers),
        },
        "volumes": sorted(volumes),
        "last_up": last,
        "agent_url": agent_url(containers, slot),
    }


def agent_url(containers: Sequence[docker.Container], slot: int) -> str | None:
    """The API URL for a container started like KTRDR's coding agent (host.docker.internal),
    when the backend is published where the bridge reaches it: a wildcard, or the bridge
    gateway itself (sandbox/reach.py, loaded only for such a binding); else None."""
    api = next(spec for spec in slots.PORTS if spec.variable == "KTRDR_API_PORT")
    published = [p for p in _published(containers, api, slot) if p.host_ip not in LOOPBACK]
    if not published:
        return None
    from sandbox import reach

    where = [p.host_ip for p in published]
    if not any(ip in WILDCARD_ADDRS for ip in where):
        gateway = reach.gateway_or_none(dict(os.environ))
        if gateway not in where:
            return None
    return reach.agent_url(published[0].host_port)


def _recorded(value: str) -> str | None:
    """A label as the table shows it (`status.one_label`), for JSON: null when absent or the
    containers disagree."""
    return None if value in ("", status.SEVERAL) else value


def by_slot(containers: Sequence[docker.Container]) -> dict[int, list[docker.Container]]:
    found: dict[int, list[docker.Container]] = {}
    for container in containers:
        if container.slot is not None:
            found.setdefault(container.slot, []).append(container)
    return found


def document(
    containers: Sequence[docker.Container],
    sources: Mapping[int, SlotSource],
    volumes: Mapping[int, Sequence[str]] | None = None,
    only_slot: int | None = None,
    where: engine.Engine = engine.LOCAL,
    records: Mapping[int, lastup.LastUp] | None = None,
) -> dict[str, Any]:
    """The `inv status --json` document: every slot with a container, a volume or a start
    that did not end ready, by slot.
    `sources` may lack a slot (nothing known about its source); `volumes` maps a slot to its
    volume names (`picker.sandbox_volumes`); `records` a slot to how its last `up` ended;
    URLs reach the engine `where`."""
    groups = by_slot(containers)
    volumes = volumes or {}
    records = records or {}
    unfinished = {n for n, r in records.items() if last_up(r) is not None}
    numbers = sorted(set(groups) | {s for s, names in volumes.items() if names} | unfinished)
    entries = [
        slot_entry(
            n,
            groups.get(n, []),
            sources.get(n, SlotSource()),
            volumes.get(n, ()),
            where,
            records.get(n),
        )
        for n in numbers
        if only_slot is None or n == only_slot
    ]
    return {"schema": SCHEMA, "version": VERSION, "slots": entries}


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


# ----------------------------------------------------------------------------- thin parts


def describe_source(
    source: str | None,
    app: str | None,
    checkout: str | None,
    environ: Mapping[str, str] | None = None,
) -> SlotSource:
    """Look at the filesystem and git: does the source still exist, which branch is there."""
    return SlotSource(
        source=source,
        app=app,
        branch=worktrees.current_branch(Path(source), environ) if source else None,
        source_exists=not status.source_gone(source or ""),
        checkout_exists=not status.checkout_gone(checkout or ""),
    )


def slot_sources(
    containers: Sequence[docker.Container], environ: Mapping[str, str] | None = None
) -> dict[int, SlotSource]:
    """Every slot's source from its containers' `ktrdr.sandbox.*` labels (`Container.source`,
    `.app`): the first container that carries one wins (one `up` labels them all)."""
    found = {}
    for slot, group in by_slot(containers).items():
        source = next((c.source for c in group if c.source), None)
        app = next((c.app for c in group if c.app), None)
        found[slot] = describe_source(source, app, _checkout(group), environ)
    return found


def last_ups(
    containers: Sequence[docker.Container], slot_numbers: Iterable[int], root: Path | None
) -> dict[int, lastup.LastUp]:
    """How each slot's last `up` ended, as the checkout that started it recorded it (a slot
    without containers: as `root`, this checkout, did)."""
    groups = by_slot(containers)
    found = {}
    for slot in slot_numbers:
        group = groups.get(slot, [])
        checkout = _checkout(group) if group else (str(root) if root else None)
        record = lastup.read(checkout, slot) if checkout else None
        if record is not None:
            found[slot] = record
    return found


def collect(
    environ: Mapping[str, str], only_slot: int | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The `inv status --json` document of this engine: one `docker ps`, one `docker volume
    ls`, and git for each source's branch; URLs at the engine's host (DOCKER_HOST, context).
    `root`: this checkout, whose records explain slots that have no container."""
    containers = docker.sandbox_containers(environ, timeout=ENGINE_ANSWER_TIMEOUT)
    volumes = picker.volumes_by_slot(picker.sandbox_volumes(environ))
    sources = slot_sources(containers, environ)
    # A start that failed before anything existed (an image build) is listed too, as in
    # the table.
    records = last_ups(containers, slots.SLOTS, root)
    where = engine.detect(environ)
    return document(containers, sources, volumes, only_slot, where, records)
