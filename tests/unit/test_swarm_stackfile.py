"""The stack renderer: a slot's rendered Compose model in, the stack file swarm accepts out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import Exit, SandboxError
from sandbox.swarm import stackfile

FIXTURES = Path(__file__).parent / "fixtures"
# `docker compose config --format json` of slot 1 with the reference app's override (paths made
# neutral): what `inv up --slot=1` renders on a machine with offline images.
MODEL = json.loads((FIXTURES / "slot-1.compose.json").read_text())
REGISTRY = "registry.example:5000"
PROMETHEUS_YML = MODEL["configs"]["prometheus"]["content"]


def images() -> dict[str, str]:
    names = {s["image"] for s in MODEL["services"].values()}
    return {name: f"{REGISTRY}/{name}" for name in names}


def test_the_whole_slot_renders_to_the_reviewed_stack_file() -> None:
    rendered = stackfile.render(MODEL, project="ktrdr-sandbox-1", images=images())

    assert rendered.text() == (FIXTURES / "slot-1.stack.json").read_text()
    assert rendered.files == {"configs/prometheus": PROMETHEUS_YML}


def test_what_the_stack_loader_refuses_is_gone() -> None:
    document = stackfile.render(MODEL, project="ktrdr-sandbox-1").document

    assert "name" not in document
    assert not any(k.startswith("x-") for k in document)
    assert "content" not in document["configs"]["prometheus"]
    for service in document["services"].values():
        assert "build" not in service
        assert "depends_on" not in service
        assert "restart" not in service
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
        for port in service.get("ports", ()):
            assert set(port) == {"mode", "protocol", "published", "target"}
            assert port["mode"] == "host"
            assert isinstance(port["published"], int)


def test_the_database_is_pinned_and_the_shared_directory_users_too() -> None:
    services = stackfile.render(MODEL, project="ktrdr-sandbox-1").document["services"]

    placed = {
        name: s["deploy"].get("placement", {}).get("constraints", [])
        for name, s in services.items()
    }
    assert placed == {
        "db": ["node.labels.ktrdr.sandbox.db == true"],
        "backend": ["node.labels.ktrdr.sandbox.shared == true"],
        "backtest-worker-1": ["node.labels.ktrdr.sandbox.shared == true"],
        "backtest-worker-2": ["node.labels.ktrdr.sandbox.shared == true"],
        "training-worker-1": ["node.labels.ktrdr.sandbox.shared == true"],
        "training-worker-2": ["node.labels.ktrdr.sandbox.shared == true"],
        "jaeger": [],
        "prometheus": [],
        "grafana": [],
    }


def test_one_service_exactly() -> None:
    spec: dict[str, Any] = {
        "image": "app:1",
        "restart": "no",
        "init": True,
        "entrypoint": None,
        "command": ["serve"],
        "build": {"context": "."},
        "depends_on": {"db": {"condition": "service_started", "required": True}},
        "labels": {"a": "b"},
        "networks": {"default": None},
        "ports": [
            {
                "mode": "ingress",
                "host_ip": "127.0.0.1",
                "target": 80,
                "published": "8080",
                "protocol": "tcp",
            }
        ],
        "volumes": [{"type": "volume", "source": "cache", "target": "/c", "volume": {}}],
    }

    out = stackfile.service("web", spec, {"app:1": "reg:5000/app:1"}, {})

    assert out == {
        "image": "reg:5000/app:1",
        "init": True,
        "command": ["serve"],
        "labels": {"a": "b"},
        "deploy": {
            "endpoint_mode": "dnsrr",
            "replicas": 1,
            "restart_policy": {"condition": "none"},
            "labels": {"a": "b"},
        },
        "ports": [{"mode": "host", "protocol": "tcp", "published": 8080, "target": 80}],
        "volumes": [{"source": "cache", "target": "/c", "type": "volume"}],
        "networks": ["default"],
    }


@pytest.mark.parametrize(
    ("restart", "condition"),
    [
        (None, "none"),
        ("no", "none"),
        ("always", "any"),
        ("unless-stopped", "any"),
        ("on-failure", "on-failure"),
    ],
)
def test_restart_becomes_a_restart_policy(restart: str | None, condition: str) -> None:
    spec = {"image": "x", **({"restart": restart} if restart else {})}

    out = stackfile.service("s", spec, {}, {})

    assert out["deploy"]["restart_policy"] == {"condition": condition}


def test_a_key_without_a_mapping_is_refused_by_name() -> None:
    with pytest.raises(SandboxError, match="'privileged'") as caught:
        stackfile.service("s", {"image": "x", "privileged": True}, {}, {})
    assert caught.value.code is Exit.USAGE


def test_a_random_host_port_is_refused() -> None:
    with pytest.raises(SandboxError, match="fixed ports only"):
        stackfile.port({"target": 80, "published": ""}, "web")


def test_a_changed_config_gets_a_new_name() -> None:
    first = stackfile.config_name("ktrdr-sandbox-1", "prometheus", "a: 1\n")
    second = stackfile.config_name("ktrdr-sandbox-1", "prometheus", "a: 2\n")

    assert first.startswith("ktrdr-sandbox-1_prometheus-")
    assert first != second


def test_services_outside_the_layout_are_left_out() -> None:
    chosen = {"db", "backend", "jaeger", "prometheus", "grafana"}

    rendered = stackfile.render(MODEL, project="ktrdr-sandbox-1", services=chosen)

    assert set(rendered.document["services"]) == chosen


def test_without_prometheus_no_config_is_written() -> None:
    rendered = stackfile.render(MODEL, project="ktrdr-sandbox-1", services={"db"})

    assert "configs" not in rendered.document
    assert rendered.files == {}


def test_write_puts_the_config_beside_the_stack_file(tmp_path: Path) -> None:
    rendered = stackfile.render(MODEL, project="ktrdr-sandbox-1")

    path = rendered.write(tmp_path / "stack")

    assert path == tmp_path / "stack" / "stack.json"
    assert (tmp_path / "stack" / "configs" / "prometheus").read_text() == PROMETHEUS_YML
    assert json.loads(path.read_text()) == rendered.document


def test_bind_sources_and_published_ports() -> None:
    rendered = stackfile.render(MODEL, project="ktrdr-sandbox-1")

    assert stackfile.bind_sources(rendered) == [
        "/home/user/.ktrdr/shared/data",
        "/home/user/.ktrdr/shared/models",
        "/home/user/.ktrdr/shared/strategies",
    ]
    assert stackfile.published(rendered) == {
        5433: "db",
        8001: "backend",
        5010: "backtest-worker-1",
        5011: "backtest-worker-2",
        5012: "training-worker-1",
        5013: "training-worker-2",
        16687: "jaeger",
        4327: "jaeger",
        4328: "jaeger",
        9091: "prometheus",
        3001: "grafana",
    }


def test_a_model_without_services_is_an_error() -> None:
    with pytest.raises(SandboxError, match="no services"):
        stackfile.parse_model("{}")


def test_model_command() -> None:
    assert stackfile.model_command(["docker", "compose", "-p", "x"]) == [
        "docker",
        "compose",
        "-p",
        "x",
        "config",
        "--format",
        "json",
    ]


@pytest.mark.parametrize(
    ("duration", "expected"),
    [("1m0s", 60.0), ("2s", 2.0), ("2m0s", 120.0), ("500ms", 0.5), ("1h0m0s", 3600.0)],
)
def test_go_durations(duration: str, expected: float) -> None:
    assert stackfile.seconds(duration) == expected


def test_a_duration_compose_never_writes_is_refused() -> None:
    with pytest.raises(SandboxError, match="not a duration"):
        stackfile.seconds("1 minute")


def test_a_long_healthcheck_interval_is_capped_and_the_rest_kept() -> None:
    check = {"test": ["CMD", "true"], "interval": "1m0s", "timeout": "5s", "retries": 3}

    assert stackfile.healthcheck(check) == {
        "test": ["CMD", "true"],
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
    }
    assert stackfile.healthcheck({"interval": "2s"}) == {"interval": "2s"}
