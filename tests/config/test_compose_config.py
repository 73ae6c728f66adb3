"""Every env file rendered through the real `docker compose config`, checked against the scheme.

Needs the Compose CLI but no engine: rendering a file talks to no daemon.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox import (
    COMPOSE_FILE,
    ROOT,
    apps,
    compose,
    envfiles,
    observability,
    slotfiles,
    slots,
    stack,
)
from sandbox.runner import run

HOME = Path("/home/sandbox-config-test")


# No KTRDR_* exports leak in, and HOME is a known one (the env files expand ${HOME}).
# DOCKER_CONFIG stays the real one: that is where the CLI finds its compose plugin.
ENV = {
    "PATH": os.environ["PATH"],
    "HOME": str(HOME),
    "DOCKER_CONFIG": os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker")),
}


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    return compose.find_compose(ENV)


def render(compose_cmd: list[str], env_file: Path | None) -> dict[str, Any]:
    # Without --env-file Compose also reads ./.env, which holds only image names (written by
    # `inv images`), so ports and mounts are the compose file's and the env file's own.
    env = ENV
    args = [*compose_cmd, "-f", str(ROOT / COMPOSE_FILE)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    result = run([*args, "config", "--format", "json"], env=env, cwd=ROOT, timeout=60)
    assert result.ok, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def published(config: dict[str, Any], service: str) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = config["services"][service].get("ports", [])
    return ports


@pytest.mark.parametrize("slot", list(slots.SLOTS))
def test_env_file_renders_to_the_scheme(compose_cmd: list[str], slot: int) -> None:
    config = render(compose_cmd, envfiles.env_path(ROOT, slot))
    assert config["name"] == slots.project_name(slot)
    assert sorted(config["services"]) == sorted(slots.SERVICES)
    expected = slots.ports(slot)
    for spec in slots.PORTS:
        host_port = expected[spec.variable]
        inner = spec.container_port if spec.container_port is not None else host_port
        matches = [
            p
            for p in published(config, spec.service)
            if int(p["published"]) == host_port and int(p["target"]) == inner
        ]
        assert len(matches) == 1, f"{spec.variable}: {spec.service} does not publish {host_port}"
        assert matches[0]["host_ip"] == "127.0.0.1", f"{spec.variable} binds beyond loopback"
    all_published = [p for s in config["services"] for p in published(config, s)]
    assert len(all_published) == len(slots.PORTS), "a port is published that the scheme lacks"

    shared = HOME / ".ktrdr" / "shared" if slot else ROOT
    for service in ("backend", *(w.service for w in slots.WORKERS)):
        mounts = {v["target"]: v for v in config["services"][service]["volumes"]}
        for name in ("data", "models", "strategies"):
            assert mounts[f"/app/{name}"]["source"] == str(shared / name), (service, name)
        read_only = service.startswith("backtest-")
        assert bool(mounts["/app/models"].get("read_only")) is read_only
        assert bool(mounts["/app/strategies"].get("read_only")) is read_only
        assert not mounts["/app/data"].get("read_only")


@pytest.mark.parametrize("slot", [0, 1, 10])
def test_services_are_isolated_and_healthchecked(compose_cmd: list[str], slot: int) -> None:
    config = render(compose_cmd, envfiles.env_path(ROOT, slot))
    for name, service in config["services"].items():
        assert "container_name" not in service, name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    db = config["services"]["db"]
    assert db["volumes"][0]["source"] == "db-data"
    assert config["volumes"]["db-data"]["name"] == f"ktrdr-sandbox-{slot}_db-data"
    assert not config["volumes"]["db-data"].get("external")
    # Nothing waits for a healthcheck: the app retries and the gate waits.
    assert config["services"]["backend"]["depends_on"]["db"]["condition"] == "service_started"
    for name, service in config["services"].items():
        for needed in service.get("depends_on", {}).values():
            assert needed["condition"] == "service_started", name
    for worker in slots.WORKERS:
        env = config["services"][worker.service]["environment"]
        port = slots.ports(slot)[worker.port_variable]
        assert env["WORKER_PORT"] == str(port)
        assert env["WORKER_PUBLIC_BASE_URL"] == f"http://{worker.service}:{port}"
        assert env["WORKER_TYPE"] == worker.worker_type
        assert env["KTRDR_API_CLIENT_BASE_URL"] == "http://backend:8000/api/v1"
        check = config["services"][worker.service]["healthcheck"]["test"]
        assert check == ["CMD", "http-ok", str(port), "/health"]


def test_no_env_file_is_slot_zero(compose_cmd: list[str]) -> None:
    plain = render(compose_cmd, None)
    slot0 = render(compose_cmd, envfiles.env_path(ROOT, 0))
    assert plain["name"] == "ktrdr-sandbox-0"
    for service in slots.SERVICES:
        assert published(plain, service) == published(slot0, service)


def test_bind_address_can_be_widened_on_request(compose_cmd: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "wide.env"
    env_file.write_text(envfiles.render(1) + "KTRDR_BIND_ADDR=0.0.0.0\n")
    config = render(compose_cmd, env_file)
    assert {p["host_ip"] for p in published(config, "db")} == {"0.0.0.0"}


def test_prometheus_config_is_inline_and_equal_to_the_file(compose_cmd: list[str]) -> None:
    """Compose `configs:` with inline content reach any engine (a bind mount of a client file
    does not exist on a remote one); the inline copy is containers/prometheus/prometheus.yml."""
    config = render(compose_cmd, envfiles.env_path(ROOT, 1))
    prometheus = config["services"]["prometheus"]
    assert prometheus["configs"] == [
        {"source": "prometheus", "target": "/etc/prometheus/prometheus.yml"}
    ]
    expected = (ROOT / "containers" / "prometheus" / "prometheus.yml").read_text()
    assert config["configs"]["prometheus"]["content"] == expected, (
        "copy containers/prometheus/prometheus.yml into docker-compose.sandbox.yml's "
        "configs.prometheus.content (indented six spaces; `$` written `$$`)"
    )


def test_no_service_bind_mounts_a_checkout_file(compose_cmd: list[str]) -> None:
    """Only the shared directory is bind-mounted: anything else from the checkout would be a
    client path that a remote engine's host does not have."""
    config = render(compose_cmd, envfiles.env_path(ROOT, 1))
    shared = str(HOME / ".ktrdr" / "shared")
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert volume["source"].startswith(shared + "/"), (name, volume["source"])


def test_a_shared_light_override_renders_on_the_shared_network(
    compose_cmd: list[str], tmp_path: Path
) -> None:
    layout = slots.Layout("light", "shared")
    override = tmp_path / "slot-3.compose.json"
    override.write_text(json.dumps(slotfiles.override(apps.BUILT_IN, None, {}, layout)))
    target = compose.load_target(ROOT, 3)
    up = stack.up_command(compose_cmd, target, [override], layout)
    # The same files and flags `inv up` uses, rendered instead of started.
    cmd = [*up[: up.index("up")], "config", "--format", "json"]
    result = run(cmd, env=ENV, cwd=ROOT, timeout=60)
    assert result.ok, result.stderr
    config = json.loads(result.stdout)
    network = config["networks"]["observability"]
    assert (network["name"], network["external"]) == ("ktrdr-sandbox-observability", True)
    for service in layout.app_services:
        assert set(config["services"][service]["networks"]) == {"default", "observability"}
    assert "networks" not in config["services"]["db"] or set(
        config["services"]["db"]["networks"]
    ) == {"default"}
    env = config["services"]["backend"]["environment"]
    assert env["KTRDR_OTEL_OTLP_ENDPOINT"] == "http://ktrdr-observability-jaeger:4317"


def test_the_observability_stack_renders_on_its_fixed_ports(compose_cmd: list[str]) -> None:
    cmd = observability.command(compose_cmd, ROOT, "config", "--format", "json")
    result = run(cmd, env=ENV, cwd=ROOT, timeout=60)
    assert result.ok, result.stderr
    config = json.loads(result.stdout)
    assert config["name"] == observability.PROJECT
    assert sorted(config["services"]) == sorted(slots.OBSERVABILITY_SERVICES)
    found = {
        (service, int(p["published"]), p["target"])
        for service, spec in config["services"].items()
        for p in spec["ports"]
    }
    assert found == {(p.service, p.port, p.container_port) for p in slots.OBSERVABILITY_PORTS}
    # No file of the checkout is mounted: config arrives as inline content.
    assert all(not spec.get("volumes") for spec in config["services"].values())
    assert observability.TARGETS_FILE in config["configs"]["prometheus"]["content"]
