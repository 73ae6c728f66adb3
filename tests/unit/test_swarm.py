"""Swarm slots without a swarm: parsing what the manager says, commands as data, the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.errors import Exit, SandboxError
from sandbox.swarm import access, cluster, deploy, placement, registry, teardown
from sandbox.swarm import record as swarm_record
from tests.support import swarmnodes

# `docker stack ps --no-trunc --format '{{json .}}' ktrdr-sandbox-1` on the test swarm, cut
# down: the backend's current task, a failed db task with its history line, a pending worker.
STACK_PS = "\n".join(
    json.dumps(row)
    for row in (
        {
            "CurrentState": "Running 2 minutes ago",
            "DesiredState": "Running",
            "Error": "",
            "Name": "ktrdr-sandbox-1_backend.1",
            "Node": "node-2",
            "Ports": "*:8001->8000/tcp",
        },
        {
            "CurrentState": "Failed 5 seconds ago",
            "DesiredState": "Shutdown",
            "Error": "task: non-zero exit (1)",
            "Name": "ktrdr-sandbox-1_db.1",
            "Node": "node-1",
            "Ports": "",
        },
        {
            "CurrentState": "Running 1 minute ago",
            "DesiredState": "Shutdown",
            "Error": "",
            "Name": " \\_ ktrdr-sandbox-1_db.1",
            "Node": "node-1",
            "Ports": "*:5433->5432/tcp",
        },
        {
            "CurrentState": "Preparing 3 seconds ago",
            "DesiredState": "Running",
            "Error": "",
            "Name": "ktrdr-sandbox-1_jaeger.1",
            "Node": "node-3",
            "Ports": "*:16687->16686/tcp,*:4327->4317/tcp",
        },
    )
)

NODES = "\n".join(
    json.dumps(row)
    for row in (
        {
            "hostname": "node-1",
            "address": "0.0.0.0",
            "state": "ready",
            "labels": {"ktrdr.sandbox.db": "true"},
            "manager": "10.0.0.1:2377",
        },
        {
            "hostname": "node-2",
            "address": "10.0.0.2",
            "state": "ready",
            "labels": {},
            "manager": "",
        },
        {
            "hostname": "node-3",
            "address": "10.0.0.3",
            "state": "down",
            "labels": None,
            "manager": "",
        },
    )
)


def test_each_service_gets_its_current_task() -> None:
    found = cluster.parse_tasks(STACK_PS, "ktrdr-sandbox-1")

    assert found == {
        "backend": cluster.Task("backend", "node-2", "running", "running", "", (8001,)),
        "db": cluster.Task("db", "node-1", "failed", "shutdown", "task: non-zero exit (1)", ()),
        "jaeger": cluster.Task("jaeger", "node-3", "preparing", "running", "", (16687, 4327)),
    }


def test_a_manager_reporting_no_address_is_read_from_its_manager_address() -> None:
    found = cluster.parse_nodes(NODES)

    assert found["node-1"] == cluster.Node(
        "node-1", "10.0.0.1", "ready", {"ktrdr.sandbox.db": "true"}
    )
    assert found["node-2"].address == "10.0.0.2"
    assert found["node-3"].labels == {}


def test_only_running_tasks_publish() -> None:
    tasks = cluster.parse_tasks(STACK_PS, "ktrdr-sandbox-1")

    assert placement.port_addresses(tasks, cluster.parse_nodes(NODES), {}) == {8001: "10.0.0.2"}


def test_a_task_waiting_for_its_first_healthcheck_publishes_too() -> None:
    # `docker stack ps` lists no ports for a starting task: the stack file's say them.
    starting = cluster.Task("grafana", "node-2", "starting", "running", "", ())

    assert placement.port_addresses(
        {"grafana": starting}, cluster.parse_nodes(NODES), {3001: "grafana"}
    ) == {3001: "10.0.0.2"}
    (row,) = placement.containers("ktrdr-sandbox-1", {"grafana": starting})
    assert row.state == "running"


class FixedAddresses(placement.Addresses):
    def __init__(self, table: dict[int, str]) -> None:
        super().__init__("ktrdr-sandbox-1", {})
        self.table = table

    def of(self, port: int) -> str | None:
        return self.table.get(port)


def test_a_url_goes_to_the_node_that_publishes_its_port() -> None:
    addresses = FixedAddresses({8001: "10.0.0.2", 9091: "fd00::3"})

    assert placement.at_node("http://10.0.0.1:8001/api/v1/health", addresses) == (
        "http://10.0.0.2:8001/api/v1/health"
    )
    assert (
        placement.at_node("http://10.0.0.1:9091/-/ready", addresses)
        == "http://[fd00::3]:9091/-/ready"
    )
    assert placement.at_node("http://10.0.0.1:3001/api/health", addresses) is None


def test_tasks_become_the_gates_containers() -> None:
    tasks = cluster.parse_tasks(STACK_PS, "ktrdr-sandbox-1")

    rows = placement.containers("ktrdr-sandbox-1", tasks, ["backend", "db", "jaeger", "grafana"])

    assert [(c.service, c.state, c.project) for c in rows] == [
        ("backend", "running", "ktrdr-sandbox-1"),
        ("db", "exited", "ktrdr-sandbox-1"),
        ("jaeger", "created", "ktrdr-sandbox-1"),
        ("grafana", "created", "ktrdr-sandbox-1"),
    ]
    assert rows[1].status == "failed on node-1: task: non-zero exit (1)"


def test_ports_of_other_stacks_are_taken() -> None:
    listing = (
        "ktrdr-sandbox-1_backend *:8001->8000/tcp\n"
        "ktrdr-sandbox-2_backend *:8002->8000/tcp\n"
        "ktrdr-sandbox-registry *:5000->5000/tcp\n"
        "other \n"
    )

    assert deploy.published_by_others(listing, "ktrdr-sandbox-1") == {
        8002: "ktrdr-sandbox-2_backend",
        5000: "ktrdr-sandbox-registry",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true 10.0.0.1 active\n", cluster.Manager(True, "10.0.0.1", "active")),
        ("false  inactive\n", cluster.Manager(False, "", "inactive")),
        ("", cluster.Manager(False, "", "")),
    ],
)
def test_docker_info_is_read(text: str, expected: cluster.Manager) -> None:
    assert cluster.parse_manager(text) == expected


def test_the_switch_asks_nothing_when_off() -> None:
    assert cluster.wanted({}) is False
    assert cluster.wanted({"KTRDR_SWARM": "0"}) is False
    assert cluster.wanted({"KTRDR_SWARM": "1"}) is True
    assert cluster.wanted({}, flag=True) is True


def test_the_registry_is_named_or_the_managers() -> None:
    found = cluster.Manager(True, "10.0.0.1", "active")

    assert registry.registry_address({}, found) == "10.0.0.1:5000"
    assert registry.registry_address({"KTRDR_SWARM_REGISTRY": "reg:5000"}, found) == "reg:5000"
    assert (
        registry.registry_ref("reg:5000", "ktrdr-sandbox/app:1") == "reg:5000/ktrdr-sandbox/app:1"
    )


def test_commands() -> None:
    assert deploy.deploy_command(Path("/s/stack.json"), "ktrdr-sandbox-1") == [
        "docker",
        "stack",
        "deploy",
        "--prune",
        "--compose-file",
        "/s/stack.json",
        "ktrdr-sandbox-1",
    ]
    assert registry.registry_service_command() == [
        "docker",
        "service",
        "create",
        "--detach",
        "--name=ktrdr-sandbox-registry",
        "--constraint=node.role==manager",
        "--endpoint-mode=dnsrr",
        "--publish=mode=host,published=5000,target=5000",
        "--mount=type=volume,source=ktrdr-sandbox-registry,target=/var/lib/docker-registry",
        "--label=ktrdr.sandbox.registry=1",
        "ktrdr-sandbox/registry-debian:2",
    ]
    assert access.logs_command("ktrdr-sandbox-1", "backend", True, 5) == [
        "docker",
        "service",
        "logs",
        "--no-task-ids",
        "--tail",
        "5",
        "--follow",
        "ktrdr-sandbox-1_backend",
    ]
    job = teardown.volume_job_command("ktrdr-sandbox-1", "reg:5000/app:1")
    assert job[:9] == [
        "docker",
        "service",
        "create",
        "--detach",
        "--name=ktrdr-sandbox-1-volume-rm",
        "--mode=global-job",
        "--constraint=node.labels.ktrdr.sandbox.db == true",
        "--mount=type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock",
        "--label=ktrdr.sandbox.volume-rm=1",
    ]
    assert job[9:12] == ["reg:5000/app:1", "python3", "-c"]
    assert job[-1] == "ktrdr-sandbox-1_db-data"
    assert access.exec_command("abc", ["hostname"], False) == ["docker", "exec", "abc", "hostname"]


def test_the_record_round_trips(tmp_path: Path) -> None:
    record = swarm_record.Record(3, "tcp://10.0.0.1:2375", "reg:5000", "10.0.0.1")

    swarm_record.write_record(tmp_path, record)

    assert swarm_record.read_record(tmp_path, 3) == record
    assert swarm_record.recorded_slots(tmp_path) == [record]
    assert swarm_record.selected_record(tmp_path, 3, {"KTRDR_SWARM": "0"}) is None
    assert record.env({"DOCKER_CONTEXT": "x", "PATH": "/bin"}) == {
        "PATH": "/bin",
        "DOCKER_HOST": "tcp://10.0.0.1:2375",
    }


def test_exec_elsewhere_needs_the_node_engine_template() -> None:
    with pytest.raises(SandboxError, match="KTRDR_SWARM_NODE_ENGINE") as caught:
        cluster.node_engine({}, "10.0.0.2")
    assert caught.value.code is Exit.USAGE
    assert cluster.node_engine({"KTRDR_SWARM_NODE_ENGINE": "ssh://a@{address}"}, "10.0.0.2") == (
        "ssh://a@10.0.0.2"
    )


def test_a_test_node_runs_without_privileged_and_publishes_nothing(tmp_path: Path) -> None:
    cmd = swarmnodes.run_command(2, tmp_path / "daemon.json")

    assert "--privileged" not in cmd
    assert not any(part.startswith(("--publish", "-p")) for part in cmd)
    assert "--network=ktrdr-sandbox-swarm-net" in cmd
    assert f"--volume={tmp_path / 'daemon.json'}:/etc/docker/daemon.json:ro" in cmd
    assert json.loads(swarmnodes.daemon_json()) == {
        "insecure-registries": ["ktrdr-sandbox-swarm-1:5000"]
    }


def test_the_db_volume_is_removed_through_the_engines_it_can_reach() -> None:
    known = cluster.parse_nodes(NODES)  # node-1 (the manager, 10.0.0.1) is the one db node
    record = swarm_record.Record(1, "tcp://10.0.0.1:2375", "reg:5000", "10.0.0.1")
    elsewhere = swarm_record.Record(1, "tcp://10.0.0.9:2375", "reg:5000", "10.0.0.9")

    assert teardown.db_node_engines(known, record, {}) == [{"DOCKER_HOST": "tcp://10.0.0.1:2375"}]
    assert teardown.db_node_engines(known, elsewhere, {}) is None  # then a swarm job does it
    template = {"KTRDR_SWARM_NODE_ENGINE": "ssh://a@{address}"}
    assert teardown.db_node_engines(known, elsewhere, template) == [
        {"KTRDR_SWARM_NODE_ENGINE": "ssh://a@{address}", "DOCKER_HOST": "ssh://a@10.0.0.1"}
    ]


def test_a_kept_node_volume_loses_its_swarm_and_network_state_only() -> None:
    assert swarmnodes.scrub_command(1) == [
        "docker",
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--entrypoint=/bin/rm",
        "--volume=ktrdr-sandbox-swarm-1-docker:/node",
        "ktrdr-sandbox/remote-host:1",
        "-rf",
        "/node/swarm",
        "/node/network",
    ]
