"""A slot's status, computed once: `collect` returns one `SlotStatus` per slot, and the views
only draw it: the table of `inv status` (sandbox/ui/render.py) and `inv status --json` (the
documents of sandbox/ui/statusjson.py, which the MCP server returns too). A test renders every
state through both views and compares them.

`summarize` turns one `docker ps` into the model; it reads only small files (each slot's
`up` record, whether its checkouts still exist). `collect` adds the engine call and, for the
views that show them, the slot's volumes and each source's git branch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from sandbox import COMPOSE_FILE, docker, engine, lastup, net, slots
from sandbox.settings import ENGINE_ANSWER_TIMEOUT

SEVERAL = "several"
# A slot's states, in the order `slot_state` decides them: the first that applies wins.
State = Literal["orphaned", "failed", "paused", "stopped", "running", "partial"]
STATES: tuple[State, ...] = get_args(State)
# Exit codes of a container stopped on purpose (clean exit, SIGINT, SIGKILL, SIGTERM): a slot
# of such containers is stopped, not failed.
STOPPED_CODES = frozenset({0, 130, 137, 143})

# `branch_of(source)`: the git branch checked out in an app source; None when there is none.
BranchOf = Callable[[str], str | None]


@dataclass(frozen=True)
class SlotSource:
    """Where a slot's app code comes from (its containers' `ktrdr.sandbox.*` labels) and the
    branch checked out there (None when not asked, detached, not a checkout, or gone)."""

    source: str | None = None  # the app checkout the slot runs (label ktrdr.sandbox.source)
    app: str | None = None  # the kind of app (label ktrdr.sandbox.app)
    branch: str | None = None


@dataclass(frozen=True)
class Services:
    total: int  # services of the slot's layout, more if the project has extra ones
    running: int
    healthy: int  # running and healthy, or running without a healthcheck


@dataclass(frozen=True)
class SlotStatus:
    """Everything `inv status` says of one slot, in either view."""

    slot: int
    state: State  # `slot_state`
    services: Services
    ports: Mapping[str, int]  # host port by variable: what is published, else the slot scheme's
    urls: Mapping[str, str]  # URL by service (`net.service_urls`) at the slot's address
    api_url: str | None  # the backend's URL while a running backend publishes its port
    checkout: str  # the checkout that started the containers; "several", "" when none
    source: SlotSource = SlotSource()
    torch: str = ""  # the torch of the source's image (label ktrdr.sandbox.torch)
    sources_agree: bool = True  # every container runs the same app, source and torch
    layout: slots.Layout | None = slots.DEFAULT_LAYOUT  # None: the containers disagree
    shared_dir: str = ""  # the shared directory its containers mount; "several", "" unknown
    models_dir: str = ""  # where its models live; likewise
    gone: str = ""  # why it is orphaned: the directory that is gone (source, else checkout)
    last_up: lastup.LastUp | None = None  # its last `inv up`, unless that ended ready
    volumes: tuple[str, ...] = ()  # its Docker volumes; () when none or not asked for
    agent_url: str | None = None  # the API root for a container like KTRDR's coding agent

    @property
    def project(self) -> str:
        return slots.project_name(self.slot)

    @property
    def orphaned(self) -> bool:
        return bool(self.gone)

    @property
    def reason(self) -> str:
        """The last `inv up` in words, "" when it ended ready or nothing was recorded."""
        return explain(self.last_up)


# ----------------------------------------------------------------------------- the rules


def healthy(container: docker.Container) -> bool:
    # A running container without a healthcheck counts: nothing says it is unwell.
    return container.health == "healthy" or (container.running and container.health == "none")


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
) -> State:
    """The one rule for a slot's state (STATUS_JSON.md has the table): orphaned first (the
    user must act), then failed (a container dead, restarting, unhealthy or crashed, or a last
    `inv up` that did not finish: `record`), then how much of the slot's layout runs. An
    unhealthy or crashed service fails the slot however much else runs: the slot is not fit
    to work on. An `inv up` at work is not a failure: `last_up` says a start is under way."""
    if orphaned:
        return "orphaned"
    unfinished = record is not None and not record.finished
    if unfinished or any(container_failed(c) for c in containers):
        return "failed"
    # Frozen by `inv pause`: whole, using no CPU; `inv resume` (or `inv up`) thaws it.
    if containers and all(c.state == "paused" for c in containers):
        return "paused"
    running = [c for c in containers if c.running]
    if not running:
        return "stopped"
    layout = layout_of(containers)
    expected = set(layout.services if layout else slots.SERVICES)
    if len(running) == len(containers) and {c.service for c in running} >= expected:
        return "running"
    return "partial"


def checkout_gone(checkout: str) -> bool:
    """The ktrdr-sandbox checkout that started a slot has no compose file any more (deleted,
    or moved away): the one rule, for `inv status` and for `inv up`'s refusal alike."""
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
    checkout = one_label({c.working_dir for c in containers})
    return moved or (checkout if checkout_gone(checkout) else "")


def explain(record: lastup.LastUp | None) -> str:
    """The slot's last `inv up` in words, unless it ended ready: "" then, or with no record."""
    if record is None or record.outcome == lastup.READY:
        return ""
    return record.explain()


# ----------------------------------------------------------------------------- labels


def one_label(values: set[str]) -> str:
    """The value every container of a slot records; "several" when they differ, "" for none."""
    values.discard("")
    if len(values) > 1:
        return SEVERAL
    return next(iter(values), "")


def layout_of(containers: Sequence[docker.Container]) -> slots.Layout | None:
    """The layout one `up` recorded on a slot's containers; None when they disagree."""
    found = {c.layout for c in containers}
    if len(found) > 1:
        return None
    return next(iter(found), slots.DEFAULT_LAYOUT)


def record_of(checkout: str, slot: int) -> lastup.LastUp | None:
    """How the slot's last `inv up` ended, as the checkout that started it recorded it."""
    if not checkout or checkout == SEVERAL:
        return None
    return lastup.read(checkout, slot)


def source_of(containers: Sequence[docker.Container]) -> tuple[SlotSource, str, bool]:
    """The app a slot runs, as `inv up --source` labelled its containers: the first label of
    each kind wins (one `up` labels them all), the torch, and whether they all agree."""
    source = next((c.source for c in containers if c.source), None)
    app = next((c.app for c in containers if c.app), None)
    torch = next((c.torch for c in containers if c.torch), "")
    agree = len({(c.app or "reference", c.source, c.torch) for c in containers}) <= 1
    return SlotSource(source, app), torch, agree


# ----------------------------------------------------------------------------- ports, URLs


def _published(
    containers: Sequence[docker.Container], spec: slots.PortSpec, slot: int
) -> list[docker.PublishedPort]:
    inner = spec.container_port if spec.container_port is not None else spec.host_port(slot)
    return [
        port
        for c in containers
        if c.service == spec.service and c.running
        for port in c.ports
        if port.container_port == inner and port.protocol == "tcp"
    ]


def ports_of(
    containers: Sequence[docker.Container], slot: int
) -> tuple[dict[str, int], set[str], str]:
    """Host port by variable (what running containers publish on the slot's address, else
    the slot scheme's), the variables found published, and that address
    (`net.published_bind`; "" when nothing is published: reached as a wildcard bind is)."""
    bind = net.published_bind(containers) or ""
    found: dict[str, int] = {}
    published: set[str] = set()
    for spec in slots.PORTS:
        bindings = [p for p in _published(containers, spec, slot) if p.host_ip == bind]
        found[spec.variable] = bindings[0].host_port if bindings else spec.host_port(slot)
        if bindings:
            published.add(spec.variable)
    return found, published, bind


def agent_url(containers: Sequence[docker.Container], slot: int) -> str | None:
    """The API URL for a container started like KTRDR's coding agent (host.docker.internal),
    when the backend is published where the bridge reaches it: a wildcard, or the bridge
    gateway itself (sandbox/reach.py, loaded only for such a binding); else None."""
    api = next(spec for spec in slots.PORTS if spec.variable == "KTRDR_API_PORT")
    published = [p for p in _published(containers, api, slot) if not engine.is_loopback(p.host_ip)]
    if not published:
        return None
    from sandbox import reach

    where = [p.host_ip for p in published]
    if not any(engine.is_wildcard(ip) for ip in where):
        gateway = reach.gateway_or_none(dict(os.environ))
        if gateway not in where:
            return None
    return reach.agent_url(published[0].host_port)


# ----------------------------------------------------------------------------- the model


def slot_status(
    slot: int,
    containers: Sequence[docker.Container],
    record: lastup.LastUp | None,
    where: engine.Engine = engine.LOCAL,
    volumes: Sequence[str] = (),
) -> SlotStatus:
    """One slot's status from its containers (maybe none: a volume, or a start that failed
    before any container existed) and how its last `up` ended (`record`)."""
    layout = layout_of(containers)
    # A stack is its layout's services (nine for the full one, with its own observability):
    # one that has no container at all still counts in the total.
    services = set(layout.services if layout else slots.SERVICES) | {c.service for c in containers}
    ports, published, bind = ports_of(containers, slot)
    urls = net.service_urls(bind, ports.__getitem__, where)
    gone = gone_directory(containers)
    source, torch, agree = source_of(containers)
    return SlotStatus(
        slot=slot,
        state=slot_state(containers, bool(gone), record),
        services=Services(
            total=max(len(containers), len(services)),
            running=sum(c.running for c in containers),
            healthy=sum(healthy(c) for c in containers),
        ),
        ports=ports,
        urls=urls,
        api_url=urls["backend"] if "KTRDR_API_PORT" in published else None,
        checkout=one_label({c.working_dir for c in containers}),
        source=source,
        torch=torch,
        sources_agree=agree,
        layout=layout,
        shared_dir=one_label({c.shared for c in containers}),
        models_dir=one_label({c.models for c in containers}),
        gone=gone,
        last_up=record if explain(record) else None,
        volumes=tuple(sorted(volumes)),
        agent_url=agent_url(containers, slot),
    )


def by_slot(containers: Sequence[docker.Container]) -> dict[int, list[docker.Container]]:
    found: dict[int, list[docker.Container]] = {}
    for container in containers:
        if container.slot is not None:
            found.setdefault(container.slot, []).append(container)
    return found


def summarize(
    containers: Sequence[docker.Container],
    only_slot: int | None = None,
    where: engine.Engine = engine.LOCAL,
    root: Path | None = None,
    volumes: Mapping[int, Sequence[str]] | None = None,
) -> list[SlotStatus]:
    """Every sandbox slot with a container, a volume (`volumes`: names by slot), or a last
    `up` from checkout `root` that did not end ready, by slot; other projects ignored. A
    slot's record is read from the checkout that started its containers (`root` for a slot
    without any). URLs reach the engine `where` (see `engine.connect_url_host`)."""
    groups = by_slot(containers)
    volumes = volumes or {}
    numbers = set(groups) | {s for s, names in volumes.items() if names}
    wanted = slots.SLOTS if only_slot is None else (only_slot,)
    rows = []
    for slot in wanted:
        group = groups.get(slot, [])
        checkout = one_label({c.working_dir for c in group}) if group else str(root or "")
        record = record_of(checkout, slot)
        if slot in numbers or explain(record):
            rows.append(slot_status(slot, group, record, where, volumes.get(slot, ())))
    return rows


def with_branches(rows: Sequence[SlotStatus], branch_of: BranchOf) -> list[SlotStatus]:
    """`rows` with the git branch of each slot's source (one `git` call per source)."""
    return [
        _with_branch(row, branch_of(row.source.source)) if row.source.source else row
        for row in rows
    ]


def _with_branch(row: SlotStatus, branch: str | None) -> SlotStatus:
    return replace(row, source=replace(row.source, branch=branch))


def collect(
    environ: Mapping[str, str],
    only_slot: int | None = None,
    root: Path | None = None,
    *,
    details: bool = False,
) -> list[SlotStatus]:
    """Every slot's status from a single `docker ps` (SandboxError when the engine is down),
    on the engine `environ` names (DOCKER_HOST, else the current context); with `root`, also
    the slots of that checkout whose last start failed before any container existed. With
    `details` (`--json`, the MCP server), also the slots' volumes (one `docker volume ls`,
    which lists a slot that has only its database left) and each source's branch (git).

    A container Docker calls unhealthy only because its checks stopped (paused, or thawed and
    not checked again yet) counts as starting (`docker.recheck_unhealthy`, one more call then).

    The `docker ps` is the engine check too: it gets `docker version`'s short timeout, so a
    wedged engine is reported within ENGINE_ANSWER_TIMEOUT without a second call first."""
    found = docker.containers(environ, timeout=ENGINE_ANSWER_TIMEOUT)
    found = docker.recheck_unhealthy(found, environ, timeout=ENGINE_ANSWER_TIMEOUT)
    where = engine.detect(environ)
    if not details:
        return summarize(found, only_slot, where, root)
    # Loaded here only: the table's `inv status` pays for neither (its import budget).
    from sandbox import picker
    from sandbox.branches import worktrees

    volumes = picker.volumes_by_slot(picker.sandbox_volumes(environ))
    rows = summarize(found, only_slot, where, root, volumes)
    return with_branches(rows, lambda path: worktrees.current_branch(Path(path), environ))


def slot_sources(
    containers: Sequence[docker.Container], environ: Mapping[str, str] | None = None
) -> dict[int, SlotSource]:
    """Every slot's source and its branch, from one `docker ps`'s containers (`inv done`)."""
    from sandbox.branches import worktrees

    rows = with_branches(
        summarize(containers), lambda path: worktrees.current_branch(Path(path), environ)
    )
    return {row.slot: row.source for row in rows}
