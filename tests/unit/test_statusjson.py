"""`inv status --json`: the pinned shape, the states, and the documentation that describes them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import ROOT, docker, engine, lastup, slots, verify
from sandbox.branches import worktrees
from sandbox.docker import PublishedPort
from sandbox.runner import run
from sandbox.ui import statusjson
from sandbox.ui.statusjson import SlotSource
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


def stack(slot: int, ip: str = "127.0.0.1", **kwargs: Any) -> list[docker.Container]:
    return [make(slot, s, ports=published(slot, s, ip), **kwargs) for s in slots.SERVICES]


SOURCE = SlotSource("/src/ktrdr-feature-x", "ktrdr", "feature/x")


# ----------------------------------------------------------------------------- the shape


def test_running_slot_document() -> None:
    doc = statusjson.document([*stack(2), make("other-project", "web")], {2: SOURCE})
    check_shape(doc)
    [entry] = doc["slots"]
    assert entry == {
        "slot": 2,
        "project": "ktrdr-sandbox-2",
        "state": "running",
        "app": "ktrdr",
        "source": "/src/ktrdr-feature-x",
        "branch": "feature/x",
        "checkout": "/home/dev/ktrdr-sandbox",
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


def test_dumps_round_trips() -> None:
    doc = statusjson.document(stack(1), {}, {1: ["ktrdr-sandbox-1_db-data"], 4: []})
    text = statusjson.dumps(doc)
    assert json.loads(text) == doc
    check_shape(json.loads(text))
    assert statusjson.dumps(statusjson.document([], {})) == (
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


def last_one(state: str, status_text: str) -> list[docker.Container]:
    """Slot 1's stack with grafana (the last service) in `state`."""
    return [*stack(1)[:-1], make(1, "grafana", state, status_text)]


@pytest.mark.parametrize(
    ("containers", "state"),
    [
        (stack(1, state="exited", status_text="Exited (0) 1 minute ago"), "stopped"),
        (stack(1, state="exited", status_text="Exited (143) 1 minute ago"), "stopped"),
        (stack(1, state="created", status_text="Created"), "stopped"),
        (stack(1)[:-1], "partial"),
        (last_one("exited", "Exited (0) 2 seconds ago"), "partial"),
        (last_one("exited", "Exited (1) 2 seconds ago"), "failed"),
        (last_one("running", "Up 1 minute (unhealthy)"), "failed"),
        (last_one("restarting", "Restarting (1) 1 second ago"), "failed"),
        (last_one("dead", "Dead"), "failed"),
    ],
)
def test_states(containers: list[docker.Container], state: str) -> None:
    [entry] = statusjson.document(containers, {})["slots"]
    assert entry["state"] == state


def test_health_counts() -> None:
    containers = [
        *stack(1)[:-2],
        make(1, "prometheus", "running", "Up 5 seconds (health: starting)"),
        make(1, "grafana", "running", "Up 5 seconds"),  # no healthcheck: nothing says unwell
    ]
    [entry] = statusjson.document(containers, {})["slots"]
    assert entry["services"] == {"total": 9, "running": 9, "healthy": 8}
    assert entry["state"] == "running"


@pytest.mark.parametrize(
    "source",
    [
        SlotSource("/gone", "ktrdr", None, source_exists=False),
        SlotSource("/src/x", "ktrdr", "x", checkout_exists=False),
    ],
)
def test_orphaned_wins(source: SlotSource) -> None:
    [entry] = statusjson.document(stack(3), {3: source})["slots"]
    assert entry["orphaned"] is True
    assert entry["state"] == "orphaned"


def test_volume_only_slot_is_listed_stopped() -> None:
    doc = statusjson.document([], {}, {5: ["ktrdr-sandbox-5_db-data"]})
    check_shape(doc)
    [entry] = doc["slots"]
    assert (entry["slot"], entry["state"], entry["checkout"]) == (5, "stopped", None)
    assert entry["services"] == {"total": 9, "running": 0, "healthy": 0}
    assert entry["volumes"] == ["ktrdr-sandbox-5_db-data"]
    assert entry["ports"] == slots.ports(5)


def test_only_slot_and_order() -> None:
    containers = stack(4) + stack(0)
    assert [e["slot"] for e in statusjson.document(containers, {})["slots"]] == [0, 4]
    assert [e["slot"] for e in statusjson.document(containers, {}, only_slot=4)["slots"]] == [4]


def test_several_checkouts_give_no_checkout() -> None:
    containers = [*stack(1)[:-1], make(1, "grafana", working_dir="/elsewhere")]
    [entry] = statusjson.document(containers, {})["slots"]
    assert entry["checkout"] is None


# ----------------------------------------------------------------------------- ports, urls


def test_ports_follow_what_is_published() -> None:
    containers = stack(1)
    backend = make(1, "backend", ports=(PublishedPort("127.0.0.1", 18001, 8000),))
    containers = [backend if c.service == "backend" else c for c in containers]
    [entry] = statusjson.document(containers, {})["slots"]
    assert entry["ports"]["KTRDR_API_PORT"] == 18001
    assert entry["urls"]["backend"] == "http://127.0.0.1:18001/api/v1"


def test_url_host_from_the_binding() -> None:
    [remote] = statusjson.document(stack(1, ip="127.0.0.2"), {})["slots"]
    assert remote["urls"]["grafana"] == "http://127.0.0.2:3001"
    [v6] = statusjson.document(stack(1, ip="::1"), {})["slots"]
    assert v6["urls"]["backend"] == "http://[::1]:8001/api/v1"
    wildcard = [
        make(1, s, ports=published(1, s, "0.0.0.0") + published(1, s, "::")) for s in slots.SERVICES
    ]
    [wide] = statusjson.document(wildcard, {})["slots"]
    assert wide["urls"]["jaeger"] == "http://127.0.0.1:16687"
    assert wide["ports"] == slots.ports(1)
    # On a remote engine the wildcard is that engine's host's.
    where = engine.resolve({"DOCKER_HOST": "ssh://me@big-box"}, None)
    [far] = statusjson.document(wildcard, {}, where=where)["slots"]
    assert far["urls"]["backend"] == "http://big-box:8001/api/v1"


# ----------------------------------------------------------------------------- sources, verify


def test_describe_source_from_a_real_checkout(tmp_path: Path) -> None:
    app, checkout = tmp_path / "app", tmp_path / "sandbox"
    checkout.mkdir()
    (checkout / "docker-compose.sandbox.yml").write_text("")  # what makes it a checkout
    env = worktrees.git_env({"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
    assert run(["git", "init", "-q", "-b", "feature/y", str(app)], env=env).ok
    found = statusjson.describe_source(str(app), "ktrdr", str(checkout), env)
    assert found == SlotSource(str(app), "ktrdr", "feature/y", True, True)
    gone = statusjson.describe_source(str(tmp_path / "gone"), None, str(tmp_path / "nope"), env)
    assert gone == SlotSource(str(tmp_path / "gone"), None, None, False, False)
    assert statusjson.describe_source(None, None, None, env) == SlotSource()


def test_slot_sources_from_labels(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.sandbox.yml").write_text("")  # a live ktrdr-sandbox checkout
    db = make(1, "db", working_dir=str(tmp_path))
    backend = replace(make(1, "backend", working_dir=str(tmp_path)), source=str(tmp_path), app="x")
    builtin = replace(make(2, "backend", working_dir=str(tmp_path)), app="reference")
    found = statusjson.slot_sources([db, backend, builtin], {})
    assert found == {
        1: SlotSource(str(tmp_path), "x", None, True, True),
        2: SlotSource(None, "reference", None, True, True),
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


def record(outcome: str, reason: str = "", pid: int = 0) -> lastup.LastUp:
    return lastup.LastUp(outcome, reason, pid, 1_800_000_000.0)


def test_a_ready_start_says_nothing() -> None:
    [entry] = statusjson.document(stack(1), {}, records={1: record(lastup.READY)})["slots"]
    assert (entry["state"], entry["last_up"]) == ("running", None)


def test_a_failed_start_fails_the_slot_and_says_why() -> None:
    failed = record(lastup.FAILED, "gate: backend: HTTP 503")
    doc = statusjson.document(stack(1), {}, records={1: failed})
    check_shape(doc)
    [entry] = doc["slots"]
    assert entry["state"] == "failed"
    assert entry["last_up"]["outcome"] == "failed"
    assert entry["last_up"]["reason"].endswith(": gate: backend: HTTP 503")
    assert entry["last_up"]["at"] == "2027-01-15T08:00:00Z"


def test_a_start_at_work_is_not_a_failure_and_a_killed_one_is() -> None:
    working = record(lastup.STARTING, pid=os.getpid())
    [entry] = statusjson.document(stack(1), {}, records={1: working})["slots"]
    assert entry["state"] == "running"
    assert entry["last_up"]["outcome"] == "starting"
    killed = record(lastup.STARTING, pid=2**22 + 12345)  # above Linux's pid_max
    [entry] = statusjson.document(stack(1), {}, records={1: killed})["slots"]
    assert (entry["state"], entry["last_up"]["outcome"]) == ("failed", "killed")


def test_records_come_from_the_checkout_that_started_the_slot(tmp_path: Path) -> None:
    started_there = tmp_path / "other-sandbox"
    here = tmp_path / "sandbox"
    lastup.write(started_there, 3, lastup.FAILED, "compose: no space left")
    lastup.write(here, 3, lastup.READY)
    lastup.write(here, 4, lastup.INTERRUPTED)
    containers = [make(3, s, working_dir=str(started_there)) for s in slots.SERVICES]
    found = statusjson.last_ups(containers, [3, 4, 5], here)
    assert found[3].reason == "compose: no space left"  # not this checkout's READY
    assert found[4].outcome == lastup.INTERRUPTED  # no container: this checkout's record
    assert 5 not in found
    several = [
        make(6, "db", working_dir=str(started_there)),
        make(6, "backend", working_dir="/elsewhere"),
    ]
    lastup.write(here, 6, lastup.FAILED, "not about these containers")
    assert 6 not in statusjson.last_ups(several, [6], here)


def test_a_start_that_failed_before_anything_existed_is_listed() -> None:
    failed = record(lastup.FAILED, "building the image failed")
    doc = statusjson.document([], {}, records={7: failed, 8: record(lastup.READY)})
    check_shape(doc)
    [entry] = doc["slots"]
    assert (entry["slot"], entry["state"], entry["volumes"]) == (7, "failed", [])
