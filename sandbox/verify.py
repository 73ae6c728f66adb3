"""`inv verify`: what makes a running slot a slot (its own healthy stack, database, ports,
shared directory), as named checks.

- `health`: the backend answers `GET /api/v1/health` with 200.
- `own-database`: the slot's db container runs, is no other slot's, and its data volume is
  `<project>_db-data`, mounted by no other slot's db.
- `ports`: every published host port is the one the env file names, and no other project's
  container publishes it too.
- `shared-dir`: a file written into the host's shared data/, models/ and strategies/ is
  visible at /app/data, /app/models and /app/strategies inside the backend and every worker.
  The host is the engine's: on a remote engine the probe file is written there, by a helper
  container (sandbox/remote/enginehost.py), never on this machine.
- `shared-observability` (slots on `--observability=shared` only): the shared Prometheus
  reports the backend and every worker of the slot's profile as an up target.

Each slot is checked against the layout its containers recorded: a light slot's ports and
services are those of its two workers, a shared slot has no Jaeger, Prometheus or Grafana ports.

The comparisons are pure functions over container lists and mounts; `verify` gathers the facts
with one `docker ps` and one `docker inspect` for all slots, plus the probes that must touch
the slot (HTTP, `compose exec`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sandbox import (
    compose,
    docker,
    engine,
    gatechecks,
    net,
    observability,
    pause,
    runner,
    shared,
    slots,
)
from sandbox.errors import SandboxError
from sandbox.remote import enginehost
from sandbox.runner import Result
from sandbox.settings import ENGINE_QUERY_TIMEOUT, VERIFY_EXEC_TIMEOUT, VERIFY_HTTP_TIMEOUT
from sandbox.status import layout_of

SHARED_MOUNTS = tuple(f"/app/{sub}" for sub in shared.SUBDIRS)


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    slot: int
    checks: list[VerifyCheck]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Mount:
    type: str  # volume, bind, tmpfs
    name: str  # the volume's name; empty for binds
    source: str
    destination: str


# ----------------------------------------------------------------------------- pure parts


def inspect_mounts_command(ids: Sequence[str]) -> list[str]:
    # One call for every db container of every slot: the id first, then its mounts as JSON.
    return ["docker", "inspect", "--format", "{{.Id}} {{json .Mounts}}", *ids]


def parse_mounts(output: str) -> dict[str, list[Mount]]:
    """`inspect_mounts_command` output: container id -> its mounts. Garbled lines are skipped."""
    found: dict[str, list[Mount]] = {}
    for line in output.splitlines():
        cid, _, raw = line.strip().partition(" ")
        if not cid or not raw:
            continue
        try:
            items = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(items, list):
            continue
        found[cid] = [
            Mount(
                type=str(m.get("Type", "")),
                name=str(m.get("Name", "")),
                source=str(m.get("Source", "")),
                destination=str(m.get("Destination", "")),
            )
            for m in items
            if isinstance(m, dict)
        ]
    return found


def _mounts_of(mounts: Mapping[str, list[Mount]], cid: str) -> list[Mount] | None:
    # `docker ps --no-trunc` and `docker inspect` both give full ids; accept a prefix anyway.
    if cid in mounts:
        return mounts[cid]
    for key, value in mounts.items():
        if cid and (key.startswith(cid) or cid.startswith(key)):
            return value
    return None


def _volumes(mounts: Sequence[Mount]) -> set[str]:
    return {m.name for m in mounts if m.type == "volume" and m.name}


def check_health(status: int | None, body: str) -> VerifyCheck:
    outcome = gatechecks.http_outcome(status, body)
    return VerifyCheck("health", outcome.passed, outcome.detail)


def check_own_database(
    slot: int, containers: Sequence[docker.Container], mounts: Mapping[str, list[Mount]]
) -> VerifyCheck:
    """The slot's db container runs, is its own, and its volume is mounted by no other slot."""
    name = "own-database"
    project = slots.project_name(slot)
    ours = [c for c in containers if c.project == project and c.service == "db"]
    others = [c for c in containers if c.slot not in (None, slot) and c.service == "db"]
    if not ours:
        return VerifyCheck(name, False, f"no db container: run `inv up --slot={slot}`")
    db = ours[0]
    if not db.running:
        return VerifyCheck(name, False, f"db container {db.id[:12]} is {db.state}, not running")
    own_mounts = _mounts_of(mounts, db.id)
    if own_mounts is None:
        return VerifyCheck(name, False, f"could not inspect db container {db.id[:12]}")
    expected = slots.db_volume(project)
    volumes = _volumes(own_mounts)
    if expected not in volumes:
        seen = ", ".join(sorted(volumes)) or "no named volume"
        return VerifyCheck(name, False, f"data volume should be {expected}; mounts {seen}")
    sharing = sorted(
        {
            c.slot
            for c in others
            if c.slot is not None and expected in _volumes(_mounts_of(mounts, c.id) or [])
        }
    )
    if sharing:
        listed = ", ".join(map(str, sharing))
        return VerifyCheck(name, False, f"volume {expected} is also mounted by slot {listed}'s db")
    return VerifyCheck(
        name, True, f"db {db.id[:12]} on volume {expected}, shared with no other slot"
    )


def check_ports(
    target: compose.Target,
    containers: Sequence[docker.Container],
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> VerifyCheck:
    """Every env-file port of the layout's services is published by its service; no other
    project publishes one too."""
    name = "ports"
    ours = [c for c in containers if c.project == target.project and c.running]
    problems: list[str] = []
    not_running: list[str] = []
    for spec in layout.ports:
        host_port = target.port(spec.variable)
        # Workers register their own port with the backend: inside and outside must agree.
        inner = spec.container_port if spec.container_port is not None else host_port
        service = [c for c in ours if c.service == spec.service]
        if not service:
            if spec.service not in not_running:
                not_running.append(spec.service)
            continue
        published = {(p.host_port, p.container_port) for c in service for p in c.ports}
        if (host_port, inner) not in published:
            problems.append(f"{spec.variable}={host_port} is not {spec.service}'s port {inner}")
    if not_running:
        problems.append(f"not running: {', '.join(not_running)}")
    mine = sorted({p.host_port for c in ours for p in c.ports})
    for container in containers:
        if container.project == target.project or not container.running:
            continue
        for port in sorted({p.host_port for p in container.ports} & set(mine)):
            owner = container.project or container.name
            problems.append(f"host port {port} is also published by {owner}/{container.service}")
    if problems:
        return VerifyCheck(name, False, "; ".join(problems))
    return VerifyCheck(
        name,
        True,
        f"{len(layout.ports)} ports as in {target.env_file.name}, none published by another slot",
    )


def check_shared_dir(probe: str, seen: Mapping[str, str | None]) -> VerifyCheck:
    """`seen`: service -> None when it saw the probe file, else why not."""
    name = "shared-dir"
    missing = {service: why for service, why in seen.items() if why is not None}
    if not seen:
        return VerifyCheck(name, False, "no service to look from")
    if missing:
        listed = "; ".join(f"{service}: {why}" for service, why in missing.items())
        return VerifyCheck(name, False, f"{probe} not visible in {listed}")
    return VerifyCheck(name, True, f"{probe} visible in {', '.join(seen)}")


def check_scraped(slot: int, layout: slots.Layout, status: int | None, body: str) -> VerifyCheck:
    """On shared observability: the shared Prometheus scrapes the slot's backend and every
    worker of its profile, and its last scrape of each succeeded (its /api/v1/targets)."""
    name = "shared-observability"
    if status != 200:
        return VerifyCheck(
            name, False, f"shared Prometheus: {gatechecks.http_outcome(status, body).detail}"
        )
    mine = {t.service: t for t in observability.parse_targets(body) if t.slot == str(slot)}
    problems = []
    for service in layout.app_services:
        target = mine.get(service)
        if target is None:
            problems.append(f"{service}: not a target")
        elif target.health != "up":
            why = f": {target.error}" if target.error else ""
            problems.append(f"{service}: {target.health}{why}")
    if problems:
        return VerifyCheck(name, False, "; ".join(problems))
    return VerifyCheck(
        name, True, f"{len(layout.app_services)} targets up in the shared Prometheus"
    )


def exec_seen(result: Result) -> str | None:
    """A `test -f` run through `compose exec`: None when the files were there."""
    if result.ok:
        return None
    if result.returncode == 1 and not result.tail(1):
        return f"not under {', '.join(SHARED_MOUNTS)}"
    return result.tail(1) or f"exit status {result.returncode}"


def probe_name(slot: int) -> str:
    return f".ktrdr-verify-{slot}-{secrets.token_hex(4)}"


def probe_command(
    compose_cmd: Sequence[str], target: compose.Target, service: str, name: str
) -> list[str]:
    """One `test` for the probe under all three mounts: `test -f A -a -f B -a -f C`."""
    tests: list[str] = []
    for mount in SHARED_MOUNTS:
        tests += [*(["-a"] if tests else []), "-f", f"{mount}/{name}"]
    return compose.command(compose_cmd, target, "exec", "-T", service, "test", *tests)


# ----------------------------------------------------------------------------- gathering


def inspect_mounts(ids: Sequence[str], environ: Mapping[str, str]) -> dict[str, list[Mount]]:
    if not ids:
        return {}
    # A container removed since `docker ps` makes inspect exit 1; the others are still printed.
    return parse_mounts(
        runner.run(inspect_mounts_command(ids), env=environ, timeout=ENGINE_QUERY_TIMEOUT).stdout
    )


# Writes the probe file into data/, models/ and strategies/: None, or why it could not.
WriteProbe = Callable[[], str | None]


def _local_probe(
    target: compose.Target, name: str
) -> tuple[str | None, WriteProbe, Callable[[], None]]:
    """(why the shared directory is unusable or None, write, remove) on this machine."""
    missing = shared.missing(target.shared_dir)
    if missing:
        lacking = ", ".join(p.name for p in missing)
        return f"{target.shared_dir} lacks {lacking}/: run `inv init-shared`", _none, _nothing
    paths = [target.shared_dir / sub / name for sub in shared.SUBDIRS]

    def write() -> str | None:
        try:
            for path in paths:
                path.write_text(f"ktrdr-sandbox verify probe for slot {target.slot}\n")
        except OSError as exc:
            return str(exc)
        return None

    def remove() -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    return None, write, remove


def _remote_probe(
    target: compose.Target, name: str, environ: Mapping[str, str], where: engine.Engine
) -> tuple[str | None, WriteProbe, Callable[[], None]]:
    """The same on the engine's host, through helper containers."""
    directory = str(target.shared_dir)
    image = enginehost.helper_image(target.root, environ)
    state = enginehost.shared_state(directory, image, environ)
    if not state.ready:
        lacking = ", ".join(state.missing) or "nothing (not a directory)"
        why = f"{directory} on {where.host} lacks {lacking}/: run `inv init-shared`"
        return why, _none, _nothing
    return (
        None,
        lambda: enginehost.write_probe(directory, name, image, environ),
        lambda: enginehost.remove_probe(directory, name, image, environ),
    )


def _none() -> str | None:
    return None


def _nothing() -> None:
    return None


def shared_dir(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    containers: Sequence[docker.Container],
    where: engine.Engine = engine.LOCAL,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> VerifyCheck:
    """Write a probe file into data/, models/ and strategies/ on the engine's host, look for
    all three in every app service of the layout, always delete them."""
    name = probe_name(target.slot)
    try:
        unusable, write, remove = (
            _local_probe(target, name)
            if where.local
            else _remote_probe(target, name, environ, where)
        )
    except SandboxError as exc:
        return VerifyCheck("shared-dir", False, exc.message)
    if unusable is not None:
        return VerifyCheck("shared-dir", False, unusable)
    running = {c.service for c in containers if c.project == target.project and c.running}
    env = compose.environment(target, environ)

    def look(service: str) -> str | None:
        if service not in running:
            return "not running"
        cmd = probe_command(compose_cmd, target, service, name)
        return exec_seen(runner.run(cmd, env=env, timeout=VERIFY_EXEC_TIMEOUT))

    try:
        failed = write()
        if failed is not None:
            return VerifyCheck("shared-dir", False, f"cannot write a probe file: {failed}")
        services = layout.app_services
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            seen = dict(zip(services, pool.map(look, services), strict=True))
    finally:
        remove()
    return check_shared_dir(f"/app/{{{','.join(shared.SUBDIRS)}}}/{name}", seen)


def verify(
    targets: Sequence[compose.Target],
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    *,
    http_get: net.HttpGet = net.http_get,
    where: engine.Engine | None = None,
) -> list[VerifyReport]:
    """Each target's checks; one `docker ps` and one `docker inspect` serve every slot. URLs
    and the shared directory are the engine `where`'s (detected when None)."""
    where = where or engine.detect(environ)
    # A paused slot (`inv pause`) is thawed: verifying asks it to work.
    # Another checkout's paused slot is refused, not thawed: freezing it was that checkout's call.
    found = docker.containers(environ)
    for target in targets:
        own = [c for c in found if c.project == target.project]
        if any(c.state == pause.PAUSED for c in own):
            pause.refuse_others(target, own)
    projects = {t.project for t in targets}
    containers = pause.thawed(found, projects, environ)
    db_ids = [c.id for c in containers if c.slot is not None and c.service == "db"]
    mounts = inspect_mounts(db_ids, environ)
    reports = []
    for target in targets:
        own = [c for c in containers if c.project == target.project]
        layout = layout_of(own) or slots.DEFAULT_LAYOUT
        # Where the running slot is published: a stack started with `KTRDR_BIND_ADDR=::1 inv
        # up` is verified from a shell without it.
        bind = net.published_bind(own) or compose.bind_address(target, environ)
        api = net.service_urls(bind, target.port, where)["backend"]
        checks = [
            check_health(*http_get(f"{api}/health", VERIFY_HTTP_TIMEOUT)),
            check_own_database(target.slot, containers, mounts),
            check_ports(target, containers, layout),
            shared_dir(target, compose_cmd, environ, containers, where, layout),
        ]
        if layout.shared:
            url = f"{net.shared_urls(environ, where)['Shared Prometheus']}/api/v1/targets"
            checks.append(check_scraped(target.slot, layout, *http_get(url, VERIFY_HTTP_TIMEOUT)))
        reports.append(VerifyReport(target.slot, checks))
    return reports
