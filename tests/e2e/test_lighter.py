"""Lighter slots on a real engine: a `light` worker profile, and two slots on the machine's one
shared observability stack, driven through the `inv` tasks as a user drives them.

The tests run in order on one module fixture: bad input first (nothing may start), then a light
slot, then two shared slots that the shared Prometheus must report as up targets (its own
/api/v1/targets) and whose traces the shared Jaeger must receive. Offline, Jaeger is the
stand-in: it counts the OTLP/JSON spans it receives per service.namespace (the slot's project),
which is what the trace test reads.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from sandbox import observability, slots
from sandbox.docker import containers as all_containers
from sandbox.errors import Exit
from sandbox.runner import Result
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
LIGHT = slots.Layout("light")
WAIT_SECONDS = 120.0
PROMETHEUS = "http://127.0.0.1:9080"
JAEGER = "http://127.0.0.1:16680"


def get_json(url: str) -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.load(response)


def api(slot: int, path: str) -> object:
    return get_json(f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1{path}")


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def one_error_line(result: Result, code: Exit, text: str) -> None:
    assert result.returncode == code, f"{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def observability_containers() -> list[str]:
    return [c.service for c in all_containers() if c.project == observability.PROJECT]


def published_ports(slot: int) -> set[int]:
    return {p.host_port for c in project_containers(slot) if c.running for p in c.ports}


@pytest.fixture(scope="module")
def lighter(sandbox: Sandbox) -> Iterator[Sandbox]:
    claim_slots((A, B), sandbox.env)
    if observability_containers():
        # Machine-wide: refused (exit 14) while a slot uses it, which fails the suite loudly.
        assert_ok(sandbox.inv("observability", "down"))
    try:
        yield sandbox
    finally:
        for slot in (A, B):
            sandbox.inv("down", f"--slot={slot}", "--volumes")
        sandbox.inv("observability", "down")


def test_an_unknown_profile_is_one_line_and_starts_nothing(lighter: Sandbox) -> None:
    result = lighter.inv("up", f"--slot={A}", "--workers=medium")
    one_error_line(result, Exit.USAGE, "unknown worker profile 'medium'")
    assert project_containers(A) == []


def test_shared_is_refused_while_the_shared_stack_is_down(lighter: Sandbox) -> None:
    result = lighter.inv("up", f"--slot={A}", "--observability=shared")
    one_error_line(result, Exit.NO_SHARED_OBSERVABILITY, "run `inv observability up` first")
    assert project_containers(A) == []


def test_a_light_slot_passes_its_gate_with_two_workers(lighter: Sandbox) -> None:
    result = lighter.inv("up", f"--slot={A}", "--workers=light")
    assert_ok(result)
    assert "all 6 checks passed" in result.stdout
    running = sorted(c.service for c in project_containers(A) if c.running)
    assert running == sorted(LIGHT.services)
    assert len(running) == 7
    workers = api(A, "/workers")
    assert isinstance(workers, list)
    assert sorted(w["worker_id"] for w in workers) == ["backtest-worker-1", "training-worker-1"]
    assert len(published_ports(A)) == 9  # 11 less the two workers left out

    shown = lighter.inv("status", f"--slot={A}")
    assert_ok(shown)
    [row] = [line for line in shown.stdout.splitlines() if line.startswith(f"{A} ")]
    # healthy/total: Docker's healthchecks (every 5 s) may still be catching up with the gate.
    state, healthy, workers, obs = row.split()[2:6]
    assert (state, healthy.split("/")[1], workers, obs) == ("running", "7", "light", "own"), row
    assert_ok(lighter.inv("verify", f"--slot={A}"))


def test_another_profile_on_the_running_slot_is_refused(lighter: Sandbox) -> None:
    before = {c.service: c.id for c in project_containers(A)}
    result = lighter.inv("up", f"--slot={A}", "--workers=full")
    one_error_line(result, Exit.OTHER_LAYOUT, f"slot {A} runs light (2 workers), not full")
    assert {c.service: c.id for c in project_containers(A)} == before
    assert_ok(lighter.inv("down", f"--slot={A}", "--volumes"))


def up_both_shared(sandbox: Sandbox) -> dict[int, Result]:
    results: dict[int, Result] = {}
    flags = {A: "--workers=light", B: "--workers=full"}

    def start(slot: int) -> None:
        results[slot] = sandbox.inv("up", f"--slot={slot}", flags[slot], "--observability=shared")

    threads = [threading.Thread(target=start, args=(slot,)) for slot in (A, B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def scraped() -> dict[tuple[str, str], str]:
    """(slot, service) -> health, from the shared Prometheus' own API."""
    body = json.dumps(get_json(f"{PROMETHEUS}/api/v1/targets"))
    return {(t.slot, t.service): t.health for t in observability.parse_targets(body)}


def wait_for(what: str, check: object, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check() if callable(check) else check
        if last is True:
            return
        time.sleep(1)
    pytest.fail(f"{what} within {timeout:.0f}s; last seen: {last}", pytrace=False)


def test_two_shared_slots_are_scraped_and_traced_by_the_shared_stack(lighter: Sandbox) -> None:
    assert_ok(lighter.inv("observability", "up"))
    for slot, result in up_both_shared(lighter).items():
        assert_ok(result)
        assert "checks passed" in result.stdout, slot
    # No Jaeger, Prometheus or Grafana of their own: 11 host ports less those five.
    assert len(published_ports(B)) == 6
    assert len(published_ports(A)) == 4
    assert not {"jaeger", "prometheus", "grafana"} & {c.service for c in project_containers(B)}

    wanted = {(str(A), s) for s in ("backend", "backtest-worker-1", "training-worker-1")}
    wanted |= {(str(B), s) for s in ("backend", *(w.service for w in slots.WORKERS))}

    def all_up() -> object:
        seen = scraped()
        return True if all(seen.get(key) == "up" for key in wanted) else seen

    wait_for("the shared Prometheus reports every backend and worker of both slots up", all_up)

    # Traces: each slot's backend exports a span per API request; the stand-in counts them by
    # service.namespace, the slot's project.
    def spans(slot: int) -> int:
        stats = get_json(f"{JAEGER}/api/standin/stats")
        assert isinstance(stats, dict) and stats.get("standin") is True
        by_service = stats["otlp_http_json_spans_by_service"]
        return int(by_service.get(f"{slots.project_name(slot)}/ktrdr-reference-backend", 0))

    for slot in (A, B):
        before = spans(slot)
        for _ in range(3):
            api(slot, "/workers")
        wait_for(
            f"slot {slot}'s spans reach the shared Jaeger",
            lambda s=slot, b=before: spans(s) >= b + 3,
        )

    status = lighter.inv("status")
    assert_ok(status)
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:] if line}
    for slot, total, workers in ((A, "4", "light"), (B, "6", "full")):
        state, healthy, shown_workers, obs = rows[str(slot)][2:6]
        assert (state, healthy.split("/")[1], shown_workers, obs) == (
            "running",
            total,
            workers,
            "shared",
        )
    verified = lighter.inv("verify", f"--slot={A}", f"--slot={B}")
    assert_ok(verified)
    assert "shared-observability" in verified.stdout
    shown = lighter.inv("observability", "status")
    assert_ok(shown)
    assert "scrape targets: 8 of 8 up" in shown.stdout


def test_the_shared_stack_stays_while_slots_use_it(lighter: Sandbox) -> None:
    result = lighter.inv("observability", "down")
    one_error_line(result, Exit.OTHER_LAYOUT, "the shared observability stack (a stopped")
    assert sorted(observability_containers()) == ["grafana", "jaeger", "prometheus"]


def test_a_slot_taken_down_leaves_the_targets(lighter: Sandbox) -> None:
    assert_ok(lighter.inv("down", f"--slot={B}", "--volumes"))

    def gone() -> object:
        seen = scraped()
        return (
            True
            if not [k for k in seen if k[0] == str(B)] and (str(A), "backend") in seen
            else seen
        )

    wait_for(f"slot {B}'s targets leave the shared Prometheus", gone, timeout=60)
    assert_ok(lighter.inv("down", f"--slot={A}", "--volumes"))
    assert_ok(lighter.inv("observability", "down"))
    assert observability_containers() == []
