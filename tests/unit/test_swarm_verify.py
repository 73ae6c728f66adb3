"""`inv verify` of a swarm slot, without a swarm: the checks over what the manager and the
nodes say."""

from __future__ import annotations

from pathlib import Path

from sandbox import slots
from sandbox import verify as slot_verify
from sandbox.compose import Target
from sandbox.swarm import verify as swarm_verify
from sandbox.swarm.status import ServiceRow

PORTS = slots.ports(3)
ROWS = {
    "backend": ServiceRow("backend", "node-2", "10.0.0.2", "running", (PORTS["KTRDR_API_PORT"],)),
    "db": ServiceRow("db", "node-1", "10.0.0.1", "running", (PORTS["KTRDR_DB_PORT"],)),
}


def target(tmp_path: Path) -> Target:
    return Target(3, tmp_path, {k: str(v) for k, v in PORTS.items()})


def test_health_is_asked_of_the_backends_node(tmp_path: Path) -> None:
    asked: list[str] = []

    def http_get(url: str, timeout: float) -> tuple[int | None, str]:
        asked.append(url)
        return 200, '{"status": "ok"}'

    check = swarm_verify.check_health(target(tmp_path), ROWS, http_get)

    assert check.passed
    assert asked == [f"http://10.0.0.2:{PORTS['KTRDR_API_PORT']}/api/v1/health"]
    starting = {"backend": ServiceRow("backend", "", "", "pending", ())}
    assert not swarm_verify.check_health(target(tmp_path), starting, http_get).passed


def mount(name: str) -> slot_verify.Mount:
    return slot_verify.Mount("volume", name, f"/var/lib/docker/volumes/{name}/_data", "/var/lib")


def test_the_database_is_the_slots_own_and_nobody_elses() -> None:
    services = {"c3": "ktrdr-sandbox-3_db", "c4": "ktrdr-sandbox-4_db"}
    own = {"c3": [mount("ktrdr-sandbox-3_db-data")], "c4": [mount("ktrdr-sandbox-4_db-data")]}

    check = swarm_verify.check_database("ktrdr-sandbox-3", "c3", services, own)
    assert check.passed, check.detail

    shared = {**own, "c4": [mount("ktrdr-sandbox-3_db-data")]}
    check = swarm_verify.check_database("ktrdr-sandbox-3", "c3", services, shared)
    assert (check.passed, check.detail) == (
        False,
        "volume ktrdr-sandbox-3_db-data is also mounted by ktrdr-sandbox-4_db",
    )
    wrong = {"c3": [mount("elsewhere")]}
    check = swarm_verify.check_database("ktrdr-sandbox-3", "c3", services, wrong)
    assert check.detail == "data volume should be ktrdr-sandbox-3_db-data; mounts elsewhere"


def test_ports_are_the_env_files_and_nobody_elses(tmp_path: Path) -> None:
    deployed = ["backend", "db"]
    check = swarm_verify.check_ports(target(tmp_path), deployed, ROWS, {})
    assert check.passed, check.detail

    api = PORTS["KTRDR_API_PORT"]
    check = swarm_verify.check_ports(target(tmp_path), deployed, ROWS, {api: "other_backend"})
    assert check.detail == f"port {api} is also published by other_backend"

    moved = {**ROWS, "backend": ServiceRow("backend", "node-2", "10.0.0.2", "running", (1,))}
    check = swarm_verify.check_ports(target(tmp_path), deployed, moved, {})
    assert check.detail == f"KTRDR_API_PORT={api} is not published by backend"

    check = swarm_verify.check_ports(target(tmp_path), [*deployed, "jaeger"], ROWS, {})
    assert check.detail == "not running: jaeger"


def test_the_probe_is_looked_for_under_all_three_mounts() -> None:
    assert swarm_verify.probe_args("p") == [
        "test", "-f", "/app/data/p", "-a", "-f", "/app/models/p", "-a", "-f", "/app/strategies/p",
    ]  # fmt: skip
    assert swarm_verify.containers_command() == [
        "docker", "ps", "--no-trunc", "--filter", "label=com.docker.swarm.service.name",
        "--format", '{{.ID}} {{.Label "com.docker.swarm.service.name"}}',
    ]  # fmt: skip
