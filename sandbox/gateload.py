"""The gate under load: a service still starting on a CPU-starved machine is said as such
("starting, 4 s of CPU so far") and may stretch the gate past its timeout while it makes
progress; one whose CPU stands still does not."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from sandbox import docker
from sandbox.checks import CheckResult, State
from sandbox.gatechecks import Check
from sandbox.settings import (
    GATE_HARD_CAP_FACTOR,
    GATE_PROGRESS_CPU,
    GATE_PROGRESS_WINDOW,
)

# How a probe says it got no answer at all (as opposed to an HTTP status): a process that has
# not bound its port yet, or one too starved of CPU to answer in time.
_NO_ANSWER = re.compile(
    r"reset|refused|timed out|timeout|closed|eof|unreachable|no answer|starting up|not accepting",
    re.IGNORECASE,
)


@dataclass
class Progress:
    """The CPU the slot's running containers have used, as the gate's container polls see it:
    what tells a start that is slow (CPU still growing) from one that is stuck."""

    by_service: dict[str, float] = field(default_factory=dict)
    # (at, service -> CPU-seconds), the last two windows' worth
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def note(
        self,
        at: float,
        containers: Sequence[docker.Container],
        project: str,
        cpu: Callable[[str], float | None],
    ) -> None:
        used = {c.service: cpu(c.id) for c in containers if c.project == project and c.running}
        known = {service: seconds for service, seconds in used.items() if seconds is not None}
        if not known:
            return  # not accounted here (a remote engine): nothing is claimed
        self.by_service = known
        self.samples = [s for s in self.samples if s[0] >= at - 2 * GATE_PROGRESS_WINDOW]
        self.samples.append((at, known))

    def growing(self, now: float, services: Collection[str]) -> bool:
        """Whether `services` used at least GATE_PROGRESS_CPU together over the last window.
        Only the services still starting count: the rest of an idle slot (workers renewing
        their registration, the database) uses about that much on its own."""
        older = [used for at, used in self.samples if at <= now - GATE_PROGRESS_WINDOW]
        if not older or not services:
            return False
        latest = self.samples[-1][1]
        grown = sum(latest.get(s, 0.0) - older[-1].get(s, latest.get(s, 0.0)) for s in services)
        return grown >= GATE_PROGRESS_CPU


def starting_detail(detail: str, service: str, progress: Progress) -> str:
    """A waiting check that got no answer, said as what it is when its service's container
    runs and is accounted: "starting, 4 s of CPU so far (connection reset)"."""
    seconds = progress.by_service.get(service)
    if seconds is None or not _NO_ANSWER.search(detail) or detail.startswith("starting,"):
        return detail
    return f"starting, {seconds:.0f} s of CPU so far ({detail})"


def starting(plan: Sequence[Check], results: Mapping[str, CheckResult]) -> set[str]:
    """The services of the checks still waiting without an answer (said as "starting")."""
    return {
        check.service
        for check in plan
        if results[check.name].state is State.WAITING
        and results[check.name].detail.startswith("starting,")
    }


def gate_deadline(
    progress: Progress,
    start: float,
    now: float,
    timeout: float,
    services: Collection[str],
    starved: Callable[[], bool] | None,
) -> float:
    """When the gate gives up: at `timeout`, or later while the machine is short of CPU
    (`starved`) and the `services` still starting keep using CPU, never past
    GATE_HARD_CAP_FACTOR times it. CPU growth alone is no progress: a service in a retry loop
    or a polling reloader uses CPU too, and the start holds its admission turn meanwhile.
    A failed check ends the gate before either."""
    if now - start < timeout or not progress.growing(now, services):
        return start + timeout
    if starved is None or not starved():
        return start + timeout
    return start + timeout * GATE_HARD_CAP_FACTOR


_CPU_FIGURE = re.compile(r"^starting, \d+ s of CPU so far")


def differs(before: str, after: str) -> bool:
    """Whether a waiting check's detail changed in more than its CPU figure (which grows every
    round: redrawing the gate for it every round would be noise)."""
    return _CPU_FIGURE.sub("starting", before) != _CPU_FIGURE.sub("starting", after)
