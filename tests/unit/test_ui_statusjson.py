"""`inv status --json`: the pinned shape, the states, and the documentation that describes them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import COMPOSE_FILE, ROOT, docker, engine, lastup, slots, status, verify
from sandbox.branches import worktrees
from sandbox.docker import PublishedPort
from sandbox.runner import run
from sandbox.ui import statusjson
from tests.unit.support.factories import make

DOC = ROOT / "docs" / "designs" / "Sandbox" / "STATUS_JSON.md"

# The pinned shape, key order included. A change here is a change of the public format: bump
# statusjson.VERSION when a key goes or changes type, and update STATUS_JSON.md.
Kind = type | tuple[type, ...]
OPT_STR: Kind = (str, type(None))
TOP: dict[str, Kind] = {"schema": str, "version": int, "slots": list}
SLOT: dict[str, Kind] = {
    "slot": int,
    "project": str,
    "state": str,
    "app": OPT_STR,
    "source": OPT_STR,
    "branch": OPT_STR,
    "checkout": OPT_STR,
    "orphaned": bool,
    "workers": str,
    "observability": str,
    "shared_dir": OPT_STR,
    "models_dir": OPT_STR,
    "ports": dict,
    "urls": dict,
    "services": dict,
    "volumes": list,
    "last_up": (dict, type(None)),
    "agent_url": OPT_STR,
}
LAST_UP = {"outcome": str, "reason": str, "at": str}
SERVICES = {"total": int, "running": int, "healthy": int}


def check_shape(doc: dict[str, Any]) -> None:
    assert list(doc) == list(TOP)
    for key, kind in TOP.items():
        assert isinstance(doc[key], kind), key
    assert doc["schema"] == "ktrdr-sandbox/status"
    assert doc["version"] == 1
    for entry in doc["slots"]:
        assert list(entry) == list(SLOT)
        for key, kind in SLOT.items():
            assert isinstance(entry[key], kind), key
        assert not isinstance(entry["slot"], bool)
        assert entry["state"] in statusjson.STATES
        assert list(entry["services"]) == list(SERVICES)
        assert all(type(v) is int for v in entry["services"].values())
        assert list(entry["ports"]) == list(slots.PORT_VARIABLES)
        assert all(type(v) is int for v in entry["ports"].values())
        assert list(entry["urls"]) == ["backend", "db", "jaeger", "prometheus", "grafana"] + [
            w.service for w in slots.WORKERS
        ]
        assert all(isinstance(v, str) for v in entry["urls"].values())
        assert all(isinstance(v, str) for v in entry["volumes"])
        if entry["last_up"] is not None:
            assert list(entry["last_up"]) == list(LAST_UP)
            assert entry["last_up"]["outcome"] in ("starting", "failed", "interrupted", "killed")
            assert all(isinstance(v, str) for v in entry["last_up"].values())


def published(slot: int, service: str, ip: str = "127.0.0.1") -> tuple[PublishedPort, ...]:
    return tuple(
        PublishedPort(ip, spec.host_port(slot), spec.container_port or spec.host_port(slot))
        for spec in slots.PORTS
        if spec.service == service
    )


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A ktrdr-sandbox checkout that exists: the containers below were started from it."""
    checkout = tmp_path / "ktrdr-sandbox"
    checkout.mkdir()
    (checkout / COMPOSE_FILE).write_text("services: {}\n")
    return checkout


def stack(slot: int, here: Path, ip: str = "127.0.0.1", **kwargs: Any) -> list[docker.Container]:
    return [
        make(slot, s, ports=published(slot, s, ip), working_dir=str(here), **kwargs)
        for s in slots.SERVICES
    ]


def document(containers: list[docker.Container], **options: Any) -> dict[str, Any]:
    """The document of `status.collect`'s rows for these containers."""
    return statusjson.document(status.summarize(containers, **options))


def entry_of(containers: list[docker.Container], **options: Any) -> dict[str, Any]:
    [entry] = document(containers, **options)["slots"]
    assert isinstance(entry, dict)
    return entry


# ----------------------------------------------------------------------------- the shape


def test_running_slot_document(here: Path) -> None:
    source = here.parent / "ktrdr-feature-x"
    source.mkdir()
    labelled = [replace(c, app="ktrdr", source=str(source)) for c in stack(2, here)]
    rows = status.summarize([*labelled, make("other-project", "web")])
    doc = statusjson.document(status.with_branches(rows, {str(source): "feature/x"}.get))
    check_shape(doc)
    [entry] = doc["slots"]
    assert entry == {
        "slot": 2,
        "project": "ktrdr-sandbox-2",
        "state": "running",
        "app": "ktrdr",
        "source": str(source),
        "branch": "feature/x",
        "checkout": str(here),
        "orphaned": False,
        "workers": "full",
        "observability": "own",
        "shared_dir": None,
        "models_dir": None,
        "ports": slots.ports(2),
        "urls": {
            "backend": "http://127.0.0.1:8002/api/v1",
            "db": "postgresql://ktrdr@127.0.0.1:5434/ktrdr",
            "jaeger": "http://127.0.0.1:16688",
            "prometheus": "http://127.0.0.1:9092",
            "grafana": "http://127.0.0.1:3002",
            "backtest-worker-1": "http://127.0.0.1:5020/health",
            "backtest-worker-2": "http://127.0.0.1:5021/health",
            "training-worker-1": "http://127.0.0.1:5022/health",
            "training-worker-2": "http://127.0.0.1:5023/health",
        },
        "services": {"total": 9, "running": 9, "healthy": 9},
        "volumes": [],
        "last_up": None,
        "agent_url": None,
    }


def test_dumps_round_trips(here: Path) -> None:
    doc = document(stack(1, here), volumes={1: ["ktrdr-sandbox-1_db-data"], 4: []})
    text = statusjson.dumps(doc)
    assert json.loads(text) == doc
    check_shape(json.loads(text))
    assert doc["slots"][0]["volumes"] == ["ktrdr-sandbox-1_db-data"]
    assert statusjson.dumps(statusjson.document([])) == (
        '{\n  "schema": "ktrdr-sandbox/status",\n  "version": 1,\n  "slots": []\n}'
    )


ERROR = {"message": str, "code": int}


def check_error_shape(doc: dict[str, Any]) -> None:
    """A document that could not answer: schema, version, error, (passed,) no slots."""
    verify = doc["schema"] == statusjson.VERIFY_SCHEMA
    keys = ["schema", "version", "error", *(["passed"] if verify else []), "slots"]
    assert list(doc) == keys
    assert doc["schema"] in (statusjson.SCHEMA, statusjson.VERIFY_SCHEMA)
    assert doc["version"] == 1 and doc["slots"] == []
    assert list(doc["error"]) == list(ERROR)
    assert all(isinstance(doc["error"][k], kind) for k, kind in ERROR.items())
    assert "\n" not in doc["error"]["message"]
    if verify:
        assert doc["passed"] is False


def test_the_error_documents_have_the_pinned_shape() -> None:
    message = "the Docker engine is not reachable: start it"
    for schema in (statusjson.SCHEMA, statusjson.VERIFY_SCHEMA):
        doc = statusjson.error_document(schema, message, 3)
        check_error_shape(doc)
        assert json.loads(statusjson.dumps(doc)) == doc
        assert doc["error"] == {"message": message, "code": 3}


def test_documentation_example_has_the_pinned_shape() -> None:
    """Every ```json block of STATUS_JSON.md that claims the status schema is a valid document."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    docs = [json.loads(b) for b in blocks]
    errors = [d for d in docs if "error" in d]
    assert errors, "STATUS_JSON.md shows no document with an error"
    for doc in errors:
        check_error_shape(doc)
    docs = [d for d in docs if "error" not in d]
    status_docs = [d for d in docs if d.get("schema") == statusjson.SCHEMA]
    assert status_docs, "STATUS_JSON.md shows no status example"
    for doc in status_docs:
        check_shape(doc)
        for entry in doc["slots"]:
            assert entry["ports"] == slots.ports(entry["slot"])
    assert any(d.get("schema") == statusjson.VERIFY_SCHEMA for d in docs)


# ----------------------------------------------------------------------------- states


def last_one(here: Path, state: docker.ContainerState, status_text: str) -> list[docker.Container]:
    """Slot 1's stack with grafana (the last service) in `state`."""
    return [*stack(1, here)[:-1], make(1, "grafana", state, status_text, working_dir=str(here))]


def all_in(state: docker.ContainerState, text: str) -> Callable[[Path], list[docker.Container]]:
    return lambda here: stack(1, here, state=state, status_text=text)


def last_in(state: docker.ContainerState, text: str) -> Callable[[Path], list[docker.Container]]:
    return lambda here: last_one(here, state, text)


@pytest.mark.parametrize(
    ("containers", "state"),
    [
        (all_in("exited", "Exited (0) 1 minute ago"), "stopped"),
        (all_in("exited", "Exited (143) 1 minute ago"), "stopped"),
        (all_in("created", "Created"), "stopped"),
        (lambda here: stack(1, here)[:-1], "partial"),
        (last_in("exited", "Exited (0) 2 seconds ago"), "partial"),
        (last_in("exited", "Exited (1) 2 seconds ago"), "failed"),
        (last_in("running", "Up 1 minute (unhealthy)"), "failed"),
        (last_in("restarting", "Restarting (1) 1 second ago"), "failed"),
        (last_in("dead", "Dead"), "failed"),
    ],
)
def test_states(
    containers: Callable[[Path], list[docker.Container]], state: str, here: Path
) -> None:
    assert entry_of(containers(here))["state"] == state


def test_health_counts(here: Path) -> None:
    containers = [
        *stack(1, here)[:-2],
        make(1, "prometheus", "running", "Up 5 seconds (health: starting)", working_dir=str(here)),
        make(1, "grafana", "running", "Up 5 seconds", working_dir=str(here)),  # no healthcheck
    ]
    entry = entry_of(containers)
    assert entry["services"] == {"total": 9, "running": 9, "healthy": 8}
    assert entry["state"] == "running"


def test_orphaned_wins_when_the_source_is_gone(here: Path) -> None:
    source = here.parent / "ktrdr-old-branch"
    source.mkdir()
    labelled = [replace(c, app="ktrdr", source=str(source)) for c in stack(3, here)]
    assert entry_of(labelled)["orphaned"] is False
    source.rmdir()
    entry = entry_of(labelled)
    assert (entry["orphaned"], entry["state"], entry["source"]) == (True, "orphaned", str(source))


def test_orphaned_wins_when_the_checkout_is_gone(tmp_path: Path) -> None:
    entry = entry_of(stack(3, tmp_path / "deleted-sandbox"))
    assert (entry["orphaned"], entry["state"]) == (True, "orphaned")
    assert entry["checkout"] == str(tmp_path / "deleted-sandbox")


def test_volume_only_slot_is_listed_stopped() -> None:
    doc = document([], volumes={5: ["ktrdr-sandbox-5_db-data"]})
    check_shape(doc)
    [entry] = doc["slots"]
    assert (entry["slot"], entry["state"], entry["checkout"]) == (5, "stopped", None)
    assert entry["services"] == {"total": 9, "running": 0, "healthy": 0}
    assert entry["volumes"] == ["ktrdr-sandbox-5_db-data"]
    assert entry["ports"] == slots.ports(5)


def test_only_slot_and_order(here: Path) -> None:
    containers = stack(4, here) + stack(0, here)
    assert [e["slot"] for e in document(containers)["slots"]] == [0, 4]
    assert [e["slot"] for e in document(containers, only_slot=4)["slots"]] == [4]


def test_several_checkouts_give_no_checkout(here: Path) -> None:
    containers = [*stack(1, here)[:-1], make(1, "grafana", working_dir=str(here.parent))]
    assert entry_of(containers)["checkout"] is None


# ----------------------------------------------------------------------------- ports, urls


def test_ports_follow_what_is_published(here: Path) -> None:
    backend = make(1, "backend", ports=(PublishedPort("127.0.0.1", 18001, 8000),))
    containers = [backend if c.service == "backend" else c for c in stack(1, here)]
    entry = entry_of(containers)
    assert entry["ports"]["KTRDR_API_PORT"] == 18001
    assert entry["urls"]["backend"] == "http://127.0.0.1:18001/api/v1"


def test_url_host_from_the_binding(here: Path) -> None:
    remote = entry_of(stack(1, here, ip="127.0.0.2"))
    assert remote["urls"]["grafana"] == "http://127.0.0.2:3001"
    v6 = entry_of(stack(1, here, ip="::1"))
    assert v6["urls"]["backend"] == "http://[::1]:8001/api/v1"
    wildcard = [
        make(1, s, ports=published(1, s, "0.0.0.0") + published(1, s, "::"), working_dir=str(here))
        for s in slots.SERVICES
    ]
    wide = entry_of(wildcard)
    assert wide["urls"]["jaeger"] == "http://127.0.0.1:16687"
    assert wide["ports"] == slots.ports(1)
    # On a remote engine the wildcard is that engine's host's.
    where = engine.resolve({"DOCKER_HOST": "ssh://me@big-box"}, None)
    assert entry_of(wildcard, where=where)["urls"]["backend"] == "http://big-box:8001/api/v1"


# ----------------------------------------------------------------------------- sources, verify


def test_the_branch_of_each_source_from_git(here: Path) -> None:
    app = here.parent / "app"
    env = worktrees.git_env({"HOME": str(here.parent), "GIT_CONFIG_NOSYSTEM": "1"})
    assert run(["git", "init", "-q", "-b", "feature/y", str(app)], env=env).ok
    db = make(1, "db", working_dir=str(here))
    backend = replace(make(1, "backend", working_dir=str(here)), source=str(app), app="x")
    builtin = replace(make(2, "backend", working_dir=str(here)), app="reference")
    gone = replace(make(3, "backend", working_dir=str(here)), source=str(here / "gone"))
    found = status.slot_sources([db, backend, builtin, gone], env)
    assert found == {
        1: status.SlotSource(str(app), "x", "feature/y"),
        2: status.SlotSource(None, "reference", None),
        3: status.SlotSource(str(here / "gone"), None, None),
    }


def test_verify_document() -> None:
    reports = [
        verify.VerifyReport(1, [verify.VerifyCheck("health", True, "200")]),
        verify.VerifyReport(2, [verify.VerifyCheck("ports", False, "8002 held by x")]),
    ]
    doc = statusjson.verify_document(reports)
    assert doc == {
        "schema": "ktrdr-sandbox/verify",
        "version": 1,
        "passed": False,
        "slots": [
            {
                "slot": 1,
                "project": "ktrdr-sandbox-1",
                "passed": True,
                "checks": [{"name": "health", "passed": True, "detail": "200"}],
            },
            {
                "slot": 2,
                "project": "ktrdr-sandbox-2",
                "passed": False,
                "checks": [{"name": "ports", "passed": False, "detail": "8002 held by x"}],
            },
        ],
    }
    assert statusjson.verify_document([])["passed"] is True


# ----------------------------------------------------------------------------- last up


def record(here: Path, slot: int, outcome: lastup.Outcome, reason: str = "", pid: int = 0) -> None:
    """`.sandbox/slot-N.up.json` in checkout `here`, written at a fixed time by `pid`."""
    lastup.write(here, slot, outcome, reason)
    written = json.loads(lastup.path(here, slot).read_text())
    written |= {"at": 1_800_000_000.0, "pid": pid or os.getpid()}
    lastup.path(here, slot).write_text(json.dumps(written))


def test_a_ready_start_says_nothing(here: Path) -> None:
    record(here, 1, lastup.READY)
    entry = entry_of(stack(1, here))
    assert (entry["state"], entry["last_up"]) == ("running", None)


def test_a_failed_start_fails_the_slot_and_says_why(here: Path) -> None:
    record(here, 1, lastup.FAILED, "gate: backend: HTTP 503")
    doc = document(stack(1, here))
    check_shape(doc)
    [entry] = doc["slots"]
    assert entry["state"] == "failed"
    assert entry["last_up"]["outcome"] == "failed"
    assert entry["last_up"]["reason"].endswith(": gate: backend: HTTP 503")
    assert entry["last_up"]["at"] == "2027-01-15T08:00:00Z"


def test_a_start_at_work_is_not_a_failure_and_a_killed_one_is(here: Path) -> None:
    record(here, 1, lastup.STARTING)  # by this process, which runs
    entry = entry_of(stack(1, here))
    assert entry["state"] == "running"
    assert entry["last_up"]["outcome"] == "starting"
    record(here, 1, lastup.STARTING, pid=2**22 + 12345)  # above Linux's pid_max
    entry = entry_of(stack(1, here))
    assert (entry["state"], entry["last_up"]["outcome"]) == ("failed", "killed")


def test_records_come_from_the_checkout_that_started_the_slot(tmp_path: Path) -> None:
    started_there, here = tmp_path / "other-sandbox", tmp_path / "sandbox"
    for checkout in (started_there, here):
        checkout.mkdir()
        (checkout / COMPOSE_FILE).write_text("services: {}\n")
    record(started_there, 3, lastup.FAILED, "compose: no space left")
    record(here, 3, lastup.READY)
    record(here, 4, lastup.INTERRUPTED)
    containers = stack(3, started_there)
    doc = document(containers, root=here, only_slot=None)
    found = {e["slot"]: e["last_up"] for e in doc["slots"]}
    assert found[3]["reason"].endswith("compose: no space left")  # not this checkout's READY
    assert found[4]["outcome"] == lastup.INTERRUPTED  # no container: this checkout's record
    assert set(found) == {3, 4}
    several = [make(6, "db", working_dir=str(started_there)), make(6, "backend", working_dir="/x")]
    record(here, 6, lastup.FAILED, "not about these containers")
    assert entry_of(several, root=here, only_slot=6)["last_up"] is None


def test_a_start_that_failed_before_anything_existed_is_listed(here: Path) -> None:
    record(here, 7, lastup.FAILED, "building the image failed")
    record(here, 8, lastup.READY)
    doc = document([], root=here)
    check_shape(doc)
    [entry] = doc["slots"]
    assert (entry["slot"], entry["state"], entry["volumes"]) == (7, "failed", [])
