"""`inv status`: every slot that has containers, from one `docker ps` for the whole engine.

`summarize` is pure (tested on fabricated containers); `collect` adds the one Docker call.
`slot_state` is the one rule for a slot's state: the table here and `inv status --json`
(sandbox/ui/statusjson.py) both call it, so they cannot disagree (a test runs every state
through both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import COMPOSE_FILE, docker, engine, lastup, net, slots
from sandbox.settings import ENGINE_ANSWER_TIMEOUT

BACKEND_PORT = 8000  # the backend's port inside its container (KTRDR's contract)
SEVERAL = "several"
# A slot's states, in the order they are decided: the first that applies wins.
STATES = ("running", "partial", "stopped", "failed", "orphaned")
# Exit codes of a container stopped on purpose (clean exit, SIGINT, SIGKILL, SIGTERM): a slot
# of such containers is stopped, not failed.
STOPPED_CODES = frozenset({0, 130, 137, 143})
# How a slot's torch choice reads in the table: training needs torch, the rest does not.
TORCH_SHOWN = {"none": "no torch", "debian": "Debian torch, CPU", "locked": "locked torch"}


@dataclass(frozen=True)
class SlotStatus:
    slot: int
    project: str
    state: str  # one of STATES (`slot_state`)
    healthy: int
    total: int
    api_url: str | None
    checkout: str  # the checkout the containers were started from; "several" if they disagree
    source: str = ""  # what the app runs: "reference (built in)", "ktrdr: /path", ...
    workers: str = slots.DEFAULT_WORKERS  # the worker profile; "several" if they disagree
    observability: str = slots.DEFAULT_OBSERVABILITY  # own or shared; "several" likewise
    orphaned: bool = False  # its checkout or its source is gone (deleted, or moved away)
    last_up: str = ""  # the slot's last `inv up` unless it ended ready ("" when it did)
    shared_dir: str = ""  # the shared directory its containers mount; "" when not recorded
    models_dir: str = ""  # where its models live; "" when not recorded
    gone: str = ""  # the directory that is gone when orphaned: the source, else the checkout


def _healthy(container: docker.Container) -> bool:
    # A running container without a healthcheck counts: nothing says it is unwell.
    return container.health == "healthy" or (container.running and container.health == "none")


def _api_url(containers: Sequence[docker.Container], where: engine.Engine) -> str | None:
    backend = [c for c in containers if c.service == "backend"]
    bind = net.published_bind(backend)
    ports = [
        p.host_port
        for c in backend
        for p in c.ports
        if c.running and p.container_port == BACKEND_PORT and p.host_ip == bind
    ]
    if bind is None or not ports:
        return None
    return net.service_urls(bind, lambda _: ports[0], where)["backend"]


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


def gone_directory(containers: Sequence[docker.Container]) -> str:
    """The directory whose loss orphans the slot: its `--source` checkout when that is gone,
    else the ktrdr-sandbox checkout that started it when that is; "" when neither is."""
    sources = sorted({c.source for c in containers if c.source})
    moved = next((s for s in sources if source_gone(s)), "")
    checkout = _checkout(containers)
    return moved or (checkout if checkout_gone(checkout) else "")


def orphaned(containers: Sequence[docker.Container]) -> bool:
    """The slot's checkout or its source is gone: one rule for the table and the JSON."""
    return bool(gone_directory(containers))


def _exit_code(container: docker.Container) -> int | None:
    match = re.match(r"Exited \((-?\d+)\)", container.status)
    return int(match.group(1)) if match else None


def container_failed(container: docker.Container) -> bool:
    """Dead, restarting, unhealthy, or exited with a code other than STOPPED_CODES."""
    if container.state in ("dead", "restarting") or container.health == "unhealthy":
        return True
    code = _exit_code(container)
    return container.state == "exited" and code is not None and code not in STOPPED_CODES


def slot_state(
    containers: Sequence[docker.Container], orphaned: bool, record: lastup.LastUp | None = None
) -> str:
    """The one rule for a slot's state, one of STATES (STATUS_JSON.md has the table): orphaned
    first (the user must act), then failed (a container, or a last `inv up` that did not
    finish: `record`), then how much of the slot's layout runs. An `inv up` at work is not a
    failure: the state says what runs, `last_up` that a start is under way."""
    if orphaned:
        return "orphaned"
    unfinished = record is not None and not record.finished
    if unfinished or any(container_failed(c) for c in containers):
        return "failed"
    running = [c for c in containers if c.running]
    if not running:
        return "stopped"
    layout = layout_of(containers)
    expected = set(layout.services if layout else slots.SERVICES)
    if len(running) == len(containers) and {c.service for c in running} >= expected:
        return "running"
    return "partial"


def explain(record: lastup.LastUp | None) -> str:
    """The slot's last `inv up` in words, unless it ended ready: "" then, or with no record.
    (`statusjson.last_up` gives JSON the same record, with the same words.)"""
    if record is None or record.outcome == lastup.READY:
        return ""
    return record.explain()


def record_of(checkout: str, slot: int) -> lastup.LastUp | None:
    """How the slot's last `inv up` ended, as the checkout that started it recorded it."""
    if not checkout or checkout == SEVERAL:
        return None
    return lastup.read(checkout, slot)


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
        layout = layout_of(group)
        # A stack is its layout's services (nine for the full one, with its own observability):
        # one that has no container at all still counts in the total.
        expected = set(layout.services if layout else slots.SERVICES)
        services = expected | {c.service for c in group}
        checkout = _checkout(group)
        record = record_of(checkout, slot)
        gone = gone_directory(group)
        rows.append(
            SlotStatus(
                slot=slot,
                project=slots.project_name(slot),
                state=slot_state(group, bool(gone), record),
                healthy=sum(_healthy(c) for c in group),
                total=max(len(group), len(services)),
                api_url=_api_url(group, where),
                checkout=checkout,
                source=_source(group),
                workers=layout.workers if layout else SEVERAL,
                observability=layout.observability if layout else SEVERAL,
                orphaned=bool(gone),
                last_up=explain(record),
                shared_dir=one_label({c.shared for c in group}),
                models_dir=one_label({c.models for c in group}),
                gone=gone,
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
    """Slots of checkout `root` whose last `up` did not end ready and has no container (a
    build that failed, or is still at work): no `docker ps` row shows them, their record does.
    `inv status --json` lists the same slots."""
    shown = {row.slot for row in rows}
    found = []
    for slot in slots.SLOTS if only_slot is None else (only_slot,):
        record = None if slot in shown else record_of(str(root), slot)
        why = explain(record)
        if why:
            found.append(
                SlotStatus(
                    slot=slot,
                    project=slots.project_name(slot),
                    state=slot_state([], False, record),
                    healthy=0,
                    total=len(slots.SERVICES),
                    api_url=None,
                    checkout=str(root),
                    last_up=why,
                )
            )
    return found
