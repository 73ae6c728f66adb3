"""Parsing what `docker ps` says, on captured output."""

from __future__ import annotations

import json

import pytest

from sandbox import docker
from sandbox.docker import PublishedPort
from sandbox.errors import Exit, SandboxError


def test_ports_single_grouped_ipv6_and_unpublished() -> None:
    text = "127.0.0.1:4327-4328->4317-4318/tcp, 5432/tcp, [::]:8001->8000/tcp"
    assert docker.parse_ports(text) == (
        PublishedPort("127.0.0.1", 4327, 4317),
        PublishedPort("127.0.0.1", 4328, 4318),
        PublishedPort("::", 8001, 8000),
    )


def test_ps_keeps_commas_in_label_values() -> None:
    row = {
        "ID": "abc",
        "Names": "ktrdr-sandbox-3-db-1",
        "State": "running",
        "Status": "Up 5 seconds (health: starting)",
        "Ports": "127.0.0.1:5435->5432/tcp",
        "Project": "ktrdr-sandbox-3",
        "Service": "db",
        "WorkingDir": "/home/me/a,b/ktrdr-sandbox",
    }
    [container] = docker.parse_ps(json.dumps(row) + "\n\n")
    assert container.working_dir == "/home/me/a,b/ktrdr-sandbox"
    assert (container.slot, container.service, container.health) == (3, "db", "starting")
    assert container.ports == (PublishedPort("127.0.0.1", 5435, 5432),)


def test_ps_takes_each_of_dockers_states_and_refuses_another() -> None:
    rows = [{"Names": f"c-{state}", "State": state} for state in docker.CONTAINER_STATES]
    parsed = docker.parse_ps("\n".join(json.dumps(row) for row in rows))
    assert [c.state for c in parsed] == list(docker.CONTAINER_STATES)
    with pytest.raises(SandboxError, match="container c-x in state 'sleeping'") as caught:
        docker.parse_ps(json.dumps({"Names": "c-x", "State": "sleeping"}))
    assert caught.value.code == Exit.COMMAND


@pytest.mark.parametrize(
    ("status", "health"),
    [
        ("Up 2 minutes (healthy)", "healthy"),
        ("Up 2 minutes (unhealthy)", "unhealthy"),
        ("Up 3 seconds (health: starting)", "starting"),
        ("Up 2 minutes", "none"),
        ("Exited (0) 1 minute ago", "none"),
    ],
)
def test_health_from_the_status_column(status: str, health: docker.Health) -> None:
    container = docker.Container("i", "n", "p", "s", "running", status, "/")
    assert container.health == health


def test_ps_format_asks_for_the_labels_one_by_one() -> None:
    cmd = docker.ps_command()
    assert cmd[:6] == [
        "docker",
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        "label=" + docker.PROJECT_LABEL,
    ]
    assert '(.Label "com.docker.compose.project.working_dir")' in cmd[-1]
