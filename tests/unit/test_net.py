"""`net.service_urls` and `net.published_bind`: the one answer to "the URL of this slot's
service", before a start (the configured bind) and once it runs (what Docker publishes); and
`net.pg_ready`, the gate's database check, against a fake server on loopback."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

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
        # Only the app's containers run (the database stopped): as many on each address, and
        # the gateway sorts first; loopback is still the bind address.
        ((("10.200.0.1", 8002, 8000), ("127.0.0.1", 8002, 8000)), "127.0.0.1"),
        ((("10.200.0.1", 8002, 8000), ("0.0.0.0", 8002, 8000)), "0.0.0.0"),
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


# --- pg_ready: the database check ---------------------------------------------------------


def serve_once(answer: bytes) -> Iterator[tuple[int, list[bytes]]]:
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def handle() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(1024))
            conn.sendall(answer)

    thread = threading.Thread(target=handle, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def accepting() -> Iterator[tuple[int, list[bytes]]]:
    # AuthenticationSASL, as PostgreSQL 15 with scram-sha-256 answers a startup packet.
    yield from serve_once(b"R" + struct.pack("!ii", 8, 10))


@pytest.fixture
def starting() -> Iterator[tuple[int, list[bytes]]]:
    fields = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0"
    yield from serve_once(b"E" + struct.pack("!i", 4 + len(fields)) + fields)


def test_an_authentication_request_means_ready(accepting: tuple[int, list[bytes]]) -> None:
    port, received = accepting
    assert net.pg_ready("127.0.0.1", port, 2.0) == (True, "accepting connections")
    length, version = struct.unpack("!ii", received[0][:8])
    assert version == 3 << 16 and length == len(received[0])
    assert b"user\0ktrdr\0database\0ktrdr\0" in received[0]


def test_an_error_answer_is_the_server_own_words(starting: tuple[int, list[bytes]]) -> None:
    port, _ = starting
    assert net.pg_ready("127.0.0.1", port, 2.0) == (False, "the database system is starting up")


def test_nothing_listening_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        assert net.pg_ready("127.0.0.1", port, 1.0) == (False, "connection refused")
