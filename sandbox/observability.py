"""The machine's one shared observability stack: Jaeger, Prometheus and Grafana for every slot
started with `--observability=shared`.

It is Compose project `ktrdr-sandbox-observability` (docker-compose.observability.yml) on fixed
host ports outside every slot's range (`slots.OBSERVABILITY_PORTS`). Slots reach it through
the external network `NETWORK`: their override (sandbox/slotfiles.py) attaches the backend and
workers to it, points their traces at the shared Jaeger and leaves out their own three.

Prometheus finds the slots in a file_sd targets file generated from the running slots
(`scrape_targets`, pure) and written into its container with `docker exec` (no host file is
mounted, so a remote engine works alike); it is rewritten on every shared `up` and `down` and
on `inv observability up`. Status asks Prometheus' own API which targets are up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import compose, docker, net, runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.runner import display
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT, VERIFY_HTTP_TIMEOUT

PROJECT = slots.OBSERVABILITY_PROJECT
NETWORK = slots.OBSERVABILITY_NETWORK
NETWORK_LABEL = "ktrdr.sandbox.network=observability"
COMPOSE_FILE = "docker-compose.observability.yml"
# Where Prometheus' file_sd looks (the compose file's config): its storage directory, which
# exists from the start (a directory made later is not watched until a refresh).
TARGETS_DIR = "/prometheus"
TARGETS_FILE = f"{TARGETS_DIR}/ktrdr-slots.json"
SCRAPE_JOB = "ktrdr-slots"
# How long `observability up` waits for the three to be healthy.
UP_WAIT_SECONDS = 180


def not_up_error() -> SandboxError:
    return SandboxError(
        "the shared observability stack is not up: run `inv observability up` first "
        "(or use --observability=own)",
        Exit.NO_SHARED_OBSERVABILITY,
    )


# ----------------------------------------------------------------------------- pure parts


def command(compose_cmd: Sequence[str], root: Path, *args: str) -> list[str]:
    return [
        *compose_cmd,
        "--project-name",
        PROJECT,
        "--project-directory",
        str(root),
        "-f",
        str(root / COMPOSE_FILE),
        *args,
    ]


def up_command(compose_cmd: Sequence[str], root: Path) -> list[str]:
    wait = ["--wait", "--wait-timeout", str(UP_WAIT_SECONDS)]
    return command(compose_cmd, root, "up", "-d", "--remove-orphans", *wait)


def environment(root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The images `inv images` chose and the machine-wide bind address; nothing of a slot."""
    env = {
        k: v
        for k, v in environ.items()
        if k in compose.PASSTHROUGH or not k.startswith(compose.SLOT_SPECIFIC_PREFIXES)
    }
    for key, value in compose.image_settings(root).items():
        env.setdefault(key, value)
    return env


def _app_port(container: docker.Container) -> int | None:
    if container.service == "backend":
        return slots.BACKEND_PORT
    # A worker listens inside on the port it publishes (it registers that port).
    inner = {p.container_port for p in container.ports}
    if len(inner) == 1:
        return inner.pop()
    worker = next((w for w in slots.WORKERS if w.service == container.service), None)
    if worker is None or container.slot is None:
        return None
    return slots.ports(container.slot)[worker.port_variable]


def scrape_targets(containers: Sequence[docker.Container]) -> list[dict[str, Any]]:
    """The file_sd document: one group per running backend or worker of a shared slot,
    addressed by container name (resolvable on NETWORK), labelled with its slot and service."""
    groups = []
    for c in sorted(containers, key=lambda c: (c.slot or 0, c.service)):
        if c.slot is None or not c.running or not c.layout.shared:
            continue
        if c.service not in c.layout.app_services:
            continue
        port = _app_port(c)
        if port is None:
            continue
        labels = {"slot": str(c.slot), "service": c.service, "project": c.project}
        groups.append({"targets": [f"{c.name}:{port}"], "labels": labels})
    return groups


def write_targets_command(container_id: str) -> list[str]:
    # Written next to the file and renamed: Prometheus never reads half a file.
    partial = f"{TARGETS_DIR}/.ktrdr-slots.tmp"
    script = f"cat > {partial} && mv -f {partial} {TARGETS_FILE}"
    return ["docker", "exec", "-i", container_id, "sh", "-c", script]


@dataclass(frozen=True)
class Target:
    """One scrape target as Prometheus' /api/v1/targets reports it."""

    slot: str
    service: str
    health: str  # up, down, unknown
    error: str = ""


def parse_targets(body: str) -> list[Target]:
    """The ktrdr-slots targets in a /api/v1/targets answer; [] for anything unexpected."""
    try:
        data = json.loads(body)
        active = data["data"]["activeTargets"]
    except (ValueError, KeyError, TypeError):
        return []
    found = []
    for item in active if isinstance(active, list) else []:
        if not isinstance(item, dict) or item.get("scrapePool") != SCRAPE_JOB:
            continue
        labels = item.get("labels") or {}
        found.append(
            Target(
                str(labels.get("slot", "")),
                str(labels.get("service", "")),
                str(item.get("health", "")),
                str(item.get("lastError", "")),
            )
        )
    return sorted(found, key=lambda t: (t.slot, t.service))


def urls(environ: Mapping[str, str]) -> dict[str, str]:
    return net.shared_urls(environ)


def own(containers: Sequence[docker.Container]) -> list[docker.Container]:
    return [c for c in containers if c.project == PROJECT]


def is_up(containers: Sequence[docker.Container]) -> bool:
    """All three of the shared stack run (any project's containers may be passed)."""
    running = {c.service for c in own(containers) if c.running}
    return running >= set(slots.OBSERVABILITY_SERVICES)


def shared_slots(containers: Sequence[docker.Container]) -> list[int]:
    return sorted({c.slot for c in containers if c.slot is not None and c.layout.shared})


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Status:
    services: dict[str, str]  # service -> "running (healthy)", "exited", "absent"
    up: bool
    urls: dict[str, str]
    slots: list[int]  # slots recorded as using it
    targets: list[Target] = field(default_factory=list)
    spans: int | None = None  # spans the Jaeger stand-in counted; None: not a stand-in / down
    note: str = ""


def _service_states(containers: Sequence[docker.Container]) -> dict[str, str]:
    states = {}
    for service in slots.OBSERVABILITY_SERVICES:
        mine = [c for c in own(containers) if c.service == service]
        if not mine:
            states[service] = "absent"
        else:
            c = mine[0]
            states[service] = f"{c.state} ({c.health})" if c.health != "none" else c.state
    return states


def standin_spans(body: str) -> int | None:
    """Spans counted by the Jaeger stand-in (its /api/standin/stats), None for anything else."""
    try:
        data = json.loads(body)
        return int(data["otlp_http_spans"]) + int(data["grpc_spans"])
    except (ValueError, KeyError, TypeError):
        return None


def status(environ: Mapping[str, str], *, http_get: net.HttpGet = net.http_get) -> Status:
    everything = docker.containers(environ)
    up = is_up(everything)
    found = urls(environ)
    result = Status(_service_states(everything), up, found, shared_slots(everything))
    if not up:
        return result
    code, body = http_get(f"{found['Shared Prometheus']}/api/v1/targets", VERIFY_HTTP_TIMEOUT)
    targets = parse_targets(body) if code == 200 else []
    code, stats = http_get(f"{found['Shared Jaeger UI']}/api/standin/stats", VERIFY_HTTP_TIMEOUT)
    spans = standin_spans(stats) if code == 200 else None
    return Status(result.services, up, found, result.slots, targets, spans)


# ----------------------------------------------------------------------------- acting


def ensure_network(environ: Mapping[str, str]) -> bool:
    """Create NETWORK unless it exists; whether it was created."""
    env = dict(environ)
    if runner.run(["docker", "network", "inspect", NETWORK], env=env, timeout=CLI_TIMEOUT).ok:
        return False
    cmd = ["docker", "network", "create", "--label", NETWORK_LABEL, NETWORK]
    runner.run(cmd, env=env, timeout=CLI_TIMEOUT, check=f"could not create {NETWORK}")
    return True


def up(root: Path, environ: Mapping[str, str]) -> list[str]:
    """Start the shared stack (idempotent), then write the targets of slots already shared."""
    docker.check_engine(environ)
    compose_cmd = compose.find_compose(environ)
    ensure_network(environ)
    cmd = up_command(compose_cmd, root)
    runner.run(
        cmd,
        env=environment(root, environ),
        cwd=root,
        timeout=UP_WAIT_SECONDS + ENGINE_QUERY_TIMEOUT,
        check=f"the shared observability stack did not come up: {display(cmd)}",
    )
    refresh_targets(environ)
    return cmd


def users(containers: Sequence[docker.Container]) -> dict[int, bool]:
    """Slots on shared observability that have containers, running or not: slot -> whether
    any of its containers runs. A stopped slot counts: its containers stay attached to
    NETWORK, and if the network were removed and made anew they could not start again."""
    found: dict[int, bool] = {}
    for c in containers:
        if c.slot is not None and c.layout.shared:
            found[c.slot] = found.get(c.slot, False) or c.running
    return dict(sorted(found.items()))


def users_error(found: Mapping[int, bool]) -> SandboxError:
    listed = ", ".join(f"{n} ({'running' if run else 'stopped'})" for n, run in found.items())
    first = next(iter(found))
    one = len(found) == 1
    return SandboxError(
        f"slot{'' if one else 's'} {listed} {'uses' if one else 'use'} the shared "
        f"observability stack (a stopped slot keeps its network): `inv down --slot={first}`"
        f"{'' if one else ' (and the others)'} first",
        Exit.OTHER_LAYOUT,
    )


def down(root: Path, environ: Mapping[str, str]) -> list[str]:
    """Stop the shared stack; refused while a slot on it has containers, stopped or not."""
    docker.check_engine(environ)
    everything = docker.containers(environ)
    found = users(everything)
    if found:
        raise users_error(found)
    compose_cmd = compose.find_compose(environ)
    cmd = command(compose_cmd, root, "down", "--remove-orphans", "--volumes")
    runner.run(
        cmd,
        env=environment(root, environ),
        cwd=root,
        timeout=ENGINE_QUERY_TIMEOUT * 4,
        check=f"`docker compose down` failed for {PROJECT}: {display(cmd)}",
    )
    # The network goes too, once nothing uses it (a stopped shared slot still holds it).
    runner.run(["docker", "network", "rm", NETWORK], env=dict(environ), timeout=CLI_TIMEOUT)
    return cmd


def inspect_networks_command(ids: Sequence[str]) -> list[str]:
    return ["docker", "inspect", "--format", "{{.Id}} {{json .NetworkSettings.Networks}}", *ids]


def parse_attachments(output: str) -> dict[str, str]:
    """Container id -> the id of the network named NETWORK it is attached to, from
    `inspect_networks_command`; a container not attached to it is left out."""
    found = {}
    for line in output.splitlines():
        ident, _, networks = line.partition(" ")
        try:
            attached = json.loads(networks).get(NETWORK)
        except (ValueError, AttributeError):
            continue
        if isinstance(attached, dict) and attached.get("NetworkID"):
            found[ident] = str(attached["NetworkID"])
    return found


def stale(containers: Sequence[docker.Container], environ: Mapping[str, str]) -> list[str]:
    """The ids of `containers` attached to a NETWORK that is gone (removed, maybe made anew
    since): Docker cannot start them again (`network ... not found`). A stopped shared slot
    under an `observability down` of an older version, or a `docker network prune`, leaves
    them."""
    if not containers:
        return []
    env = dict(environ)
    ids = [c.id for c in containers]
    found = runner.run(inspect_networks_command(ids), env=env, timeout=CLI_TIMEOUT)
    attachments = parse_attachments(found.stdout) if found.ok else {}
    if not attachments:
        return []
    now = runner.run(
        ["docker", "network", "inspect", "--format", "{{.Id}}", NETWORK],
        env=env,
        timeout=CLI_TIMEOUT,
    )
    if not now.ok and "no such network" not in now.stderr.lower():
        # The engine did not answer (a timeout, a hiccup): that says nothing of the network,
        # and removing a running slot's containers on a guess would be wrong.
        return []
    current = now.stdout.strip() if now.ok else ""
    return [c.id for c in containers if c.id in attachments and attachments[c.id] != current]


def heal(containers: Sequence[docker.Container], environ: Mapping[str, str]) -> list[str]:
    """Remove the slot's containers attached to a network that is gone (`stale`), so that
    `docker compose up` makes them anew on today's network; the names removed. Only app
    services are ever attached (the database is not), and they keep nothing of their own."""
    gone = set(stale(containers, environ))
    names = [c.name for c in containers if c.id in gone]
    if gone:
        runner.run(
            ["docker", "rm", "--force", *sorted(gone)],
            env=dict(environ),
            timeout=CLI_TIMEOUT,
            check="could not remove containers attached to a removed network",
        )
    return names


def refresh_targets(environ: Mapping[str, str]) -> int | None:
    """Rewrite Prometheus' targets from the running slots; how many, or None when the shared
    stack is not up (nothing to tell)."""
    everything = docker.containers(environ)
    prometheus = [c for c in own(everything) if c.service == "prometheus" and c.running]
    if not prometheus:
        return None
    groups = scrape_targets(everything)
    runner.run(
        write_targets_command(prometheus[0].id),
        env=dict(environ),
        timeout=CLI_TIMEOUT,
        input_text=json.dumps(groups, indent=2) + "\n",
        check="could not write the scrape targets into the shared Prometheus",
    )
    return len(groups)
