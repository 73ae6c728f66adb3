"""The fault suite's data-loss cases: restore, snapshots and teardown under interrupts, races,
hostile input and another checkout, driven through `inv` as a user meets them.

As in test_faults.py: every refusal is exactly one `error:` line naming the cause and the fix,
no traceback, a known exit code, within 15 s; a row written into each slot's database at the
start must be there afterwards. Slot A (first of KTRDR_E2E_SLOTS) and slot B run for the whole
module; the snapshot store is the private HOME's. The session ends with `faults: N/M held`
for this module's cases.

The interrupted restore is exercised at many points, not at one lucky moment: `inv restore`
prints a line as it starts pg_restore and another as it swaps; SIGINT (a terminal's Ctrl-C,
to the whole process group) and SIGKILL (`kill -9` of `inv` alone, its children left running)
are sent at a spread of delays after each line. After every interruption `ktrdr` must be
there, holding the old or the new data, before anything heals it; the next `inv status`,
`inv up` or `inv restore` must leave exactly one database and say what it did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.errors import Exit
from sandbox.runner import Result
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots
from tests.e2e.test_faults import (
    INV,
    MARK,
    REFUSALS,
    Outcome,
    Suite,
    assert_none,
    force_down,
    inv_in,
    lost,
    remove_copy,
    sql,
    summarize,
    write_keepsakes,
)

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
ERA = f"faults_era_{MARK}"  # one row: 'old' in the slot's database, 'new' in the snapshot
SNAPSHOT = f"faults-new-{MARK}"


# --- helpers -----------------------------------------------------------------------------------


def rows(suite: Suite, slot: int, statement: str, root: Path = ROOT) -> list[str]:
    """The unaligned rows of `statement` through `inv psql` ([] when it failed)."""
    script = f"\\set QUIET 1\n\\pset format unaligned\n\\pset tuples_only on\n{statement}\n"
    result = sql(suite.sandbox, slot, script, root=root)
    return [line for line in result.stdout.splitlines() if line.strip()] if result.ok else []


def databases(suite: Suite, slot: int) -> list[str]:
    """The slot's ktrdr databases as the server lists them (asked through `inv psql`)."""
    return rows(
        suite, slot, "SELECT datname FROM pg_database WHERE datname LIKE 'ktrdr%' ORDER BY 1;"
    )


def container_dumps(suite: Suite, slot: int) -> list[str]:
    result = inv_in(
        ROOT, suite.sandbox.env, "exec", f"--slot={slot}", "--service=db", "--",
        "sh", "-c", "ls /tmp | grep '^ktrdr-' || true",
    )  # fmt: skip
    return result.stdout.split()


def store(suite: Suite) -> Path:
    return suite.sandbox.home / ".ktrdr" / "snapshots"


def output_of(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


@dataclass
class Interrupted:
    after: str  # the line the signal was timed from
    delay: float
    signal: str
    code: int
    output: str
    finished_first: bool  # the command ended before the signal could be sent


def interrupt_restore(
    suite: Suite, slot: int, after: str, delay: float, sig: signal.Signals
) -> Interrupted:
    """`inv restore --yes` in its own process group, signalled `delay` s after it printed a
    line containing `after`: SIGINT to the group (Ctrl-C), SIGKILL to `inv` alone (kill -9)."""
    cmd = [INV, "--search-root", str(ROOT), "restore", f"--slot={slot}", SNAPSHOT, "--yes"]
    proc = subprocess.Popen(
        cmd,
        env={**suite.sandbox.env, "PYTHONUNBUFFERED": "1"},  # each line as it is printed
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if after in line:
            break
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        if sig is signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    rest = output_of(proc)
    return Interrupted(after, delay, sig.name, proc.returncode, "".join(seen) + rest, finished)


def era(suite: Suite, slot: int) -> str:
    found = rows(suite, slot, f"SELECT v FROM {ERA};")
    return found[0] if found else "<none>"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[Suite]:
    claim_slots((A, B), sandbox.env)
    state = Suite(sandbox)
    try:
        results: dict[int, Result] = {}

        def start(slot: int) -> None:
            results[slot] = sandbox.inv("up", f"--slot={slot}")

        threads = [threading.Thread(target=start, args=(slot,)) for slot in (A, B)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for slot in (A, B):
            assert results[slot].ok, results[slot].stderr[-2000:]
            write_keepsakes(state, slot)
        yield state
    finally:
        for slot in (A, B):
            if not sandbox.inv("down", f"--slot={slot}", "--volumes", timeout=300).ok:
                force_down(slot, sandbox.env)
        for copy in state.copies:
            if copy.exists():
                remove_copy(copy, sandbox.env)
        summarize(state, request.config)


@pytest.fixture(autouse=True)
def outcome(suite: Suite, request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    started = time.monotonic()
    REFUSALS.clear()
    yield
    held = request.session.testsfailed == failed_before
    seconds = time.monotonic() - started
    suite.outcomes.append(Outcome(request.node.name, held, seconds, list(REFUSALS)))


# --- restore: atomic from the slot's point of view -----------------------------------------------

# Seconds after "pg_restore of" (copy, side database, pg_restore, swap all lie ahead) and after
# "swapping" (the swap's transaction, then the drop of the previous database).
DURING_RESTORE = (0.0, 0.3, 0.6, 1.0, 1.5)
DURING_SWAP = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
HEALERS = ("status", "restore", "status", "up")


def test_restore_interrupted_at_many_points(suite: Suite) -> None:
    env = suite.sandbox.env
    setup = f"CREATE TABLE {ERA} (v text); INSERT INTO {ERA} VALUES ('new');"
    assert sql(suite.sandbox, A, setup).ok
    made = inv_in(ROOT, env, "snapshot", f"--slot={A}", f"--name={SNAPSHOT}")
    assert made.ok, made.stderr
    problems: list[str] = []
    points = [("pg_restore of", d) for d in DURING_RESTORE]
    points += [("swapping the restored database", d) for d in DURING_SWAP]
    done = 0
    for sig in (signal.SIGINT, signal.SIGKILL):
        for index, (after, delay) in enumerate(points):
            assert sql(suite.sandbox, A, f"UPDATE {ERA} SET v = 'old';").ok
            hit = interrupt_restore(suite, A, after, delay, sig)
            where = f"{sig.name} {delay:.2f}s after {after!r}"
            done += not hit.finished_first
            if "Traceback" in hit.output:
                problems.append(f"{where}: a traceback: {hit.output[-500:]!r}")
            if sig is signal.SIGINT and not hit.finished_first:
                last = [line for line in hit.output.splitlines() if line.strip()][-1:]
                if hit.code != Exit.INTERRUPTED or not last or "interrupted" not in last[0]:
                    problems.append(f"{where}: exit {hit.code}, last line {last}")
            # Before anything heals it: the slot has its database, the old one or the new.
            now = era(suite, A)
            if now not in ("old", "new"):
                problems.append(f"{where}: no ktrdr with data right after: {now!r}")
            healer = HEALERS[index % len(HEALERS)]
            problems += [f"{where}: {p}" for p in heal(suite, healer)]
            if era(suite, A) not in ("old", "new"):
                problems.append(f"{where}: after `inv {healer}` ktrdr holds {era(suite, A)!r}")
    print(f"restore interrupted at {done} points ({len(points)} per signal)")
    assert done >= len(points), f"only {done} interruptions landed mid-restore"
    assert_none(problems + lost(suite, A))


def heal(suite: Suite, healer: str) -> list[str]:
    """Run the next command a user would, and check it left exactly one database and no dump
    file, and said what it did when there was something to do."""
    env = suite.sandbox.env
    problems: list[str] = []
    left_before = databases(suite, A)
    if healer == "restore":
        result = inv_in(ROOT, env, "restore", f"--slot={A}", SNAPSHOT, "--yes")
    elif healer == "up":
        result = inv_in(ROOT, env, "up", f"--slot={A}", timeout=300)
    else:
        result = inv_in(ROOT, env, "status", f"--slot={A}")
    said = result.stdout + result.stderr
    if not result.ok or "Traceback" in said:
        problems.append(f"`inv {healer}` failed: {said[-600:]!r}")
    if left_before != ["ktrdr"] and "interrupted restore was" not in said:
        problems.append(f"`inv {healer}` found {left_before} and did not say what it did")
    left = databases(suite, A)
    if left != ["ktrdr"]:
        problems.append(f"after `inv {healer}` the server has {left}")
    dumps = container_dumps(suite, A)
    if dumps:
        problems.append(f"after `inv {healer}` the db container keeps {dumps}")
    return problems
