"""Two slots on a three-node swarm through `inv up --swarm`, and `down` leaving nothing.

The tests run in file order and share the swarm (tests/swarm/conftest.py): up both slots,
look at where their services run and that they are apart, use status/logs/exec, take both
down and look at every node's engine.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandbox import ROOT
from sandbox.runner import run
from tests.support import swarmnodes
from tests.swarm.conftest import SLOTS, Swarm

pytestmark = pytest.mark.swarm


def _status(cluster: Swarm, slot: int) -> dict[str, Any]:
    result = cluster.inv("status", f"--slot={slot}", "--json")
    assert result.ok, result.stderr
    (found,) = json.loads(result.stdout)["swarm"]
    assert isinstance(found, dict)
    return found


def _sql(cluster: Swarm, slot: int, sql: str) -> str:
    """`sql` in the slot's database through `inv exec` (the db task's node); its output."""
    result = cluster.inv(
        "exec", f"--slot={slot}", "--service=db", "--", "psql", "-U", "ktrdr", "ktrdr", "-tAc", sql
    )
    assert result.ok, result.stderr
    return result.stdout.strip()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# Slot 2 runs a checkout of the reference app (--source): its code is copied to the shared
# node and bound there, and says so by its version.
SOURCE_SLOT = SLOTS[1]
AUTO_SLOT = 3  # --slot=auto's pick with slots 1 and 2 deployed
CHECKOUT_VERSION = "0.1.0+swarm-checkout"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkout") / "reference"
    shutil.copytree(ROOT / "containers" / "app", path)
    init = path / "ktrdr_reference" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "0.1.0"' in text
    init.write_text(text.replace('__version__ = "0.1.0"', f'__version__ = "{CHECKOUT_VERSION}"'))
    return path


def test_both_slots_come_up_through_the_gate(cluster: Swarm, checkout: Path) -> None:
    for slot in SLOTS:
        began = time.monotonic()
        source = [f"--source={checkout}"] if slot == SOURCE_SLOT else []
        result = cluster.inv("up", f"--slot={slot}", "--swarm", *source)
        cluster.figures.values[f"slot_{slot}_up_s"] = round(time.monotonic() - began, 1)
        assert result.ok, result.stdout[-3000:] + result.stderr[-2000:]
        assert f"slot {slot} is ready" in result.stdout
        assert "host mode" in result.stdout  # preflight says how ports are published
        assert "must exist there" in result.stdout  # and where the shared directory lives
        assert swarmnodes.REGISTRY in result.stdout  # and which registry the nodes pull from
    assert f"ktrdr-sandbox-{SOURCE_SLOT}_source on {swarmnodes.node_name(2)}" in result.stdout


def test_services_are_spread_and_pinned(cluster: Swarm) -> None:
    manager, shared = swarmnodes.node_name(1), swarmnodes.node_name(2)
    for slot in SLOTS:
        found = _status(cluster, slot)
        where = {s["service"]: s["node"] for s in found["services"]}
        cluster.figures.values[f"slot_{slot}_services_per_node"] = {
            node: sorted(s for s, n in where.items() if n == node)
            for node in sorted(set(where.values()))
        }
        assert found["up"], found
        assert len(set(where.values())) >= 2, where
        assert where["db"] == manager  # ktrdr.sandbox.db
        assert {where[s] for s in where if s == "backend" or "worker" in s} == {shared}


def test_the_slots_are_apart(cluster: Swarm) -> None:
    for slot in SLOTS:
        found = _status(cluster, slot)
        backend = next(s for s in found["services"] if s["service"] == "backend")
        health = _get(f"http://{backend['address']}:{backend['ports'][0]}/api/v1/health")
        assert health["slot"] == slot
        assert health["project"] == f"ktrdr-sandbox-{slot}"
        assert health["database"]["reachable"] is True
        # The checkout's code runs in slot 2, the image's own in slot 1.
        assert (health["version"] == CHECKOUT_VERSION) is (slot == SOURCE_SLOT), health
        workers = _get(f"http://{backend['address']}:{backend['ports'][0]}/api/v1/workers")
        assert len(workers) == 4
        assert all(w["capabilities"]["slot"] == slot for w in workers)
    # Each database is the slot's own: a table made in slot 1 is not in slot 2.
    _sql(cluster, 1, "CREATE TABLE swarm_apart (n int); INSERT INTO swarm_apart VALUES (1);")
    assert _sql(cluster, 2, "SELECT to_regclass('public.swarm_apart') IS NULL AS absent") == "t"


def test_a_snapshot_of_one_slot_restores_into_the_other(cluster: Swarm) -> None:
    made = cluster.inv("snapshot", "--slot=1", "--name=swarm-one")
    assert made.ok, made.stdout + made.stderr
    assert "snapshot swarm-one: slot 1" in made.stdout
    restored = cluster.inv("restore", "swarm-one", "--slot=2", "--yes")
    assert restored.ok, restored.stdout + restored.stderr
    # The table slot 1 got above is in slot 2 now, through the db node's engine.
    assert _sql(cluster, 2, "SELECT n FROM swarm_apart") == "1"


def test_logs_and_exec_reach_a_service_on_another_node(cluster: Swarm) -> None:
    logs = cluster.inv("logs", "--slot=1", "--service=backend", "--tail=20")
    assert logs.ok, logs.stderr
    assert "backend" in logs.stdout + logs.stderr
    hostname = cluster.inv("exec", "--slot=1", "--service=backend", "--", "hostname")
    assert hostname.ok, hostname.stderr
    assert hostname.stdout.strip()


def test_verify_checks_each_slot_on_the_swarm(cluster: Swarm) -> None:
    result = cluster.inv("verify", *(f"--slot={slot}" for slot in SLOTS), "--json")
    assert result.ok, result.stdout + result.stderr
    reports = json.loads(result.stdout)["slots"]
    assert [r["slot"] for r in reports] == list(SLOTS)
    for report in reports:
        names = [c["name"] for c in report["checks"]]
        assert names == ["health", "own-database", "ports", "shared-dir"], report
        assert all(c["passed"] for c in report["checks"]), report


def test_auto_picks_the_next_free_slot_while_the_swarm_has_room(cluster: Swarm) -> None:
    full = cluster.inv("up", "--slot=auto", "--swarm", KTRDR_SWARM_SLOT_MEMORY=str(10**9))
    assert full.returncode == 12, full.stdout + full.stderr  # Exit.NO_SLOT
    assert "no room for another slot: 2 of 0 slots deployed" in full.stderr
    assert "Traceback" not in full.stderr
    picked = cluster.inv("up", "--slot=auto", "--swarm", "--no-wait")
    assert picked.ok, picked.stdout + picked.stderr
    assert f"slot {AUTO_SLOT}: the lowest free slot on the swarm" in picked.stdout
    down = cluster.inv("down", f"--slot={AUTO_SLOT}", "--volumes")
    assert down.ok, down.stdout + down.stderr


def test_a_worker_node_is_refused_as_the_manager(cluster: Swarm) -> None:
    worker = cluster.nodes[2]
    env = {**cluster.env(), "DOCKER_HOST": worker.docker_host}
    inv = Path(sys.executable).parent / "inv"
    cmd = [str(inv), "--search-root", str(ROOT), "up", "--slot=3", "--swarm"]
    result = run(cmd, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr  # Exit.NO_ENGINE
    assert "not a swarm manager" in result.stderr
    assert "Traceback" not in result.stderr


def _leftovers(cluster: Swarm) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in cluster.nodes:
        names = []
        for listing in (
            ["ps", "--all", "--format", "{{.Names}}"],
            ["volume", "ls", "--format", "{{.Name}}"],
            ["network", "ls", "--format", "{{.Name}}"],
        ):
            result = cluster.on(node, *listing)
            assert result.ok, result.stderr
            names += [
                n
                for n in result.stdout.split()
                if n.startswith(
                    ("ktrdr-sandbox-1", "ktrdr-sandbox-2", f"ktrdr-sandbox-{AUTO_SLOT}")
                )
            ]
        if names:
            found[node.name] = names
    return found


def test_down_leaves_nothing_on_any_node(cluster: Swarm) -> None:
    for slot in SLOTS:
        began = time.monotonic()
        result = cluster.inv("down", f"--slot={slot}", "--volumes")
        cluster.figures.values[f"slot_{slot}_down_s"] = round(time.monotonic() - began, 1)
        assert result.ok, result.stdout + result.stderr
    services = cluster.on(cluster.manager, "service", "ls", "--format", "{{.Name}}")
    assert [s for s in services.stdout.split() if s.startswith("ktrdr-sandbox-")] == [
        "ktrdr-sandbox-registry"
    ]
    configs = cluster.on(cluster.manager, "config", "ls", "--format", "{{.Name}}")
    assert configs.stdout.split() == []
    # Containers end on each node within their stop grace period; the removal job's own last.
    deadline = time.monotonic() + 30
    while (left := _leftovers(cluster)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == {}
    status = cluster.inv("status", "--swarm")
    assert "no slot of this checkout is deployed on a swarm" in status.stdout
