"""One state rule: `inv status` (the table) and `inv status --json` say the same of every slot.

Each case is a slot as the engine and the filesystem could show it (containers, checkouts,
`.sandbox/slot-N.up.json` records). `status.summarize` makes the one model of it, and both
views draw that model: the table (its cells and its plain text) and the JSON document (as a
script parses it) must say the same state, orphaned or not, the same last `up`, the same
counts, layout, API URL and checkout. Every state is covered (a test checks the cases reach
them all), so a view that decided a state of its own would fail here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

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
    found: list[docker.Container], service: str, state: docker.ContainerState, text: str
) -> list[docker.Container]:
    return [replace(c, state=state, status=text) if c.service == service else c for c in found]


def set_record(
    here: Path, outcome: lastup.Outcome, pid: int | None = None, reason: str = ""
) -> None:
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


def paused(here: Path) -> list[docker.Container]:
    return [replace(c, state="paused", status="Up 2 hours (Paused)") for c in stack(here)]


def paused_but_one_exited(here: Path) -> list[docker.Container]:
    return [*paused(here)[:-1], replace(stack(here)[-1], state="exited", status="Exited (0) 1s")]


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


def running_a_source(here: Path) -> list[docker.Container]:
    source = here.parent / "ktrdr-feature"
    source.mkdir()
    return [replace(c, app="ktrdr") for c in stack(here, source=str(source))]


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
    "paused": (paused, "paused"),
    "paused, one stopped cleanly": (paused_but_one_exited, "stopped"),
    "created, never started": (created_only, "stopped"),
    "last up failed": (failed_up, "failed"),
    "last up interrupted": (interrupted_up, "failed"),
    "last up killed": (killed_up, "failed"),
    "an up at work": (starting_up, "partial"),
    "last up ready": (ready_up, "running"),
    "checkout gone": (checkout_gone, "orphaned"),
    "running a source": (running_a_source, "running"),
    "source moved": (source_moved, "orphaned"),
    "orphaned and crashed": (orphaned_and_crashed, "orphaned"),
}


def views(rows: list[status.SlotStatus]) -> tuple[list[tuple[str, ...]], str, dict[str, Any]]:
    """What each view makes of the same rows: the table's cells and its plain text, and the
    JSON document as a script parses it."""
    table = StringIO()
    render.PlainRenderer(table).status(rows)
    return (
        render.status_cells(rows),
        table.getvalue(),
        json.loads(statusjson.dumps(statusjson.document(rows))),
    )


def agree(cells: tuple[str, ...], entry: dict[str, Any]) -> None:
    """One slot's table row says what its JSON entry says."""
    slot, project, state, healthy, workers, observability, api, source, _, checkout = cells
    assert (int(slot), project) == (entry["slot"], entry["project"])
    assert state.split(":")[0] == entry["state"]  # the word the table prints
    last = entry["last_up"]
    assert state.partition(": ")[2] == (last["reason"] if last else "")
    services = entry["services"]
    assert healthy == f"{services['healthy']}/{services['total']}"
    assert (workers, observability) == (entry["workers"], entry["observability"])
    assert api in ("-", entry["urls"]["backend"])
    app = entry["app"] or "reference"
    assert source == (f"{app}: {entry['source']}" if entry["source"] else f"{app} (built in)")
    assert checkout.startswith("orphaned: ") == entry["orphaned"]
    if not entry["orphaned"]:
        assert checkout == (entry["checkout"] or "-")


@pytest.mark.parametrize("name", list(CASES))
def test_the_table_and_the_json_agree(tmp_path: Path, name: str) -> None:
    here = a_checkout(tmp_path / "sandbox")
    case, expected = CASES[name]
    rows = status.summarize(case(here), root=here)
    [cells], text, doc = views(rows)
    [entry] = doc["slots"]
    assert (cells[2].split(":")[0], entry["state"]) == (expected, expected)
    agree(cells, entry)
    [line] = text.splitlines()[1:]
    assert all(cell in line for cell in cells)  # the plain table prints those cells


def test_the_cases_cover_every_state() -> None:
    assert {expected for _, expected in CASES.values()} == set(status.STATES)
    assert set(statusjson.STATES) == set(render.STATE_STYLE) == set(status.STATES)


def test_the_orphaned_line_names_what_is_gone(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "sandbox")
    [cells] = render.status_cells(status.summarize(source_moved(here)))
    assert cells[-1] == f"orphaned: {tmp_path / 'ktrdr-moved-branch'} is gone"  # not the checkout
    [cells] = render.status_cells(status.summarize(checkout_gone(here)))
    assert cells[-1] == f"orphaned: {tmp_path / 'deleted-sandbox'} is gone"


def test_a_start_without_containers_is_in_both(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "sandbox")
    for outcome, pid, expected in (
        (lastup.FAILED, None, "failed"),
        (lastup.STARTING, None, "stopped"),  # a build at work: nothing runs yet
        (lastup.STARTING, DEAD_PID, "failed"),
    ):
        set_record(here, outcome, pid, "docker build failed")
        rows = status.summarize([], 3, root=here)
        [cells], _, doc = views(rows)
        [entry] = doc["slots"]
        assert (cells[2].split(":")[0], entry["state"]) == (expected, expected)
        agree(cells, entry)


def test_a_slot_with_only_its_volume_is_in_both(tmp_path: Path) -> None:
    rows = status.summarize([], root=a_checkout(tmp_path / "sandbox"), volumes={5: ["v"]})
    [cells], _, doc = views(rows)
    [entry] = doc["slots"]
    assert (entry["state"], entry["volumes"]) == ("stopped", ["v"])
    agree(cells, entry)
