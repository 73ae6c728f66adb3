"""Worker profiles and shared observability: what a slot's layout runs, publishes, writes into
its override, expects at the gate and in status, and what the shared Prometheus is told."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox import (
    COMPOSE_FILE,
    apps,
    compose,
    docker,
    gatechecks,
    gateprobes,
    observability,
    ports,
    preflight,
    runner,
    slotfiles,
    slots,
    stack,
    status,
    verify,
)
from sandbox.docker import PublishedPort
from sandbox.errors import Exit, SandboxError
from tests.unit.support.clock import FakeClock
from tests.unit.support.engine import FakeEngine
from tests.unit.support.factories import container as fabricate
from tests.unit.test_gate import World
from tests.unit.test_gate import run as run_gate

LIGHT = slots.Layout("light")
NONE_SHARED = slots.Layout("none", "shared")
LIGHT_SHARED = slots.Layout("light", "shared")


def make(
    slot: int | str,
    service: str,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    state: docker.ContainerState = "running",
    ports: tuple[PublishedPort, ...] = (),
) -> docker.Container:
    return fabricate(
        slot, service, state=state, status="Up 1 minute (healthy)", working_dir="/checkout",
        ports=ports, workers=layout.workers, observability=layout.observability,
    )  # fmt: skip


def stack_of(slot: int, layout: slots.Layout) -> list[docker.Container]:
    found = []
    for service in layout.services:
        worker = next((w for w in slots.WORKERS if w.service == service), None)
        ports: tuple[PublishedPort, ...] = ()
        if worker is not None:
            port = slots.ports(slot)[worker.port_variable]
            ports = (PublishedPort("127.0.0.1", port, port),)
        found.append(make(slot, service, layout, ports=ports))
    return found


# ----------------------------------------------------------------------------- the layout


def test_profiles_run_their_workers_and_publish_their_ports() -> None:
    assert len(slots.DEFAULT_LAYOUT.services) == 9 and len(slots.DEFAULT_LAYOUT.ports) == 11
    assert [w.service for w in LIGHT.worker_list] == ["backtest-worker-1", "training-worker-1"]
    assert LIGHT.left_out == ("backtest-worker-2", "training-worker-2")
    assert len(LIGHT.services) == 7 and len(LIGHT.ports) == 9
    assert slots.Layout("none").worker_list == ()
    # Shared: Jaeger's three ports, Prometheus' and Grafana's go; db, API and workers stay.
    shared = slots.Layout("full", "shared")
    assert shared.left_out == slots.OBSERVABILITY_SERVICES
    assert len(shared.services) == 6 and len(shared.ports) == 6
    assert [p.service for p in LIGHT_SHARED.ports] == [
        "db",
        "backend",
        "backtest-worker-1",
        "training-worker-1",
    ]
    assert NONE_SHARED.app_services == ("backend",)


@pytest.mark.parametrize(
    "workers,obs,message",
    [
        ("medium", None, "unknown worker profile 'medium': use one of full, light, none"),
        (None, "remote", "unknown observability 'remote': use one of own, shared"),
    ],
)
def test_unknown_profile_is_one_usage_line(
    workers: str | None, obs: str | None, message: str
) -> None:
    with pytest.raises(SandboxError) as caught:
        slots.parse_layout(workers, obs)
    assert caught.value.code is Exit.USAGE
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_defaults_and_unlabelled_containers_read_as_full_and_own() -> None:
    assert slots.parse_layout(None, None) == slots.DEFAULT_LAYOUT
    assert slots.recorded_layout("", "") == slots.DEFAULT_LAYOUT
    assert slots.recorded_layout("light", "shared") == LIGHT_SHARED


def test_shared_ports_are_outside_every_slot_and_distinct() -> None:
    taken = {port for slot in slots.SLOTS for port in slots.ports(slot).values()}
    shared = [p.port for p in slots.OBSERVABILITY_PORTS]
    assert len(set(shared)) == len(shared)
    assert not taken & set(shared)
    # Outside each variable's range too, not just off its exact values.
    for spec in slots.PORTS:
        low, high = spec.host_port(0), spec.host_port(max(slots.SLOTS))
        assert not [p for p in shared if min(low, spec.base) <= p <= high], spec.variable


def test_docker_ps_labels_are_parsed() -> None:
    line = json.dumps(
        {
            "ID": "x",
            "Project": "ktrdr-sandbox-3",
            "Service": "db",
            "Workers": "light",
            "Observability": "shared",
            "State": "running",
        }
    )
    [c] = docker.parse_ps(line)
    assert c.layout == LIGHT_SHARED
    assert (
        docker.WORKERS_LABEL in docker.PS_FORMAT and docker.OBSERVABILITY_LABEL in docker.PS_FORMAT
    )


# ----------------------------------------------------------------------------- override, command


def test_shared_override_joins_the_shared_network_and_sends_traces_there() -> None:
    document = slotfiles.override(apps.BUILT_IN, None, {}, LIGHT_SHARED)
    assert document["networks"] == {
        "observability": {"external": True, "name": "ktrdr-sandbox-observability"}
    }
    backend = document["services"]["backend"]
    assert backend["networks"] == ["default", "observability"]
    assert backend["environment"] == {
        "KTRDR_OTEL_OTLP_ENDPOINT": "http://ktrdr-observability-jaeger:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://ktrdr-observability-jaeger:4318/v1/traces",
    }
    assert "networks" not in document["services"]["db"]
    for service in document["services"].values():
        assert service["labels"][docker.WORKERS_LABEL] == "light"
        assert service["labels"][docker.OBSERVABILITY_LABEL] == "shared"


def test_ktrdr_on_shared_gets_the_shared_grpc_endpoint(tmp_path: Path) -> None:
    for marker in apps.KTRDR.markers:
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_text("")
    document = slotfiles.override(apps.detect(tmp_path), "deps:1", {}, LIGHT_SHARED)
    env = document["services"]["training-worker-1"]["environment"]
    assert env["KTRDR_OTEL_OTLP_ENDPOINT"] == "http://ktrdr-observability-jaeger:4317"
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env  # KTRDR speaks gRPC only


def test_up_command_scales_out_what_the_layout_leaves_out(target: compose.Target) -> None:
    cmd = stack.up_command(["docker", "compose"], target, [Path("/o.json")], LIGHT_SHARED)
    tail = cmd[cmd.index("up") :]
    assert tail == [
        "up",
        "-d",
        "--remove-orphans",
        "--scale=backtest-worker-2=0",
        "--scale=training-worker-2=0",
        "--scale=jaeger=0",
        "--scale=prometheus=0",
        "--scale=grafana=0",
    ]
    full = stack.up_command(["docker", "compose"], target)
    assert full[full.index("up") :] == ["up", "-d", "--remove-orphans"]


def test_all_running_counts_the_layouts_services() -> None:
    assert stack.all_running(stack_of(1, LIGHT), LIGHT)
    assert not stack.all_running(stack_of(1, LIGHT), slots.DEFAULT_LAYOUT)


# ----------------------------------------------------------------------------- gate


def test_light_gate_expects_two_workers() -> None:
    light = [{"worker_id": w.service, "worker_type": w.worker_type} for w in LIGHT.worker_list]
    passed = gatechecks.workers_outcome(200, json.dumps(light), LIGHT.worker_list)
    assert passed == gatechecks.Outcome(True, "2/2 registered")
    # The same two are not enough for the full profile, which names the missing ones.
    full = gatechecks.workers_outcome(200, json.dumps(light))
    assert not full.passed and "missing backtest-worker-2, training-worker-2" in full.detail
    assert gatechecks.workers_outcome(200, "[]", ()) == gatechecks.Outcome(True, "0/0 registered")


def test_light_slot_passes_its_gate(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    world.registered_at = {w.service: 0.0 if w in LIGHT.worker_list else 1e9 for w in slots.WORKERS}
    world.containers = [c for c in world.containers if c.service in LIGHT.services]
    result = run_gate(target, world, clock, probe_wait=5.0, layout=LIGHT)
    assert result.passed, [(c.name, c.detail) for c in result.checks]
    workers = {c.name: c for c in result.checks}["workers"]
    assert workers.detail == "2/2 registered"
    assert workers.label == "Workers registered (light: 2)"
    assert set(result.urls) >= {"backtest-worker-1", "training-worker-1"}
    assert "backtest-worker-2" not in result.urls


def test_shared_gate_checks_the_shared_stack_not_the_slots(target: compose.Target) -> None:
    clock = FakeClock()
    world = World(clock)
    probes = world.probes()
    plan = gatechecks.checks(target, ["docker", "compose"], {}, probes, None, layout=NONE_SHARED)
    rows = {c.name: c for c in plan}
    assert list(rows) == [
        "database",
        "backend",
        "workers",
        "jaeger-shared",
        "prometheus-shared",
        "grafana-shared",
    ]
    asked: list[str] = []

    def http_get(url: str, timeout: float) -> tuple[int | None, str]:
        asked.append(url)
        return 200, "ok"

    probes_seen = gateprobes.Probes(http_get=http_get, exec=world.exec, containers=world.ps)
    plan = gatechecks.checks(
        target, ["docker", "compose"], {}, probes_seen, None, layout=NONE_SHARED
    )
    for check in plan[3:]:
        assert check.probe().passed
        assert check.watch == ()  # another project's containers: nothing of the slot to watch
    assert asked == [
        "http://127.0.0.1:16680/",
        "http://127.0.0.1:9080/-/ready",
        "http://127.0.0.1:3080/api/health",
    ]


# ----------------------------------------------------------------------------- status


def summarized(containers: list[docker.Container], tmp_path: Path) -> status.SlotStatus:
    """The one row of `containers`, started from a checkout that exists (not orphaned)."""
    (tmp_path / COMPOSE_FILE).write_text("services: {}\n")
    [row] = status.summarize([replace(c, working_dir=str(tmp_path)) for c in containers])
    return row


def test_a_light_slot_with_seven_containers_is_running(tmp_path: Path) -> None:
    row = summarized(stack_of(3, LIGHT), tmp_path)
    assert (row.state, row.services.healthy, row.services.total) == ("running", 7, 7)
    assert row.layout == LIGHT


def test_a_shared_light_slot_with_four_containers_is_running(tmp_path: Path) -> None:
    row = summarized(stack_of(4, LIGHT_SHARED), tmp_path)
    assert (row.state, row.services.total, row.layout) == ("running", 4, LIGHT_SHARED)


def test_a_full_slot_missing_two_workers_is_partial(tmp_path: Path) -> None:
    containers = [c for c in stack_of(2, slots.DEFAULT_LAYOUT) if c.service in LIGHT.services]
    row = summarized(containers, tmp_path)
    assert (row.state, row.services.total) == ("partial", 9)


# ----------------------------------------------------------------------------- preflight


def facts(
    target: compose.Target, layout: slots.Layout, *containers: docker.Container
) -> preflight.Facts:
    found = preflight.Facts(target, {}, True, apps.BUILT_IN, layout=layout)
    found.everything = list(containers)
    found.own = [c for c in containers if c.project == target.project]
    return found


def test_another_profile_on_a_running_slot_is_refused(target: compose.Target) -> None:
    with pytest.raises(SandboxError) as caught:
        preflight.layout_step(facts(target, LIGHT, *stack_of(1, slots.DEFAULT_LAYOUT)))
    assert caught.value.code is Exit.OTHER_LAYOUT
    assert str(caught.value) == (
        "slot 1 runs full (4 workers), not light (2 workers): `inv down --slot=1` first, "
        "or pick another slot"
    )
    step = preflight.layout_step(facts(target, LIGHT, *stack_of(1, LIGHT)))
    assert step.detail == "light (2 workers)"


def test_shared_is_refused_while_the_shared_stack_is_down(target: compose.Target) -> None:
    with pytest.raises(SandboxError) as caught:
        preflight.observability_step(facts(target, LIGHT_SHARED))
    assert caught.value.code is Exit.NO_SHARED_OBSERVABILITY
    assert "run `inv observability up` first" in str(caught.value)
    half = [make(observability.PROJECT, s) for s in ("jaeger", "prometheus")]
    with pytest.raises(SandboxError):
        preflight.observability_step(facts(target, LIGHT_SHARED, *half))
    up = [*half, make(observability.PROJECT, "grafana")]
    assert preflight.observability_step(facts(target, LIGHT_SHARED, *up)).name == "observability"


def test_ports_of_left_out_services_are_not_probed(target: compose.Target) -> None:
    asked: set[int] = set()

    def probe(host: str, port: int) -> bool:
        asked.add(port)
        return True

    ports.classify_ports(target, [], probe, specs=LIGHT_SHARED.ports)
    assert asked == {5433, 8001, 5010, 5012}


# ----------------------------------------------------------------------------- shared Prometheus


def test_scrape_targets_are_the_running_shared_slots_app_services() -> None:
    containers = [
        *stack_of(3, LIGHT_SHARED),
        *stack_of(4, NONE_SHARED),
        *stack_of(5, LIGHT),  # its own observability: not the shared stack's business
        make(observability.PROJECT, "prometheus"),
    ]
    containers = [c for c in containers if not (c.slot == 4 and c.service == "db")]
    stopped = make(6, "backend", NONE_SHARED, state="exited")
    groups = observability.scrape_targets([*containers, stopped])
    assert groups == [
        {
            "targets": ["ktrdr-sandbox-3-backend-1:8000"],
            "labels": {"slot": "3", "service": "backend", "project": "ktrdr-sandbox-3"},
        },
        {
            "targets": ["ktrdr-sandbox-3-backtest-worker-1-1:5030"],
            "labels": {"slot": "3", "service": "backtest-worker-1", "project": "ktrdr-sandbox-3"},
        },
        {
            "targets": ["ktrdr-sandbox-3-training-worker-1-1:5032"],
            "labels": {"slot": "3", "service": "training-worker-1", "project": "ktrdr-sandbox-3"},
        },
        {
            "targets": ["ktrdr-sandbox-4-backend-1:8000"],
            "labels": {"slot": "4", "service": "backend", "project": "ktrdr-sandbox-4"},
        },
    ]


def test_targets_are_written_whole_into_the_container() -> None:
    cmd = observability.write_targets_command("abc")
    assert cmd[:5] == ["docker", "exec", "-i", "abc", "sh"]
    assert "mv -f /prometheus/.ktrdr-slots.tmp /prometheus/ktrdr-slots.json" in cmd[-1]


API_TARGETS = {
    "status": "success",
    "data": {
        "activeTargets": [
            {"scrapePool": "prometheus", "labels": {}, "health": "up"},
            {
                "scrapePool": "ktrdr-slots",
                "labels": {"slot": "3", "service": "backend"},
                "health": "up",
                "lastError": "",
            },
            {
                "scrapePool": "ktrdr-slots",
                "labels": {"slot": "3", "service": "backtest-worker-1"},
                "health": "down",
                "lastError": "connection refused",
            },
        ]
    },
}


def test_prometheus_targets_are_read_from_its_api() -> None:
    found = observability.parse_targets(json.dumps(API_TARGETS))
    assert found == [
        observability.Target("3", "backend", "up"),
        observability.Target("3", "backtest-worker-1", "down", "connection refused"),
    ]
    assert observability.parse_targets("not json") == []


def test_verify_on_shared_wants_every_app_service_scraped() -> None:
    check = verify.check_scraped(3, LIGHT_SHARED, 200, json.dumps(API_TARGETS))
    assert not check.passed
    assert check.detail == (
        "backtest-worker-1: down: connection refused; training-worker-1: not a target"
    )
    only_backend = verify.check_scraped(3, NONE_SHARED, 200, json.dumps(API_TARGETS))
    assert only_backend.passed and only_backend.detail == "1 targets up in the shared Prometheus"
    assert not verify.check_scraped(3, NONE_SHARED, None, "connection refused").passed


def test_verify_ports_expects_the_layouts_ports(target: compose.Target) -> None:
    check = verify.check_ports(target, stack_of(1, LIGHT_SHARED), LIGHT_SHARED)
    # stack_of publishes only the workers' ports: db and backend are named missing.
    assert not check.passed
    assert "KTRDR_DB_PORT=5433" in check.detail and "KTRDR_WORKER_PORT_2" not in check.detail


def test_observability_down_is_refused_while_a_slot_uses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(docker, "check_engine", lambda environ=None: "27")
    monkeypatch.setattr(docker, "containers", lambda environ=None: stack_of(3, LIGHT_SHARED))
    with pytest.raises(SandboxError) as caught:
        observability.down(tmp_path, {})
    assert caught.value.code is Exit.OTHER_LAYOUT
    assert str(caught.value) == (
        "slot 3 (running) uses the shared observability stack (a stopped slot keeps its "
        "network): `inv down --slot=3` first"
    )


def test_a_stopped_shared_slot_still_counts_as_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stopped = [replace(c, state="exited", status="Exited (0)") for c in stack_of(3, LIGHT_SHARED)]
    own = [replace(c, state="exited", status="Exited (0)") for c in stack_of(5, LIGHT)]
    running = stack_of(4, NONE_SHARED)
    monkeypatch.setattr(docker, "check_engine", lambda environ=None: "27")
    monkeypatch.setattr(docker, "containers", lambda environ=None: [*stopped, *own, *running])
    assert observability.users([*stopped, *own, *running]) == {3: False, 4: True}
    with pytest.raises(SandboxError) as caught:
        observability.down(tmp_path, {})
    assert str(caught.value) == (
        "slots 3 (stopped), 4 (running) use the shared observability stack (a stopped slot "
        "keeps its network): `inv down --slot=3` (and the others) first"
    )
    assert observability.users(own) == {}


def test_containers_on_a_removed_shared_network_are_found_and_removed(
    engine: FakeEngine,
) -> None:
    containers = stack_of(3, NONE_SHARED)  # db and backend
    db, backend = sorted(containers, key=lambda c: c.service != "db")
    networks = {
        db.id: {"ktrdr-sandbox-3_default": {"NetworkID": "d3"}},
        backend.id: {
            "ktrdr-sandbox-3_default": {"NetworkID": "d3"},
            observability.NETWORK: {"NetworkID": "old-id"},
        },
    }

    def attachments(args: tuple[str, ...]) -> runner.Result:
        out = "\n".join(f"{i} {json.dumps(networks[i])}" for i in args[4:])
        return runner.Result(args, 0, out + "\n", "")

    engine.on("docker", "inspect", answer=attachments)
    engine.on("docker", "network", "inspect", answer=runner.Result((), 0, "new-id\n", ""))
    assert observability.stale(containers, {}) == [backend.id]
    assert observability.heal(containers, {}) == [backend.name]
    assert engine.commands[-1] == ("docker", "rm", "--force", backend.id)
    networks[backend.id][observability.NETWORK]["NetworkID"] = "new-id"  # today's network
    engine.commands.clear()
    assert observability.heal(containers, {}) == []
    assert engine.ran("docker", "rm") == []


def test_attachments_are_parsed_leniently() -> None:
    text = 'a {"ktrdr-sandbox-observability": {"NetworkID": "n1"}}\nb {}\nc not-json\n'
    assert observability.parse_attachments(text) == {"a": "n1"}


def test_an_engine_hiccup_is_no_reason_to_remove_a_slots_containers(
    engine: FakeEngine,
) -> None:
    containers = stack_of(3, NONE_SHARED)
    backend = next(c for c in containers if c.service == "backend")
    attached = {backend.id: {observability.NETWORK: {"NetworkID": "today"}}}

    def refuse(args: tuple[str, ...]) -> runner.Result:
        raise AssertionError(f"nothing else may run: {args}")

    def attachments(args: tuple[str, ...]) -> runner.Result:
        out = "\n".join(f"{i} {json.dumps(attached.get(i, {}))}" for i in args[4:])
        return runner.Result(args, 0, out + "\n", "")

    engine.on(answer=refuse)  # tried last: every command the two below do not answer
    engine.on("docker", "inspect", answer=attachments)
    timed_out = runner.Result((), 124, "", "timed out after 20s")
    engine.on("docker", "network", "inspect", answer=timed_out)
    assert observability.stale(containers, {}) == []
    assert observability.heal(containers, {}) == []
