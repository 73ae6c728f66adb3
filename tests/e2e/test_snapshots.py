"""Snapshots, restore and clone on two real slots, with a private HOME (so a private snapshot
store, `$HOME/.ktrdr/snapshots`). Rows are written and read through `inv psql`, apart from the
module under test.

The tests drive `inv snapshot/snapshots/restore/clone` as a user does (no terminal, so
replacing a database with tables needs --yes); one calls the module to see what it asks.
They run in order on one module-scoped pair of stacks.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import ROOT, compose, slots
from sandbox.errors import SandboxError
from sandbox.runner import Result, run
from sandbox.snapshots import operations as snapshots
from sandbox.snapshots import store as snapshot_store
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
ORIGINAL = ["1|apple|10", "2|pear|20", "3|plum|30"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sql(sandbox: Sandbox, slot: int, statement: str) -> list[str]:
    """Rows of `statement` through `inv psql`, unaligned: ["1|apple|10", ...]."""
    script = f"\\set ON_ERROR_STOP 1\n\\pset format unaligned\n\\pset tuples_only on\n{statement}\n"
    result = sandbox.inv("psql", f"--slot={slot}", input_text=script)
    assert_ok(result)
    return [line for line in result.stdout.splitlines() if line and "|" in line]


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def database_reachable(slot: int) -> bool:
    url = f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1/health"
    with NO_PROXY.open(url, timeout=5) as response:
        return bool(json.load(response)["database"]["reachable"])


@pytest.fixture(scope="module")
def stacks(sandbox: Sandbox) -> Iterator[dict[str, str]]:
    """Slots A and B up; the environment the module's functions get (private HOME)."""
    claim_slots((A, B), sandbox.env)
    try:
        for slot in (A, B):
            assert_ok(sandbox.inv("up", f"--slot={slot}"))
        yield dict(sandbox.env)
    finally:
        for slot in (A, B):
            sandbox.inv("down", f"--slot={slot}", "--volumes")


@pytest.fixture(scope="module")
def compose_cmd(stacks: dict[str, str]) -> list[str]:
    return compose.find_compose(stacks)


def target(slot: int) -> compose.Target:
    return compose.load_target(ROOT, slot)


def test_restore_brings_back_the_rows_of_the_snapshot(
    sandbox: Sandbox, stacks: dict[str, str], compose_cmd: list[str]
) -> None:
    sql(
        sandbox,
        A,
        "CREATE TABLE fruit (id int PRIMARY KEY, name text, price int);"
        "INSERT INTO fruit VALUES (1, 'apple', 10), (2, 'pear', 20), (3, 'plum', 30);",
    )
    assert_ok(sandbox.inv("snapshot", f"--slot={A}", "--name=e2e-base"))
    store = sandbox.home / ".ktrdr" / "snapshots"
    # The store's own lock beside the snapshots; no partial file left behind.
    assert sorted(p.name for p in store.iterdir()) == [
        ".store.lock",
        "e2e-base.dump",
        "e2e-base.json",
    ]
    manifest = json.loads((store / "e2e-base.json").read_text())
    assert (manifest["source_slot"], manifest["app"], manifest["migration"]) == (
        A,
        "reference",
        None,
    )
    listed = sandbox.inv("snapshots")
    assert_ok(listed)
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
        ["e2e-base", str(A), "reference"]
    ]

    sql(
        sandbox,
        A,
        "UPDATE fruit SET price = price * 100; DELETE FROM fruit WHERE id = 1;"
        "CREATE TABLE later (x int); INSERT INTO fruit VALUES (4, 'fig', 40);",
    )
    assert sql(sandbox, A, "SELECT * FROM fruit ORDER BY id") != ORIGINAL
    refused = sandbox.inv("restore", f"--slot={A}", "e2e-base")
    assert refused.returncode != 0 and "nothing done" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert_ok(sandbox.inv("restore", f"--slot={A}", "e2e-base", "--yes"))
    assert sql(sandbox, A, "SELECT * FROM fruit ORDER BY id") == ORIGINAL
    # Exactly the snapshot: a table created after it is gone, not kept beside it.
    assert sql(sandbox, A, "SELECT to_regclass('later') IS NULL, 1 AS one") == ["t|1"]
    # The running backend reconnects to the swapped-in database by itself.
    assert database_reachable(A)


def test_clone_copies_a_into_b_and_leaves_a_alone(
    sandbox: Sandbox, stacks: dict[str, str], compose_cmd: list[str]
) -> None:
    asked: list[str] = []

    def yes(question: str) -> bool:
        asked.append(question)
        return True

    snapshots.clone(target(A), target(B), compose_cmd, stacks, yes=False, confirm=yes)
    assert len(asked) == 1 and f"slot {B}'s database has" in asked[0]  # B's workers table
    assert sql(sandbox, B, "SELECT * FROM fruit ORDER BY id") == ORIGINAL
    sql(sandbox, B, "UPDATE fruit SET name = 'changed in B'")
    assert sql(sandbox, A, "SELECT * FROM fruit ORDER BY id") == ORIGINAL
    assert database_reachable(B)
    # Nothing of the clone's temporary archive is left in the store.
    store = sandbox.home / ".ktrdr" / "snapshots"
    # The store's own lock beside the snapshots; no partial file left behind.
    assert sorted(p.name for p in store.iterdir()) == [
        ".store.lock",
        "e2e-base.dump",
        "e2e-base.json",
    ]


def test_restore_answered_no_changes_nothing(
    sandbox: Sandbox, stacks: dict[str, str], compose_cmd: list[str]
) -> None:
    before = sql(sandbox, B, "SELECT * FROM fruit ORDER BY id")
    refused = sandbox.inv("clone", f"--from={A}", f"--to={B}")
    assert refused.returncode != 0 and "nothing done" in refused.stderr
    assert sql(sandbox, B, "SELECT * FROM fruit ORDER BY id") == before
    with pytest.raises(SandboxError, match="nothing done"):
        snapshots.restore(
            target(B), compose_cmd, stacks, "e2e-base", yes=False, confirm=lambda q: False
        )
    assert sql(sandbox, B, "SELECT * FROM fruit ORDER BY id") == before


def test_a_disk_that_fills_during_a_snapshot_leaves_no_file(
    sandbox: Sandbox, stacks: dict[str, str], compose_cmd: list[str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs this test fills needs root")
    # About 6 MB once dumped with gzip -1: more than the 1 MiB tmpfs holds.
    sql(
        sandbox,
        A,
        "CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t"
        " FROM generate_series(1, 150000) g;",
    )
    with tempfile.TemporaryDirectory(prefix="ktrdr-e2e-tmpfs-") as mount_point:
        assert_ok(run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point]))
        try:
            small = {**stacks, snapshot_store.SNAPSHOT_DIR_VARIABLE: mount_point}
            with pytest.raises(SandboxError, match="the disk is full"):
                snapshots.snapshot(target(A), compose_cmd, small, name="too-big")
            assert [p.name for p in Path(mount_point).iterdir()] == [".store.lock"]
        finally:
            run(["umount", mount_point])
    sql(sandbox, A, "DROP TABLE filler;")


def test_snapshot_of_a_stopped_slot_is_one_line(
    sandbox: Sandbox, stacks: dict[str, str], compose_cmd: list[str]
) -> None:
    assert_ok(sandbox.inv("down", f"--slot={B}"))
    refused = sandbox.inv("snapshot", f"--slot={B}", "--name=never")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: slot {B} is not running: `inv up --slot={B}` first"
    )
    assert [r.name for r in snapshot_store.list_snapshots(stacks)] == ["e2e-base"]
    unknown = sandbox.inv("restore", f"--slot={A}", "no-such-snapshot", "--yes")
    assert unknown.returncode == 2 and "no-such-snapshot" in unknown.stderr
    assert_ok(sandbox.inv("snapshot", "--delete=e2e-base"))
    assert snapshot_store.list_snapshots(stacks) == []
