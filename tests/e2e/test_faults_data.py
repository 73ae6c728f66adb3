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

Then: two `inv snapshot --name=X` from the two slots at once (both orders); the store's
modes; a `kill -9` of `inv snapshot` and what the next one removes; a corrupt manifest, a
relative and a file-shaped store; a database of another checkout (a second worktree of this
commit) refused by `restore`, `clone`, `down --volumes`, `up --fresh` and `up`; and `down
--all --volumes` listing by owner (without --yes, so nothing on this shared engine is touched).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.errors import Exit
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, project_containers
from tests.e2e.test_faults import (
    HEAL,
    INV,
    MARK,
    REFUSALS,
    TABLE,
    Outcome,
    Suite,
    assert_none,
    both_slots_up,
    checkout_copy,
    inv_in,
    lost,
    refusal_problems,
    sql,
    timed,
    volume_exists,
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
    return Path(suite.sandbox.env["KTRDR_SNAPSHOT_DIR"])


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
    # A snapshot store of this module's own (the HOME is the session's): other modules see
    # none of its snapshots, hidden or not.
    private = sandbox.home / f"faults-data-snapshots-{MARK}"
    sandbox = Sandbox(sandbox.home, {**sandbox.env, "KTRDR_SNAPSHOT_DIR": str(private)})
    with both_slots_up(Suite(sandbox), request.config) as state:
        yield state


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
SEEN: dict[str, int] = {}  # the databases each interruption left, before the healer ran


def test_restore_interrupted_at_many_points(suite: Suite) -> None:
    env = suite.sandbox.env
    # Some 30 MB of rows make pg_restore take seconds even on a quiet, fast machine, so the
    # delays after "pg_restore of" land inside the restore wherever the suite runs.
    setup = (
        f"CREATE TABLE {ERA} (v text); INSERT INTO {ERA} VALUES ('new'); "
        "CREATE TABLE faults_bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS pad "
        "FROM generate_series(1, 300000) AS g;"
    )
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
    print(f"restore interrupted at {done} points ({len(points)} per signal); found: {SEEN}")
    assert done >= len(points), f"only {done} interruptions landed mid-restore"
    assert_none(problems + lost(suite, A))


def heal(suite: Suite, healer: str) -> list[str]:
    """Run the next command a user would, and check it left exactly one database and no dump
    file, and said what it did when there was something to do."""
    env = suite.sandbox.env
    problems: list[str] = []
    left_before = databases(suite, A)
    SEEN[",".join(left_before)] = SEEN.get(",".join(left_before), 0) + 1
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


# --- snapshots: one name one snapshot, private, partial files, hostile input -----------------


def start_inv(suite: Suite, root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [INV, "--search-root", str(root), *args],
        env={**suite.sandbox.env, "PYTHONUNBUFFERED": "1"},  # each line as it is printed
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], started: float) -> tuple[Result, float]:
    out, err = proc.communicate(timeout=300)
    args = tuple(str(a) for a in proc.args) if isinstance(proc.args, list) else ()
    return Result(args, proc.returncode, out, err), time.monotonic() - started


def dumped_slot(suite: Suite, dump: Path) -> str:
    """Which slot's data a dump holds: its `faults_slot` row, read by pg_restore in slot A's
    db container (the file copied there under a name no sweep touches, then removed)."""
    db = next(c for c in project_containers(A) if c.service == "db")
    inner = f"/tmp/faults-check-{MARK}.dump"
    env = suite.sandbox.env
    assert run(["docker", "cp", str(dump), f"{db.id}:{inner}"], env=env, timeout=120).ok
    try:
        listed = run(
            ["docker", "exec", db.id, "pg_restore", "-a", "-t", SLOT_TABLE, "-f", "-", inner],
            env=env,
            timeout=120,
        )
    finally:
        run(["docker", "exec", db.id, "rm", "-f", inner], env=env, timeout=60)
    found = [line for line in listed.stdout.splitlines() if line.strip().isdigit()]
    return found[0].strip() if found else f"<none: {listed.stderr[-200:]}>"


SLOT_TABLE = f"faults_slot_{MARK}"


def test_two_snapshots_of_one_name_from_two_slots(suite: Suite) -> None:
    """Both orders: the first started may finish first or not; whichever takes the name
    keeps it, with its own slot's data under its own manifest, and the other is refused."""
    for slot in (A, B):
        statement = f"CREATE TABLE IF NOT EXISTS {SLOT_TABLE} (v int); DELETE FROM {SLOT_TABLE};"
        assert sql(suite.sandbox, slot, f"{statement} INSERT INTO {SLOT_TABLE} VALUES ({slot});").ok
    problems: list[str] = []
    for first, second in ((A, B), (B, A)):
        name = f"race-{first}-{second}-{MARK}"
        started = time.monotonic()
        procs = {first: start_inv(suite, ROOT, "snapshot", f"--slot={first}", f"--name={name}")}
        time.sleep(0.2)
        procs[second] = start_inv(suite, ROOT, "snapshot", f"--slot={second}", f"--name={name}")
        results = {slot: finish(proc, started) for slot, proc in procs.items()}
        won = [slot for slot, (result, _) in results.items() if result.ok]
        if len(won) != 1:
            problems.append(f"{name}: {len(won)} succeeded: {results}")
            continue
        (winner,) = won
        loser = second if winner == first else first
        result, seconds = results[loser]
        problems += [
            f"{name}, slot {loser}: {p}"
            for p in refusal_problems(result, seconds, Exit.USAGE, ["exists already", "--name"])
        ]
        manifest = json.loads((store(suite) / f"{name}.json").read_text())
        if manifest["source_slot"] != winner:
            problems.append(f"{name}: manifest names slot {manifest['source_slot']}, not {winner}")
        holds = dumped_slot(suite, store(suite) / f"{name}.dump")
        if holds != str(winner):
            problems.append(f"{name}: the dump holds slot {holds}'s data, the manifest {winner}'s")
    left = sorted(p.name for p in store(suite).iterdir() if p.name.startswith("."))
    if left != [".store.lock"]:
        problems.append(f"hidden files left in the store: {left}")
    assert_none(problems + lost(suite, A) + lost(suite, B))


def test_snapshots_and_state_are_private(suite: Suite) -> None:
    directory = store(suite)
    problems = []
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        problems.append(f"{directory} is {oct(directory.stat().st_mode)}")
    for path in directory.glob("*.*"):
        if path.suffix in (".dump", ".json") and stat.S_IMODE(path.stat().st_mode) != 0o600:
            problems.append(f"{path.name} is {oct(stat.S_IMODE(path.stat().st_mode))}")
    locks = Path(suite.sandbox.env["KTRDR_LOCK_DIR"])
    for path in [*locks.iterdir(), *(ROOT / ".sandbox").glob(f"slot-{A}.*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            problems.append(f"{path} is {oct(mode)}")
    if stat.S_IMODE(locks.stat().st_mode) & 0o077:
        problems.append(f"{locks} is {oct(stat.S_IMODE(locks.stat().st_mode))}")
    assert_none(problems)


def test_a_killed_snapshot_leaves_what_the_next_one_removes(suite: Suite) -> None:
    problems: list[str] = []
    # Some 40 MB of rows, so that the dump takes long enough to be killed in the middle.
    filler = f"faults_filler_{MARK}"
    rows_sql = f"CREATE TABLE {filler} AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t"
    assert sql(suite.sandbox, A, f"{rows_sql} FROM generate_series(1, 400000) g;").ok
    for attempt, delay in enumerate((0.3, 0.1, 0.6, 0.05, 1.0)):
        name = f"killed-{attempt}-{MARK}"
        proc = start_inv(suite, ROOT, "snapshot", f"--slot={A}", f"--name={name}")
        assert proc.stdout is not None
        for line in proc.stdout:
            if "pg_dump of slot" in line:
                break
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)  # `kill -9` of inv: its pg_dump runs on
        proc.communicate(timeout=60)
        partials = [p for p in store(suite).iterdir() if p.name.endswith(".partial")]
        time.sleep(2.0)  # the orphaned pg_dump finishes writing into the container's /tmp
        dumps = container_dumps(suite, A)
        if partials or dumps:
            break
    else:
        pytest.fail("no kill landed while the snapshot was being written")
    result = inv_in(ROOT, suite.sandbox.env, "snapshot", f"--slot={A}", f"--name=after-{MARK}")
    said = result.stdout + result.stderr
    if not result.ok or "Traceback" in said:
        problems.append(f"the next snapshot failed: {said[-600:]!r}")
    if partials and "partial file(s)" not in said:
        problems.append(f"{partials} were there and the next snapshot did not say so: {said!r}")
    if dumps and "dump file(s)" not in said:
        problems.append(f"{dumps} were there and the next snapshot did not say so: {said!r}")
    left = [p.name for p in store(suite).iterdir() if p.name.endswith(".partial")]
    if left or container_dumps(suite, A):
        problems.append(f"left after the next snapshot: {left} {container_dumps(suite, A)}")
    print(
        f"killed snapshot (attempt {attempt + 1}, {delay}s after pg_dump began) left "
        f"{len(partials)} partial(s), {len(dumps)} dump(s): all removed"
    )
    assert sql(suite.sandbox, A, f"DROP TABLE {filler};").ok
    assert_none(problems + lost(suite, A))


def test_a_corrupt_manifest_and_a_hostile_store(suite: Suite) -> None:
    env = suite.sandbox.env
    bad = store(suite) / f"bad-{MARK}.json"
    if not (store(suite) / f"after-{MARK}.json").exists():  # run alone: make the good one
        assert inv_in(ROOT, env, "snapshot", f"--slot={A}", f"--name=after-{MARK}").ok
    good = json.loads((store(suite) / f"after-{MARK}.json").read_text())
    bad.write_text(json.dumps({**good, "name": f"bad-{MARK}", "created": "yesterday"}))
    shutil.copy(store(suite) / f"after-{MARK}.dump", store(suite) / f"bad-{MARK}.dump")
    listed = inv_in(ROOT, env, "snapshots")
    problems = []
    if not listed.ok or "Traceback" in listed.stderr:
        problems.append(f"`inv snapshots` failed: {(listed.stdout + listed.stderr)[-600:]!r}")
    if f"after-{MARK}" not in listed.stdout:
        problems.append(f"a good snapshot is hidden: {listed.stdout!r}")
    if not any(f"bad-{MARK}" in ln and "yesterday" in ln for ln in listed.stdout.splitlines()):
        problems.append(f"the bad one is not listed as unreadable with why: {listed.stdout!r}")
    gone = inv_in(ROOT, env, "snapshot", f"--delete=bad-{MARK}")
    if not gone.ok or bad.exists():
        problems.append(f"deleting the unreadable snapshot failed: {gone.stderr[-300:]!r}")
    a_file = suite.sandbox.home / "not-a-dir"
    a_file.write_text("x")
    cases = [
        ({"KTRDR_SNAPSHOT_DIR": "snaps"}, ["snapshots"], Exit.BAD_ENV, ["relative", "absolute"]),
        (
            {"KTRDR_SNAPSHOT_DIR": str(a_file)},
            ["snapshot", f"--slot={A}", "--name=x"],
            Exit.USAGE,
            [str(a_file), "not a directory"],
        ),
        ({"KTRDR_SNAPSHOT_DIR": str(a_file)}, ["snapshots"], Exit.USAGE, ["not a directory"]),
    ]
    for extra, args, code, words in cases:
        result, seconds = timed(ROOT, {**env, **extra}, *args)
        problems += [
            f"{args[0]} {extra}: {p}" for p in refusal_problems(result, seconds, code, words)
        ]
    if (ROOT / "snaps").exists():
        problems.append("a relative KTRDR_SNAPSHOT_DIR wrote into the checkout")
    assert_none(problems + lost(suite, A))


# --- every command that changes or removes a database checks its owner ------------------------


@dataclass
class Other:
    checkout: Path | None = None


OTHER = Other()


def test_another_checkouts_database_is_refused_by_every_command(suite: Suite) -> None:
    """Slot B's database made by another checkout: `restore` and `clone` while it runs there,
    then (taken down there, its volume kept) `down --volumes` and `up --fresh` from here."""
    env = suite.sandbox.env
    assert inv_in(ROOT, env, "down", f"--slot={B}", "--volumes").ok
    suite.rows.discard(B)
    other = OTHER.checkout = checkout_copy(suite, "owner")
    assert inv_in(other, env, "up", f"--slot={B}", timeout=HEAL + 60).ok
    keep = f"CREATE TABLE {TABLE} (v text); INSERT INTO {TABLE} VALUES ('{MARK}');"
    assert sql(suite.sandbox, B, keep, root=other).ok
    problems = []

    def still_there(when: str, running: bool = True) -> None:
        if running and MARK not in sql(suite.sandbox, B, f"SELECT v FROM {TABLE};", other).stdout:
            problems.append(f"after {when}: slot {B}'s row is gone")
        if not volume_exists(B, env):
            problems.append(f"after {when}: slot {B}'s volume is gone")

    words = [str(other), "--other-checkouts"]
    mine = f"owner-{MARK}"
    assert inv_in(ROOT, env, "snapshot", f"--slot={A}", f"--name={mine}").ok
    for args in (
        ["restore", f"--slot={B}", mine, "--yes"],
        ["clone", f"--from={A}", f"--to={B}", "--yes"],
    ):
        result, seconds = timed(ROOT, env, *args)
        problems += [
            f"{args[0]}: {p}" for p in refusal_problems(result, seconds, Exit.OTHER_CHECKOUT, words)
        ]
        still_there(args[0])
    assert inv_in(other, env, "down", f"--slot={B}").ok  # its containers go, its volume stays
    for args in (
        ["down", f"--slot={B}", "--volumes"],
        ["up", f"--slot={B}", "--fresh", "--yes"],
        ["up", f"--slot={B}"],
    ):
        result, seconds = timed(ROOT, env, *args)
        problems += [
            f"{' '.join(args)}: {p}"
            for p in refusal_problems(result, seconds, Exit.OTHER_CHECKOUT, words)
        ]
        still_there(" ".join(args), running=False)
    if project_containers(B):
        problems.append("a refused command left containers")
    assert_none(problems + lost(suite, A))


def test_down_all_lists_volumes_by_owner_and_keeps_other_checkouts(suite: Suite) -> None:
    """Without a terminal and without --yes `down --all` lists, then refuses: nothing on this
    shared engine is touched (the acting path is unit-tested with a fake engine)."""
    assert OTHER.checkout is not None, "runs after the case above"
    env = suite.sandbox.env
    problems = []
    for extra, verdict in (([], "kept: not this checkout's"), (["--other-checkouts"], "removed")):
        result, seconds = timed(ROOT, env, "down", "--all", "--volumes", *extra)
        problems += refusal_problems(result, seconds, Exit.USAGE, ["--yes"])
        lines = result.stdout.splitlines()
        mine = [ln for ln in lines if ln.startswith(f"slot {A} ")]
        theirs = [ln for ln in lines if ln.startswith(f"slot {B} ")]
        if not mine or "of this checkout (removed)" not in mine[0]:
            problems.append(f"{extra}: slot {A} not listed as this checkout's, removed: {mine}")
        if not theirs or str(OTHER.checkout) not in theirs[0] or verdict not in theirs[0]:
            problems.append(
                f"{extra}: slot {B} not listed as {OTHER.checkout}'s, {verdict}: {theirs}"
            )
        if lines.index(mine[0]) > lines.index(theirs[0]) if mine and theirs else False:
            problems.append("this checkout's volumes are not listed first")
    if not volume_exists(B, env) or not volume_exists(A, env):
        problems.append("a refused `down --all` removed a volume")
    # The override, from here: slot B's database goes; B is this checkout's again after.
    result = inv_in(ROOT, env, "down", f"--slot={B}", "--volumes", "--other-checkouts")
    if not result.ok or volume_exists(B, env):
        problems.append(f"--other-checkouts did not remove it: {result.stderr[-400:]!r}")
    assert inv_in(ROOT, env, "up", f"--slot={B}", timeout=HEAL + 60).ok
    write_keepsakes(suite, B)
    assert_none(problems + lost(suite, A) + lost(suite, B))
