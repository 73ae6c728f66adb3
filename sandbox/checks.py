"""What the startability gate reports, as data: each check's state, each check, the result.

Apart from `gate` (which imports the probes, Compose and HTTP) so that the renderer can draw a
gate's result without loading any of that: `inv status` imports the renderer, not the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(Enum):
    WAITING = "waiting"
    PASSED = "passed"
    FAILED = "failed"
    # The gate stopped before this check was decided (another check failed fast): neither
    # passed nor failed, so its service's logs are not blamed.
    NOT_WAITED = "not waited for"


@dataclass
class CheckResult:
    """One check as the gate currently sees it."""

    name: str
    label: str
    state: State
    detail: str
    elapsed: float | None  # seconds from the gate's start until it passed (or failed fast)
    service: str  # the compose service whose logs explain a failure
    # Further services whose logs help (e.g. every worker that did not register).
    log_services: tuple[str, ...] = ()
    # What a failed one-shot step said (a migration's output), shown in place of logs.
    output: str = ""


@dataclass(frozen=True)
class GateResult:
    slot: int
    passed: bool
    checks: list[CheckResult]
    elapsed: float
    urls: dict[str, str]  # label -> URL of the slot's UIs and APIs

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.state is State.FAILED]
