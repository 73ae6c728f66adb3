"""Parsing what `docker ps` says, on captured output."""

from __future__ import annotations

import json

from sandbox import docker
from sandbox.docker import PublishedPort


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
