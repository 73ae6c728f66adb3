"""The gate's container poll: which watched services can no longer come up (their container
exited, died or is missing) and which app processes died inside a container that keeps running
(read from its log, `sandbox/crashes.py`).

A log is read only when there is a reason: the container exited, its healthcheck failed, or a
paced look at a container still starting (`LogPace`). Each read is a `docker logs` process, and
reading every app container at every 2-s poll cost a quiet start ~10% of its time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import crashes, docker
from sandbox.gateprobes import Probes
from sandbox.settings import CRASH_LOG_CAP, CRASH_LOG_FIRST

# Only exited and dead are final: "created" is a worker waiting for a healthy backend.
EXITED_STATES = ("exited", "dead")


@dataclass
class LogPace:
    """When the gate looks again at the log of an app container that runs but is not healthy
    yet: first CRASH_LOG_FIRST seconds after the gate started, then at gaps that double up to
    CRASH_LOG_CAP. A start that passes within the first gap reads no log at all; one that
    crashes under a reloader is found within CRASH_LOG_CAP of the death at worst."""

    start: float
    next_at: dict[str, float] = field(default_factory=dict)
    gap: dict[str, float] = field(default_factory=dict)

    def due(self, name: str, now: float) -> bool:
        """Whether `name`'s log is due at `now`; when it is, the next look is scheduled."""
        if now < self.next_at.get(name, self.start + CRASH_LOG_FIRST):
            return False
        self.gap[name] = min(2 * self.gap.get(name, CRASH_LOG_FIRST / 2), CRASH_LOG_CAP)
        self.next_at[name] = now + self.gap[name]
        return True


def _always(name: str) -> bool:
    return True


def crashed(
    containers: Sequence[docker.Container],
    project: str,
    services: Sequence[str],
    app_log: Callable[[str], list[str]] | None,
    due: Callable[[str], bool] = _always,
) -> dict[str, str]:
    """Services of `project` whose app process died: service -> what it died of, in its own
    words. A running container (a reloader outlived its child) is read when its healthcheck
    failed, or when `due` says a look is due; an exited one for the error it exited with.
    `services` are those whose checks are still undecided, so a slot that passed reads none."""
    if app_log is None:
        return {}
    found: dict[str, str] = {}
    for container in containers:
        if container.project != project or container.service not in services:
            continue
        if container.state == "running" and container.health != "healthy":
            if container.health != "unhealthy" and not due(container.name):
                continue
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


def look(
    probes: Probes,
    project: str,
    services: Sequence[str],
    due: Callable[[str], bool] = _always,
) -> Seen | None:
    """The container poll: None when the engine could not be asked this time. `due`: whether a
    running app container's log is due for a look (`LogPace`)."""
    containers = probes.containers()
    if containers is None:
        return None
    return Seen(containers, crashed(containers, project, services, probes.app_log, due))


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
