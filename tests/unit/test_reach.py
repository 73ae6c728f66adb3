"""Reach from containers and runs from inside one, without Docker: the pure rules exactly, the
hooks with the engine's answers faked (tests/e2e/test_reach.py runs them on a real engine)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import compose, engine, reach, slots, status
from sandbox.docker import PublishedPort
from sandbox.errors import Exit, SandboxError
from tests.unit.support.factories import container

GATEWAY = "172.17.0.1"
MOUNTS = (
    reach.Mount("/srv/agent-home", "/home/agent"),
    reach.Mount("/srv/agent-home/cache", "/home/agent/.cache"),
    reach.Mount("/var/lib/docker/volumes/work/_data", "/work"),
)


@pytest.fixture(autouse=True)
def forget_facts() -> None:
    """Each test asks afresh: the facts are cached per process."""
    for cached in (reach._gateway, reach._operating_system, reach._self):
        cached.cache_clear()


def values(slot: int) -> dict[str, str]:
    return {name: str(port) for name, port in slots.ports(slot).items()}


def config(slot: int) -> compose.SlotConfig:
    """A slot's configuration with the default bind address, 127.0.0.1."""
    return compose.SlotConfig(slot, Path("/checkout"), values(slot), images={})


def test_the_mode_defaults_to_loopback_and_refuses_anything_else() -> None:
    assert reach.parse_mode(None) == "loopback"
    assert reach.parse_mode(" Bridge ") == "bridge"
    with pytest.raises(SandboxError) as caught:
        reach.parse_mode("everywhere")
    assert caught.value.code == Exit.USAGE
    assert str(caught.value).startswith("KTRDR_AGENT_REACH='everywhere': use loopback")


def test_the_gateway_is_ipams_else_the_first_host_of_the_subnet() -> None:
    assert reach.gateway_from_ipam([{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]) == (
        "172.18.0.1"
    )
    # Engine 20.10 lists the default bridge without a Gateway.
    assert reach.gateway_from_ipam([{"Subnet": "172.17.0.0/16"}]) == "172.17.0.1"
    assert reach.gateway_from_ipam([{"Subnet": "fd00:1::/64", "Gateway": "fd00:1::1"}]) is None
    assert reach.gateway_from_ipam([]) is None


def test_bridge_ports_publish_every_port_but_the_databases_on_the_gateway() -> None:
    agents = reach.bridge_ports(GATEWAY, values(7))
    assert "db" not in agents
    # The tool itself in a container needs the database there, for the gate.
    assert reach.bridge_ports(GATEWAY, values(7), database=True) == {
        "db": ["172.17.0.1:5439:5432"],
        "backend": ["172.17.0.1:8007:8000"],
        "jaeger": ["172.17.0.1:16693:16686", "172.17.0.1:4387:4317", "172.17.0.1:4388:4318"],
        "prometheus": ["172.17.0.1:9097:9090"],
        "grafana": ["172.17.0.1:3007:3000"],
        "backtest-worker-1": ["172.17.0.1:5070:5070"],
        "backtest-worker-2": ["172.17.0.1:5071:5071"],
        "training-worker-1": ["172.17.0.1:5072:5072"],
        "training-worker-2": ["172.17.0.1:5073:5073"],
    }


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/home/agent", "/srv/agent-home"),
        ("/home/agent/.ktrdr/shared", "/srv/agent-home/.ktrdr/shared"),
        ("/home/agent/.cache/x", "/srv/agent-home/cache/x"),  # the deepest mount wins
        ("/work/ktrdr/../ktrdr-feature", "/var/lib/docker/volumes/work/_data/ktrdr-feature"),
        ("/home/agentx", None),  # a sibling's prefix is not a parent
        ("/tmp/checkout", None),
    ],
)
def test_paths_are_translated_through_the_deepest_mount(path: str, host: str | None) -> None:
    assert reach.translate(path, MOUNTS) == host


def test_volume_specs_keep_their_mode_and_named_volumes_stay() -> None:
    assert reach.translate_volume("/work/ktrdr/ktrdr:/app/ktrdr:ro", MOUNTS) == (
        "/var/lib/docker/volumes/work/_data/ktrdr/ktrdr:/app/ktrdr:ro"
    )
    assert reach.translate_volume("ktrdr-sandbox-1_source:/source:ro", MOUNTS) == (
        "ktrdr-sandbox-1_source:/source:ro"
    )
    with pytest.raises(SandboxError) as caught:
        reach.translate_volume("/tmp/checkout/ktrdr:/app/ktrdr:ro", MOUNTS)
    assert caught.value.code == Exit.USAGE
    assert str(caught.value) == (
        "/tmp/checkout/ktrdr exists only inside this container: the Docker engine cannot "
        "bind-mount it. Start this container with `-v HOSTPATH:/tmp/checkout/ktrdr` (the same "
        "path on both sides is simplest), or point the setting that names it at a mounted path"
    )


def test_mounts_come_from_docker_inspect() -> None:
    document = [
        {
            "Mounts": [
                {"Type": "bind", "Source": "/srv/a", "Destination": "/a"},
                {
                    "Type": "volume",
                    "Source": "/var/lib/docker/volumes/v/_data",
                    "Destination": "/v",
                },
                {"Type": "tmpfs", "Destination": "/t"},
            ]
        }
    ]
    assert reach.mounts_from_inspect(document) == [
        reach.Mount("/srv/a", "/a"),
        reach.Mount("/var/lib/docker/volumes/v/_data", "/v"),
    ]
    assert reach.mounts_from_inspect([]) == []


def test_the_container_id_is_read_from_mountinfo(tmp_path: Path) -> None:
    ident = "cedc8dff1ac528d2e8860a62d433dc3d149863c55a79ea41c52133134f0c753a"
    line = f"512 498 8:1 /var/lib/docker/containers/{ident}/hostname /etc/hostname rw - ext4\n"
    assert engine.container_id_in("1 0 0:1 / / rw - overlay\n" + line) == ident
    assert engine.container_id_in("1 0 0:1 / / rw - overlay\n") is None
    # On the engine's own host: the shm mount of every running container is in the table.
    shm = f"640 27 0:99 / /var/lib/docker/containers/{ident}/mounts/shm rw - tmpfs shm rw\n"
    assert engine.container_id_in("1 0 0:1 / / rw - ext4\n" + shm) is None
    missing = tmp_path / "mountinfo"
    assert engine.own_container_id(missing) is None


def test_exposure_says_every_address_and_who_reaches_it() -> None:
    world = reach.World
    assert reach.exposure("127.0.0.1", None, world.HOST, 8007) == (
        "ports on 127.0.0.1 only: containers cannot reach them (KTRDR_AGENT_REACH=bridge also "
        "publishes them on the Docker bridge gateway)"
    )
    assert reach.exposure("127.0.0.1", GATEWAY, world.HOST, 8007) == (
        "ports on 127.0.0.1 and on 172.17.0.1 (the Docker bridge gateway), no other address; "
        "containers on this host reach them at http://host.docker.internal:8007 with "
        "--add-host=host.docker.internal:host-gateway; the database stays on 127.0.0.1 only "
        "(Docker Engine on Linux: that name is the gateway, not the host's loopback)"
    )
    assert reach.exposure("127.0.0.1", GATEWAY, world.CONTAINER, 8007).endswith(
        "; this container reaches them at 172.17.0.1"
    )
    assert reach.exposure("0.0.0.0", None, world.HOST, 8007).startswith(
        "ports on every address of the engine's host (0.0.0.0): the network reaches them"
    )
    assert "Docker Desktop forwards host.docker.internal" in reach.exposure(
        "127.0.0.1", None, world.DESKTOP, 8007
    )


def fake_engine(
    monkeypatch: pytest.MonkeyPatch,
    *,
    me: reach.Self | None = None,
    system: str = "Debian GNU/Linux 12 (bookworm)",
) -> None:
    monkeypatch.setattr(reach, "_gateway", lambda key, items: GATEWAY)
    monkeypatch.setattr(reach, "_operating_system", lambda key, items: system)
    monkeypatch.setattr(reach, "_self", lambda items: me)
    ident = None if me is None else me.id
    monkeypatch.setattr(engine, "own_container_id", lambda mountinfo=None: ident)


def override(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "slot-7.compose.json"
    path.write_text(json.dumps(document))
    return path


def test_the_default_leaves_the_override_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_engine(monkeypatch)
    path = override(tmp_path, {"services": {"backend": {"labels": {}}}})
    before = path.read_text()
    reach.adjust_override(path, config(7), {})
    assert path.read_text() == before
    assert reach.exposure_line({}, "127.0.0.1", 8007) is None
    assert reach.env_sandbox_lines({}, "127.0.0.1", 8007) == []


def test_bridge_adds_the_gateway_ports_and_the_agent_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_engine(monkeypatch)
    environ = {"KTRDR_AGENT_REACH": "bridge"}
    path = override(tmp_path, {"services": {"backend": {"labels": {"a": "b"}}}})
    reach.adjust_override(path, config(7), environ)
    services = json.loads(path.read_text())["services"]
    assert services["backend"] == {"labels": {"a": "b"}, "ports": ["172.17.0.1:8007:8000"]}
    # Every service but the database (a default password) is on the gateway too.
    assert set(services) == set(slots.SERVICES) - {"db"}
    assert reach.env_sandbox_lines(environ, "127.0.0.1", 8007) == [
        "KTRDR_AGENT_API_URL=http://host.docker.internal:8007/api/v1"
    ]
    line = reach.exposure_line(environ, "127.0.0.1", 8007)
    assert line is not None and line.startswith("ports on 127.0.0.1 and on 172.17.0.1")


def test_bridge_on_a_wildcard_bind_or_docker_desktop_publishes_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {"KTRDR_AGENT_REACH": "bridge"}
    fake_engine(monkeypatch)
    assert reach.publish_on(environ, "0.0.0.0") is None
    fake_engine(monkeypatch, system="Docker Desktop")
    assert reach.publish_on(environ, "127.0.0.1") is None
    assert reach.env_sandbox_lines(environ, "127.0.0.1", 8007) == [
        "KTRDR_AGENT_API_URL=http://host.docker.internal:8007/api/v1"
    ]


ME = reach.Self("c" * 64, MOUNTS, host_network=False)


def test_inside_a_container_paths_are_translated_and_ports_reached_at_the_gateway(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_engine(monkeypatch, me=ME)
    assert reach.mode({}) == "bridge"  # this very tool must reach the ports
    assert reach.connect_host({}) == GATEWAY
    assert reach.host_path("/home/agent/.ktrdr/shared", {}) == "/srv/agent-home/.ktrdr/shared"
    env = reach.compose_environment({"KTRDR_SHARED_DIR": "/home/agent/s"}, Path("/work"), {})
    assert env == {"KTRDR_SHARED_DIR": "/srv/agent-home/s"}
    path = override(tmp_path, {"services": {"backend": {"volumes": ["/work/k/ktrdr:/app:ro"]}}})
    reach.adjust_override(path, config(7), {})
    backend = json.loads(path.read_text())["services"]["backend"]
    assert backend["volumes"] == ["/var/lib/docker/volumes/work/_data/k/ktrdr:/app:ro"]
    assert backend["ports"] == ["172.17.0.1:8007:8000"]
    line = reach.container_line({}, [Path("/home/agent/.ktrdr/shared")])
    assert line == (
        f"in container {'c' * 12} of this engine (ports reached at 172.17.0.1); "
        "/home/agent/.ktrdr/shared is /srv/agent-home/.ktrdr/shared there"
    )
    with pytest.raises(SandboxError, match=r"^/tmp/x exists only inside this container"):
        reach.container_line({}, [Path("/tmp/x")])
    # The engine's URLs and the gate follow.
    found = engine._from_container(engine.LOCAL, {})
    assert found.connect_override == GATEWAY
    told = replace(engine.LOCAL, connect_override="h")  # KTRDR_CONNECT_HOST still wins
    assert engine._from_container(told, {}) == told


def test_a_container_on_the_hosts_network_keeps_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(monkeypatch, me=reach.Self("d" * 64, MOUNTS, host_network=True))
    assert reach.mode({}) == "loopback"
    assert reach.connect_host({}) == ""
    assert engine._from_container(engine.LOCAL, {}) == engine.LOCAL


def test_a_remote_engine_or_no_container_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(monkeypatch, me=ME)
    remote = {"DOCKER_HOST": "tcp://big-box:2375"}
    assert not reach.in_container_with_socket(remote)
    assert reach.host_path("/tmp/x", remote) == "/tmp/x"
    fake_engine(monkeypatch, me=None)
    assert not reach.in_container_with_socket({})
    assert reach.host_path("/tmp/x", {}) == "/tmp/x"
    assert engine._from_container(engine.LOCAL, {}) == engine.LOCAL


def backend(*bindings: tuple[str, int]) -> list[Any]:
    ports = tuple(PublishedPort(ip, port, 8000) for ip, port in bindings)
    return [container(7, "backend", ports=ports)]


def test_status_gives_the_agent_url_only_where_the_bridge_reaches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_engine(monkeypatch)
    url = "http://host.docker.internal:8007/api/v1"
    assert status.agent_url(backend(("127.0.0.1", 8007)), 7) is None
    assert status.agent_url(backend(("127.0.0.1", 8007), (GATEWAY, 8007)), 7) == url
    assert status.agent_url(backend(("0.0.0.0", 8007)), 7) == url
    assert status.agent_url(backend(("192.0.2.2", 8007)), 7) is None
