"""`net.pg_ready`: the gate's database check, against a fake server on loopback."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from sandbox import net


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
