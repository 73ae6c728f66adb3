"""The startability gate: after `docker compose up -d`, wait until the slot really works.

Six named checks poll independently and concurrently: the database accepts connections, the
backend answers its health endpoint, every worker of the slot's profile registered (four for
`full`, two for `light`, none for `none`), and Jaeger, Prometheus and Grafana answer: the
slot's own, or the shared stack's on `--observability=shared`. The gate ends as soon as every
check passed, when a watched container exited or is missing (no point waiting for it), or at
the timeout. It returns a `GateResult`; it
never raises for a stack that is not ready. Drawing progress is the caller's business
(`on_update`).

This module is the loop. What is checked is `sandbox/gatechecks.py`; every contact with the
outside goes through `sandbox/gateprobes.py`'s `Probes`, so tests drive the gate with fakes and
a fake clock (no Docker, no sockets); the container poll is `sandbox/gatewatch.py`, and the
reading of a slot still starting on a busy machine `sandbox/gateload.py`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from sandbox import apps, compose, engine, net, runner, slots
from sandbox.checks import CheckResult, GateResult, State
from sandbox.gatechecks import Check, Outcome, checks
from sandbox.gateload import Progress, differs, gate_deadline, starting, starting_detail
from sandbox.gateprobes import Probes, default_probes
from sandbox.gatewatch import LogPace, Seen, gone, look
from sandbox.settings import (
    CONTAINER_POLL,
    ENGINE_QUERY_TIMEOUT,
    FAILING_LOG_LINES,
    GATE_POLL,
    GATE_TIMEOUT,
)

WAITING_DETAIL = "waiting"


# ----------------------------------------------------------------------------- the loop


def _timed(probe: Callable[[], Outcome], clock: Callable[[], float]) -> tuple[Outcome, float]:
    try:
        outcome = probe()
    except Exception as exc:  # a probe bug must not hang the gate: report it as the check
        outcome = Outcome(False, f"probe error: {type(exc).__name__}: {exc}")
    return outcome, clock()


@dataclass
class _Round:
    """The gate's state between rounds: what each check says, and what is still in flight."""

    target: compose.Target
    plan: list[Check]
    probes: Probes
    clock: Callable[[], float]
    start: float
    results: dict[str, CheckResult]
    in_flight: dict[str, futures.Future[tuple[Outcome, float]]] = field(default_factory=dict)
    ps: futures.Future[Seen | None] | None = None
    next_ps: float = 0.0
    app_services: tuple[str, ...] = ()
    progress: Progress = field(default_factory=Progress)
    pace: LogPace = field(init=False)

    def __post_init__(self) -> None:
        self.pace = LogPace(self.start)

    def submit(self, pool: futures.Executor, now: float) -> list[futures.Future[Any]]:
        """Start a probe for every undecided check without one in flight, and the container
        poll when it is due; return everything in flight."""
        for check in self.plan:
            if self.results[check.name].state is State.WAITING and check.name not in self.in_flight:
                if check.after and self.results[check.after].state is not State.PASSED:
                    continue
                self.in_flight[check.name] = pool.submit(_timed, check.probe, self.clock)
        if self.ps is None and now >= self.next_ps:
            undecided = {
                service
                for check in self.plan
                if self.results[check.name].state is State.WAITING
                for service in check.watch
            }
            services = tuple(s for s in self.app_services if s in undecided)
            due = functools.partial(self.pace.due, now=now)
            self.ps = pool.submit(look, self.probes, self.target.project, services, due)
            self.next_ps = now + CONTAINER_POLL
        return [*self.in_flight.values(), *([self.ps] if self.ps is not None else [])]

    def collect(self) -> bool:
        """Apply every probe that finished; whether anything shown changed."""
        changed = False
        for check in self.plan:
            future = self.in_flight.get(check.name)
            if future is None or not future.done():
                continue
            del self.in_flight[check.name]
            result = self.results[check.name]
            before = result.detail
            moved = _apply(check, result, *future.result(), self.start)
            if result.state is State.WAITING:
                result.detail = starting_detail(result.detail, check.service, self.progress)
                moved = differs(before, result.detail)
            changed = moved or changed
        return changed

    def apply_containers(self) -> bool:
        """Fail at once every undecided check whose watched container is gone or whose app
        process died under a running container; whether any."""
        if self.ps is None or not self.ps.done():
            return False
        # None: the engine could not be asked this time; the checks speak for now.
        seen = self.ps.result() if self.ps.exception() is None else None
        self.ps = None
        if seen is None:
            return False
        if self.probes.cpu is not None:
            self.progress.note(self.clock(), seen.containers, self.target.project, self.probes.cpu)
        changed = False
        for check in self.plan:
            result = self.results[check.name]
            lost = _died(seen, check) or gone(seen.containers, self.target.project, check.watch)
            if result.state is not State.WAITING or lost is None:
                continue
            service, why = lost
            result.state, result.elapsed = State.FAILED, self.clock() - self.start
            result.detail = why if len(check.watch) == 1 else f"{service}: {why}"
            result.service, result.log_services = service, ()
            changed = True
        return changed


def _died(seen: Seen, check: Check) -> tuple[str, str] | None:
    """The first watched service whose app process died: (service, what it died of)."""
    return next(((s, seen.crashes[s]) for s in check.watch if s in seen.crashes), None)


def _apply(check: Check, result: CheckResult, outcome: Outcome, at: float, start: float) -> bool:
    """One probe's answer into its check; whether anything shown changed."""
    changed = result.detail != outcome.detail
    if outcome.passed or outcome.final:
        result.state = State.PASSED if outcome.passed else State.FAILED
        result.elapsed, result.output = at - start, outcome.output
        changed = True
    result.detail = outcome.detail
    if outcome.services:
        result.service, result.log_services = outcome.services[0], outcome.services[1:]
    else:
        result.service, result.log_services = check.service, ()
    return changed


class _Verdict(Enum):
    GO_ON = "go on"
    PASSED = "passed"
    FAILED_FAST = "failed fast"  # a check failed: the others are not waited for


def _decide(results: Mapping[str, CheckResult]) -> _Verdict:
    states = [r.state for r in results.values()]
    if all(s is State.PASSED for s in states):
        return _Verdict.PASSED
    if State.FAILED in states:
        return _Verdict.FAILED_FAST
    return _Verdict.GO_ON


def _settle(results: Mapping[str, CheckResult], stopped_early: bool) -> bool:
    """Decide every check still waiting: failed at the timeout, not waited for after a fast
    failure. Whether there was any."""
    leftover = [r for r in results.values() if r.state is State.WAITING]
    for result in leftover:
        result.state = State.NOT_WAITED if stopped_early else State.FAILED
        if result.detail == WAITING_DETAIL:
            result.detail = "no answer yet"  # its first probe was still in flight
        if stopped_early:
            result.detail = f"{result.detail} (not waited for: another check failed)"
    return bool(leftover)


def run_gate(
    target: compose.Target,
    compose_cmd: list[str],
    environ: Mapping[str, str],
    *,
    timeout: float = GATE_TIMEOUT,
    poll: float = GATE_POLL,
    on_update: Callable[[list[CheckResult]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    probes: Probes | None = None,
    sleep: Callable[[float], None] = time.sleep,
    probe_wait: float | None = None,
    migration: apps.Migration | None = None,
    where: engine.Engine | None = None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
) -> GateResult:
    """Poll every check every `poll` seconds until all pass, one fails fast, or `timeout`.

    Each check has at most one probe in flight; a slow probe never holds back the others'
    next round. Each round waits up to `probe_wait` real seconds (default `poll`) for the
    probes in flight before moving on; tests with instant fakes set it high so that every
    round sees every answer, whatever the machine's load. `on_update` gets a snapshot of
    every check whenever one changes.
    """
    probes = probes or default_probes(environ)
    where = where or engine.detect(environ)
    plan = checks(target, compose_cmd, environ, probes, migration, where, layout)
    results = {
        c.name: CheckResult(c.name, c.label, State.WAITING, WAITING_DETAIL, None, c.service)
        for c in plan
    }

    def emit() -> None:
        if on_update is not None:
            on_update([replace(r) for r in results.values()])

    start = clock()
    state = _Round(target, plan, probes, clock, start, results, app_services=layout.app_services)
    wait = poll if probe_wait is None else probe_wait
    verdict = _in_pool(state, emit, _Timing(timeout, poll, wait, sleep))
    if _settle(results, verdict is _Verdict.FAILED_FAST):
        emit()
    final = list(results.values())
    return GateResult(
        slot=target.slot,
        passed=all(r.state is State.PASSED for r in final),
        checks=final,
        elapsed=clock() - start,
        urls=net.urls(target, environ, where, layout),
    )


@dataclass(frozen=True)
class _Timing:
    """How the rounds are paced: `run_gate`'s timeout, poll, probe wait and sleep."""

    timeout: float
    poll: float
    wait_limit: float
    sleep: Callable[[float], None]


def _in_pool(state: _Round, emit: Callable[[], None], timing: _Timing) -> _Verdict:
    """`_poll` with a thread for each check and one for the container poll."""
    workers = len(state.plan) + 1
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gate")
    try:
        emit()
        return _poll(state, pool, emit, timing)
    finally:
        # Probes still in flight end by their own short timeouts; nobody waits for them.
        pool.shutdown(wait=False, cancel_futures=True)


def _poll(
    state: _Round, pool: futures.Executor, emit: Callable[[], None], timing: _Timing
) -> _Verdict:
    """Rounds until every check passed, one failed fast, or `timeout` (GO_ON then); past
    `timeout` only while the machine is short of CPU and the services still starting keep
    using CPU (`_deadline`)."""
    clock, start = state.clock, state.start
    while True:
        round_start = clock()
        futures.wait(state.submit(pool, round_start), timeout=timing.wait_limit)
        changed = state.collect()
        changed = state.apply_containers() or changed
        if changed:
            emit()
        verdict = _decide(state.results)
        if verdict is not _Verdict.GO_ON:
            return verdict
        now = clock()
        busy = starting(state.plan, state.results)
        deadline = gate_deadline(
            state.progress, start, now, timing.timeout, busy, state.probes.starved
        )
        if now >= deadline:
            return verdict
        timing.sleep(max(0.0, min(timing.poll - (now - round_start), deadline - now)))


# ----------------------------------------------------------------------------- after a failure


def failing_services(result: GateResult) -> list[str]:
    """Every service whose logs explain the failed checks, in check order, once each."""
    found: dict[str, None] = {}
    for check in result.failed:
        for service in (check.service, *check.log_services):
            found.setdefault(service, None)
    return list(found)


def failing_logs(
    target: compose.Target,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    services: Sequence[str],
    lines: int = FAILING_LOG_LINES,
) -> dict[str, str]:
    """The last `lines` log lines of each service (what the command said when that failed)."""
    env = compose.environment(target, environ)
    tails: dict[str, str] = {}
    for service in dict.fromkeys(services):
        result = runner.run(
            compose.logs_command(compose_cmd, target, service, False, lines),
            env=env,
            timeout=ENGINE_QUERY_TIMEOUT,
        )
        text = result.stdout if result.ok else result.tail(lines)
        tails[service] = text.rstrip("\n") or "(no output)"
    return tails
