"""`inv status`: every slot that has containers, from one `docker ps` for the whole engine.

`summarize` is pure (tested on fabricated containers); `collect` adds the one Docker call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import COMPOSE_FILE, docker, engine, lastup, slots
from sandbox.settings import ENGINE_ANSWER_TIMEOUT

BACKEND_PORT = 8000  # the backend's port inside its container (KTRDR's contract)
SEVERAL = "several"
# How a slot's torch choice reads in the table: training needs torch, the rest does not.
TORCH_SHOWN = {"none": "no torch", "debian": "Debian torch, CPU", "locked": "locked torch"}


@dataclass(frozen=True)
class SlotStatus:
    slot: int
    project: str
    state: str  # "running" | "partial" | "stopped"
    healthy: int
    total: int
    api_url: str | None
    checkout: str  # the checkout the containers were started from; "several" if they disagree
    source: str = ""  # what the app runs: "reference (built in)", "ktrdr: /path", ...
    workers: str = slots.DEFAULT_WORKERS  # the worker profile; "several" if they disagree
    observability: str = slots.DEFAULT_OBSERVABILITY  # own or shared; "several" likewise
    orphaned: bool = False  # its checkout is gone (deleted, or moved away)
    last_up: str = ""  # why the slot's last `inv up` did not finish ("" when it did)
    shared_dir: str = ""  # the shared directory its containers mount; "" when not recorded
    models_dir: str = ""  # where its models live; "" when not recorded


def _healthy(container: docker.Container) -> bool:
    # A running container without a healthcheck counts: nothing says it is unwell.
    return container.health == "healthy" or (container.running and container.health == "none")


def _api_url(containers: Sequence[docker.Container], where: engine.Engine) -> str | None:
    ports = [
        port
        for c in containers
        if c.service == "backend" and c.running
        for port in c.ports
        if port.container_port == BACKEND_PORT and port.protocol == "tcp"
    ]
    if not ports:
        return None
    # Prefer an IPv4 binding: Docker lists a wildcard bind twice, 0.0.0.0 and [::].
    port = sorted(ports, key=lambda p: ":" in p.host_ip)[0]
    return f"http://{engine.connect_url_host(where, port.host_ip)}:{port.host_port}/api/v1"


def one_label(values: set[str]) -> str:
    """The value every container of a slot records; "several" when they differ, "" for none."""
    values.discard("")
    if len(values) > 1:
        return SEVERAL
    return next(iter(values), "")


def _checkout(containers: Sequence[docker.Container]) -> str:
    dirs = {c.working_dir for c in containers if c.working_dir}
    if len(dirs) > 1:
        return SEVERAL
    return next(iter(dirs), "")


def _source(containers: Sequence[docker.Container]) -> str:
    """The app a slot runs, as `inv up --source` recorded it on the containers."""
    found = {(c.app or "reference", c.source, c.torch) for c in containers}
    if len(found) > 1:
        return SEVERAL
    app, source, torch = next(iter(found), ("reference", "", ""))
    shown = f"{app}: {source}" if source else f"{app} (built in)"
    return f"{shown} ({TORCH_SHOWN.get(torch, torch)})" if torch else shown


def checkout_gone(checkout: str) -> bool:
    """The checkout the containers name has no compose file any more (gone, or moved)."""
    if not checkout or checkout == SEVERAL:
        return False
    return not (Path(checkout) / COMPOSE_FILE).is_file()


def source_gone(source: str) -> bool:
    """The app checkout the slot runs (`--source`) is gone, or moved."""
    return bool(source) and not Path(source).is_dir()


def orphaned(containers: Sequence[docker.Container]) -> bool:
    """The slot's checkout or its source is gone: one rule for the table and the JSON."""
    sources = {c.source for c in containers if c.source}
    return checkout_gone(_checkout(containers)) or any(source_gone(s) for s in sources)


def _unfinished_up(checkout: str, slot: int) -> str:
    """Why the slot's last `inv up` did not finish, as that checkout recorded it; ""."""
    if not checkout or checkout == SEVERAL:
        return ""
    record = lastup.read(checkout, slot)
    return "" if record is None or record.finished else record.explain()


def layout_of(containers: Sequence[docker.Container]) -> slots.Layout | None:
    """The layout one `up` recorded on a slot's containers; None when they disagree."""
    found = {c.layout for c in containers}
    if len(found) > 1:
        return None
    return next(iter(found), slots.DEFAULT_LAYOUT)


def summarize(
    containers: Sequence[docker.Container],
    only_slot: int | None = None,
    where: engine.Engine = engine.LOCAL,
) -> list[SlotStatus]:
    """One row per sandbox slot that has containers, by slot number; other projects ignored.
    API URLs reach the engine `where` (see `engine.connect_url_host`)."""
    by_slot: dict[int, list[docker.Container]] = {}
    for container in containers:
        slot = container.slot
        if slot is None or (only_slot is not None and slot != only_slot):
            continue
        by_slot.setdefault(slot, []).append(container)
    rows = []
    for slot in sorted(by_slot):
        group = by_slot[slot]
        running = sum(c.running for c in group)
        layout = layout_of(group)
        # A stack is its layout's services (nine for the full one, with its own observability):
        # one that has no container at all makes it partial.
        expected = set(layout.services if layout else slots.SERVICES)
        services = expected | {c.service for c in group}
        if running == 0:
            state = "stopped"
        elif layout and running == len(group) and {c.service for c in group} >= expected:
            state = "running"
        else:
            state = "partial"
        checkout = _checkout(group)
        why = _unfinished_up(checkout, slot)
        rows.append(
            SlotStatus(
                slot=slot,
                project=slots.project_name(slot),
                state="failed" if why else state,
                healthy=sum(_healthy(c) for c in group),
                total=max(len(group), len(services)),
                api_url=_api_url(group, where),
                checkout=checkout,
                source=_source(group),
                workers=layout.workers if layout else SEVERAL,
                observability=layout.observability if layout else SEVERAL,
                orphaned=orphaned(group),
                last_up=why,
                shared_dir=one_label({c.shared for c in group}),
                models_dir=one_label({c.models for c in group}),
            )
        )
    return rows


def collect(
    environ: Mapping[str, str], only_slot: int | None = None, root: Path | None = None
) -> list[SlotStatus]:
    """Every slot's status from a single `docker ps` (SandboxError when the engine is down),
    on the engine `environ` names (DOCKER_HOST, else the current context); with `root`, also
    the slots of that checkout whose last start failed before any container existed.

    The `docker ps` is the engine check too: it gets `docker version`'s short timeout, so a
    wedged engine is reported within ENGINE_ANSWER_TIMEOUT without a second call first."""
    found = docker.containers(environ, timeout=ENGINE_ANSWER_TIMEOUT)
    rows = summarize(found, only_slot, engine.detect(environ))
    return rows if root is None else sorted(rows + unstarted(root, rows, only_slot), key=_slot)


def _slot(row: SlotStatus) -> int:
    return row.slot


def unstarted(root: Path, rows: Sequence[SlotStatus], only_slot: int | None) -> list[SlotStatus]:
    """Slots of checkout `root` whose last `up` failed before any container existed (a build
    error, say): no `docker ps` row shows them, their record does."""
    shown = {row.slot for row in rows}
    found = []
    for slot in slots.SLOTS if only_slot is None else (only_slot,):
        why = "" if slot in shown else _unfinished_up(str(root), slot)
        if why:
            found.append(
                SlotStatus(
                    slot=slot,
                    project=slots.project_name(slot),
                    state="failed",
                    healthy=0,
                    total=len(slots.SERVICES),
                    api_url=None,
                    checkout=str(root),
                    last_up=why,
                )
            )
    return found
