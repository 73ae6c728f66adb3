"""`net.service_urls` and `net.published_bind`: the one answer to "the URL of this slot's
service", before a start (the configured bind) and once it runs (what Docker publishes)."""

from __future__ import annotations

import pytest

from sandbox import engine, net, slots
from sandbox.docker import Container, ContainerState, PublishedPort
from tests.unit.support.factories import container


def published(*entries: tuple[str, int, int], state: ContainerState = "running") -> list[Container]:
    ports = tuple(PublishedPort(ip, host, inner) for ip, host, inner in entries)
    return [container(2, "backend", state=state, ports=ports)]


@pytest.mark.parametrize(
    ("entries", "bind"),
    [
        # Docker lists a wildcard bind twice: the IPv4 one is taken, reached on loopback.
        ((("::", 8002, 8000), ("0.0.0.0", 8002, 8000)), "0.0.0.0"),
        ((("::1", 8002, 8000),), "::1"),
        # The bridge gateway has the app's ports only; the bind address has them all.
        (
            (
                ("172.17.0.1", 8002, 8000),
                ("::1", 8002, 8000),
                ("::1", 5434, 5432),
            ),
            "::1",
        ),
    ],
)
def test_published_bind_is_where_most_ports_are(
    entries: tuple[tuple[str, int, int], ...], bind: str
) -> None:
    assert net.published_bind(published(*entries)) == bind


def test_a_slot_that_publishes_nothing_has_no_published_bind() -> None:
    assert net.published_bind([]) is None
    assert net.published_bind(published(("127.0.0.1", 8002, 8000), state="exited")) is None


def port(variable: str) -> int:
    return slots.ports(2)[variable]


@pytest.mark.parametrize(
    ("bind", "where", "api"),
    [
        ("127.0.0.1", engine.LOCAL, "http://127.0.0.1:8002/api/v1"),
        ("0.0.0.0", engine.LOCAL, "http://127.0.0.1:8002/api/v1"),
        ("::", engine.LOCAL, "http://127.0.0.1:8002/api/v1"),
        ("::1", engine.LOCAL, "http://[::1]:8002/api/v1"),
        (
            "0.0.0.0",
            engine.from_docker_host("tcp://build-box:2375"),
            "http://build-box:8002/api/v1",
        ),
        (
            "127.0.0.1",
            engine.from_docker_host("ssh://dev@build-box", override="127.0.0.1"),
            "http://127.0.0.1:8002/api/v1",
        ),
    ],
)
def test_service_urls_reach_the_bind_through_the_engine(
    bind: str, where: engine.Engine, api: str
) -> None:
    urls = net.service_urls(bind, port, where)
    assert urls["backend"] == api
    host = api.removeprefix("http://").rsplit(":", 1)[0]
    assert urls["db"] == f"postgresql://ktrdr@{host}:{port('KTRDR_DB_PORT')}/ktrdr"
