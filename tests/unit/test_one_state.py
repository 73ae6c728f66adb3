"""One state rule: `inv status` (the table) and `inv status --json` say the same of every slot.

Each case is a slot as the engine and the filesystem could show it; both views are computed
from the same containers, checkouts and `.sandbox/slot-N.up.json` records, as their `collect`
functions compute them, and must agree on the state, on orphaned, on what the last `up` left,
and on the counts. Every state is covered (a test below checks the cases reach them all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox import COMPOSE_FILE, docker, lastup, slots, status
from sandbox.ui import render, statusjson
from tests.unit.support.factories import container

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def a_checkout(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / COMPOSE_FILE).write_text("services: {}\n")
    return path


def stack(
    here: Path, layout: slots.Layout = slots.DEFAULT_LAYOUT, source: str = ""
) -> list[docker.Container]:
    found = []
    for service in layout.services:
        made = container(3, service, status="Up 2 minutes (healthy)", working_dir=str(here))
        labelled = replace(made, workers=layout.workers, observability=layout.observability)
        found.append(replace(labelled, source=source))
    return found


def with_service(
    found: list[docker.Container], service: str, state: str, text: str
) -> list[docker.Container]:
    return [replace(c, state=state, status=text) if c.service == service else c for c in found]


def set_record(here: Path, outcome: str, pid: int | None = None, reason: str = "") -> None:
    lastup.write(here, 3, outcome, reason)
    if pid is not None:
        path = lastup.path(here, 3)
        path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {pid}'))


Case = Callable[[Path], list[docker.Container]]


def running(here: Path) -> list[docker.Container]:
    return stack(here)


def light_running(here: Path) -> list[docker.Container]:
    return stack(here, slots.Layout("light", "shared"))


def crashed_worker(here: Path) -> list[docker.Container]:
    # The case the table once called "partial 8/9" and the JSON "failed".
    return with_service(stack(here), "training-worker-2", "exited", "Exited (1) 5 seconds ago")


def unhealthy_backend(here: Path) -> list[docker.Container]:
    return with_service(stack(here), "backend", "running", "Up 3 minutes (unhealthy)")


def restarting(here: Path) -> list[docker.Container]:
    return with_service(stack(here), "db", "restarting", "Restarting (1) 2 seconds ago")


def one_stopped_cleanly(here: Path) -> list[docker.Container]:
    return with_service(stack(here), "grafana", "exited", "Exited (0) 1 minute ago")


def missing_services(here: Path) -> list[docker.Container]:
    return stack(here)[:5]


def stopped(here: Path) -> list[docker.Container]:
    return [replace(c, state="exited", status="Exited (137) 1 hour ago") for c in stack(here)]


def created_only(here: Path) -> list[docker.Container]:
    return [replace(c, state="created", status="Created") for c in stack(here)]


def failed_up(here: Path) -> list[docker.Container]:
    set_record(here, lastup.FAILED, reason="gate: backend: HTTP 503")
    return stack(here)


def interrupted_up(here: Path) -> list[docker.Container]:
    set_record(here, lastup.INTERRUPTED)
    return stack(here)[:4]


def killed_up(here: Path) -> list[docker.Container]:
    set_record(here, lastup.STARTING, pid=DEAD_PID)
    return stack(here)[:2]


def starting_up(here: Path) -> list[docker.Container]:
    set_record(here, lastup.STARTING)  # by this process, which runs: a start at work
    return [replace(c, status="Up 1 second (health: starting)") for c in stack(here)[:6]]


def ready_up(here: Path) -> list[docker.Container]:
    set_record(here, lastup.READY)
    return stack(here)


def checkout_gone(here: Path) -> list[docker.Container]:
    return stack(here.parent / "deleted-sandbox")


def source_moved(here: Path) -> list[docker.Container]:
    return stack(here, source=str(here.parent / "ktrdr-moved-branch"))


def orphaned_and_crashed(here: Path) -> list[docker.Container]:
    return crashed_worker(here.parent / "deleted-sandbox")


CASES: dict[str, tuple[Case, str]] = {
    "running": (running, "running"),
    "light on shared, running": (light_running, "running"),
    "a worker crashed": (crashed_worker, "failed"),
    "backend unhealthy": (unhealthy_backend, "failed"),
    "db restarting": (restarting, "failed"),
    "one stopped cleanly": (one_stopped_cleanly, "partial"),
    "services missing": (missing_services, "partial"),
    "all stopped": (stopped, "stopped"),
    "created, never started": (created_only, "stopped"),
    "last up failed": (failed_up, "failed"),
    "last up interrupted": (interrupted_up, "failed"),
    "last up killed": (killed_up, "failed"),
    "an up at work": (starting_up, "partial"),
    "last up ready": (ready_up, "running"),
    "checkout gone": (checkout_gone, "orphaned"),
    "source moved": (source_moved, "orphaned"),
    "orphaned and crashed": (orphaned_and_crashed, "orphaned"),
}


def both_views(
    containers: list[docker.Container], root: Path
) -> tuple[status.SlotStatus, dict[str, object]]:
    [row] = status.summarize(containers)
    sources = statusjson.slot_sources(containers, {})
    records = statusjson.last_ups(containers, slots.SLOTS, root)
    [entry] = statusjson.document(containers, sources, {}, records=records)["slots"]
    return row, entry


@pytest.mark.parametrize("name", list(CASES))
def test_the_table_and_the_json_agree(tmp_path: Path, name: str) -> None:
    here = a_checkout(tmp_path / "sandbox")
    case, expected = CASES[name]
    row, entry = both_views(case(here), here)
    assert (row.state, entry["state"]) == (expected, expected)
    assert row.orphaned == entry["orphaned"]
    services = entry["services"]
    assert isinstance(services, dict)
    assert (row.healthy, row.total) == (services["healthy"], services["total"])
    last = entry["last_up"]
    assert bool(row.last_up) == (last is not None)
    if isinstance(last, dict):
        assert row.last_up == last["reason"]
    [cells] = render.status_cells([row])
    assert cells[2].split(":")[0] == entry["state"]  # what the table prints, word for word


def test_the_cases_cover_every_state() -> None:
    assert {expected for _, expected in CASES.values()} == set(status.STATES)
    assert statusjson.STATES == status.STATES


def test_the_orphaned_line_names_what_is_gone(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "sandbox")
    [row] = status.summarize(source_moved(here))
    [cells] = render.status_cells([row])
    assert cells[-1] == f"orphaned: {tmp_path / 'ktrdr-moved-branch'} is gone"  # not the checkout
    [row] = status.summarize(checkout_gone(here))
    [cells] = render.status_cells([row])
    assert cells[-1] == f"orphaned: {tmp_path / 'deleted-sandbox'} is gone"


def test_a_start_without_containers_is_in_both(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "sandbox")
    for outcome, pid, expected in (
        (lastup.FAILED, None, "failed"),
        (lastup.STARTING, None, "stopped"),  # a build at work: nothing runs yet
        (lastup.STARTING, DEAD_PID, "failed"),
    ):
        set_record(here, outcome, pid, "docker build failed")
        [row] = status.unstarted(here, [], 3)
        records = statusjson.last_ups([], slots.SLOTS, here)
        [entry] = statusjson.document([], {}, {}, 3, records=records)["slots"]
        assert (row.state, entry["state"]) == (expected, expected)
        last = entry["last_up"]
        assert isinstance(last, dict) and row.last_up == last["reason"]
