"""Two slots side by side, driven through the `inv` tasks as a user drives them.

One module-scoped pair of stacks serves the tests in order: both up at once, verify, isolation,
a restart of one leaving the other untouched, then `down` with and without volumes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from sandbox import docker, slots
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
TABLE = f"e2e_isolation_{uuid.uuid4().hex[:8]}"


def api(slot: int, path: str) -> object:
    url = f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def volume_exists(slot: int, env: dict[str, str]) -> bool:
    name = f"{slots.project_name(slot)}_db-data"
    return run(["docker", "volume", "inspect", name], env=env, timeout=30).ok


def running_ids(slot: int) -> dict[str, str]:
    return {c.service: c.id for c in project_containers(slot) if c.running}


def sql(sandbox: Sandbox, slot: int, statement: str) -> Result:
    """SQL through `inv psql`, as a user piping a script into it."""
    return sandbox.inv("psql", f"--slot={slot}", input_text=f"\\set ON_ERROR_STOP 1\n{statement}\n")


def cells(result: Result) -> list[str]:
    """psql's aligned output, one stripped line each: " t" -> "t"."""
    return [line.strip() for line in result.stdout.splitlines()]


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def stacks(sandbox: Sandbox) -> Iterator[dict[int, Result]]:
    claim_slots((A, B), sandbox.env)
    results: dict[int, Result] = {}

    def start(slot: int) -> None:
        results[slot] = sandbox.inv("up", f"--slot={slot}")

    threads = [threading.Thread(target=start, args=(slot,)) for slot in (A, B)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        yield results
    finally:
        # Always, even on failure or Ctrl-C: nothing of ours is left running.
        for slot in (A, B):
            sandbox.inv("down", f"--slot={slot}", "--volumes")


def test_both_slots_come_up_at_the_same_time(stacks: dict[int, Result]) -> None:
    for slot in (A, B):
        assert_ok(stacks[slot])
        assert f"slot {slot} is ready" in stacks[slot].stdout
        assert f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}" in stacks[slot].stdout


def test_verify_passes_for_both(stacks: dict[int, Result], sandbox: Sandbox) -> None:
    result = sandbox.inv("verify", f"--slot={A}", f"--slot={B}")
    assert_ok(result)
    for check in ("health", "own-database", "ports", "shared-dir"):
        assert check in result.stdout


def test_status_shows_both_running(stacks: dict[int, Result], sandbox: Sandbox) -> None:
    # The gate checks readiness itself; Docker's own healthchecks run every 5 s, so the
    # healthy count in `inv status` may trail the gate by a few seconds.
    deadline = time.monotonic() + 60
    while True:
        result = sandbox.inv("status")
        assert_ok(result)
        rows = {
            slot: next(ln for ln in result.stdout.splitlines() if slots.project_name(slot) in ln)
            for slot in (A, B)
        }
        if all("running" in row and "9/9" in row for row in rows.values()):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(1)


def test_health_reports_own_slot(stacks: dict[int, Result]) -> None:
    for slot in (A, B):
        health = api(slot, "/health")
        assert isinstance(health, dict)
        assert health["status"] == "ok"
        assert health["slot"] == slot
        assert health["database"]["reachable"] is True


def test_each_slot_has_its_own_database(stacks: dict[int, Result], sandbox: Sandbox) -> None:
    assert_ok(sql(sandbox, A, f"CREATE TABLE {TABLE} (id int); INSERT INTO {TABLE} VALUES (42);"))
    in_a = sql(sandbox, A, f"SELECT to_regclass('{TABLE}') IS NOT NULL AS present;")
    in_b = sql(sandbox, B, f"SELECT to_regclass('{TABLE}') IS NOT NULL AS present;")
    assert_ok(in_a)
    assert_ok(in_b)
    assert "t" in cells(in_a), in_a.stdout
    assert "f" in cells(in_b), in_b.stdout
    dbs = {
        c.slot: c.id for c in docker.sandbox_containers() if c.service == "db" and c.slot in (A, B)
    }
    assert len(set(dbs.values())) == 2


def test_shared_directory_is_seen_by_both(stacks: dict[int, Result], sandbox: Sandbox) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}.csv"
    probe = sandbox.shared / "data" / name
    probe.write_text("date,open\n2024-01-02,1.0\n")
    try:
        for slot in (A, B):
            listing = api(slot, "/data")
            assert isinstance(listing, dict)
            assert name in listing["data"], listing
            worker = f"{slots.project_name(slot)}-training-worker-2-1"
            seen = run(["docker", "exec", worker, "cat", f"/app/data/{name}"], env=sandbox.env)
            assert seen.stdout == probe.read_text()
    finally:
        probe.unlink()


def test_up_again_only_reruns_the_gate(stacks: dict[int, Result], sandbox: Sandbox) -> None:
    before = running_ids(B)
    assert_ok(sandbox.inv("up", f"--slot={B}"))
    assert running_ids(B) == before


def slot_state(sandbox: Sandbox, slot: int) -> tuple[str, int]:
    """The slot's state and running services as `inv status --json` has them."""
    result = sandbox.inv("status", "--json", f"--slot={slot}")
    assert_ok(result)
    [row] = json.loads(result.stdout)["slots"]
    return row["state"], row["services"]["running"]


def test_pause_freezes_one_slot_and_resume_runs_it_at_once(
    stacks: dict[int, Result], sandbox: Sandbox
) -> None:
    other = running_ids(A)
    assert_ok(sandbox.inv("pause", f"--slot={B}"))
    try:
        assert slot_state(sandbox, B)[0] == "paused"
        assert running_ids(A) == other, "pausing one slot touched the other"
        # What status relies on: Docker marks a paused container unhealthy without a failed
        # check (its failing streak stays below the retries).
        backend = f"{slots.project_name(B)}-backend-1"
        health = run(["docker", "inspect", "--format", "{{json .State.Health}}", backend],
                     env=sandbox.env, timeout=30)  # fmt: skip
        assert json.loads(health.stdout)["Status"] == "unhealthy", health.stdout
        assert json.loads(health.stdout)["FailingStreak"] < 3, health.stdout
    finally:
        assert_ok(sandbox.inv("resume", f"--slot={B}"))
    # Right after the thaw the containers still carry that mark (the next check is up to a
    # healthcheck interval away): the slot is running, not failed.
    assert slot_state(sandbox, B) == ("running", len(slots.SERVICES))
    answer = api(B, "/health")
    assert isinstance(answer, dict) and answer["status"] == "ok"


def test_same_slot_twice_at_once_does_not_corrupt(
    stacks: dict[int, Result], sandbox: Sandbox
) -> None:
    # From a stopped slot, so that both commands would run `docker compose up` if the per-slot
    # lock did not make the second wait for the first.
    assert_ok(sandbox.inv("down", f"--slot={B}"))
    results: list[Result] = []
    threads = [
        threading.Thread(target=lambda: results.append(sandbox.inv("up", f"--slot={B}")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert_ok(result)
    outputs = [r.stdout for r in results]
    assert sum("`docker compose up -d` took" in out for out in outputs) == 1, outputs
    assert sum("only the gate ran" in out for out in outputs) == 1, outputs
    assert any(f"slot {B} is busy" in out for out in outputs), outputs
    assert len(running_ids(B)) == len(slots.SERVICES)


def test_restart_of_one_slot_leaves_the_other_untouched(
    stacks: dict[int, Result], sandbox: Sandbox
) -> None:
    other = running_ids(B)
    assert len(other) == 9
    down = sandbox.inv("down", f"--slot={A}")
    assert_ok(down)
    assert running_ids(A) == {}
    assert volume_exists(A, sandbox.env), "down without --volumes removed the database volume"
    health = api(B, "/health")
    assert isinstance(health, dict) and health["status"] == "ok"

    assert_ok(sandbox.inv("up", f"--slot={A}"))
    assert running_ids(B) == other, "restarting one slot touched the other's containers"
    kept = sql(sandbox, A, f"SELECT id FROM {TABLE};")
    assert_ok(kept)
    assert "42" in kept.stdout, "the database did not survive down/up"


def test_down_with_volumes_removes_only_that_slot(
    stacks: dict[int, Result], sandbox: Sandbox
) -> None:
    other = running_ids(B)
    assert_ok(sandbox.inv("down", f"--slot={A}", "--volumes"))
    assert running_ids(A) == {}
    assert not volume_exists(A, sandbox.env)
    assert volume_exists(B, sandbox.env)
    assert running_ids(B) == other


def test_port_held_by_a_process_is_refused_and_nothing_is_created(
    engine: str, sandbox: Sandbox
) -> None:
    slot = A  # free again: the test before took it down with its volumes
    claim_slots((slot,), sandbox.env)
    port = slots.ports(slot)["KTRDR_API_PORT"]
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", port))
    except OSError:
        holder.close()
        pytest.fail(f"port {port} is busy before the test; free it to run this test", pytrace=False)
    holder.listen()
    try:
        started = time.monotonic()
        refused = sandbox.inv("up", f"--slot={slot}")
        assert refused.returncode == 6, refused.stderr
        line = refused.stderr.strip().splitlines()[-1]
        assert f"port {port}" in line and "backend" in line, line
        assert "Traceback" not in refused.stderr
        assert time.monotonic() - started < 60
        assert project_containers(slot) == []
        assert not volume_exists(slot, sandbox.env)
    finally:
        holder.close()
