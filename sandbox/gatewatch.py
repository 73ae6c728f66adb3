"""The gate's container poll: which watched services can no longer come up (their container
exited, died or is missing) and which app processes died inside a container that keeps running
(read from its log, `sandbox/crashes.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sandbox import crashes, docker
from sandbox.gateprobes import Probes

# Only exited and dead are final: "created" is a worker waiting for a healthy backend.
EXITED_STATES = ("exited", "dead")


def crashed(
    containers: Sequence[docker.Container],
    project: str,
    services: Sequence[str],
    app_log: Callable[[str], list[str]] | None,
) -> dict[str, str]:
    """Services of `project` whose app process died: service -> what it died of, in its own
    words. A running container (a reloader outlived its child) is read unless healthy; an
    exited one for the error it exited with. One `docker logs` each; `services` are those
    whose checks are still undecided, so a slot that passed reads none."""
    if app_log is None:
        return {}
    found: dict[str, str] = {}
    for container in containers:
        if container.project != project or container.service not in services:
            continue
        if container.state == "running" and container.health != "healthy":
            crash = crashes.find_crash(app_log(container.name))
            if crash is not None:
                found[container.service] = crash.describe()
        elif container.state in EXITED_STATES:
            error = crashes.last_error(app_log(container.name))
            if error is not None:
                status = f" ({container.status})" if container.status else ""
                found[container.service] = f"container exited{status}: {error.describe_error()}"
    return found


@dataclass(frozen=True)
class Seen:
    """One poll of the engine: every container, and the app processes found dead."""

    containers: Sequence[docker.Container]
    crashes: Mapping[str, str]


def look(probes: Probes, project: str, services: Sequence[str]) -> Seen | None:
    """The container poll: None when the engine could not be asked this time."""
    containers = probes.containers()
    if containers is None:
        return None
    return Seen(containers, crashed(containers, project, services, probes.app_log))


def gone(
    containers: Sequence[docker.Container], project: str, watch: Sequence[str]
) -> tuple[str, str] | None:
    """The first watched service of `project` that cannot come up any more: (service, why).

    Its container exited (or died), or it has none: `up -d` creates every container, so a
    missing one means the stack was taken down meanwhile.
    """
    for service in watch:
        mine = [c for c in containers if c.project == project and c.service == service]
        if not mine:
            return service, "no container"
        for container in mine:
            if container.state in EXITED_STATES:
                status = f" ({container.status})" if container.status else ""
                return service, f"container exited{status}"
    return None
