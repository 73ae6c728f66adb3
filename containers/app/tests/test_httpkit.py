"""httpkit, the serving plumbing the reference app and the stand-ins share: body rules, error
shapes, the Server header, shutdown answers and a prompt stop, over real loopback sockets."""

from __future__ import annotations

import gzip
import http.client
import io
import socket
import time

import pytest
from httpkit import (
    DEFAULT_RULES,
    BodyError,
    Request,
    Response,
    Rules,
    Shutdown,
    json_response,
    read_body,
    serve_http,
    stop_servers,
)
from standin_common import HTTP_RULES


def test_default_rules_refuse_chunked_bodies_and_leave_encodings_alone() -> None:
    with pytest.raises(BodyError) as refused:
        read_body({"transfer-encoding": "chunked"}, io.BytesIO(b"0\r\n\r\n"), DEFAULT_RULES)
    assert refused.value.status == 411
    packed = gzip.compress(b"{}")
    headers = {"content-length": str(len(packed)), "content-encoding": "gzip"}
    assert read_body(headers, io.BytesIO(packed), DEFAULT_RULES) == packed


@pytest.mark.parametrize(("length", "status"), [("x", 400), ("-1", 400), (str(64 * 1024 + 1), 413)])
def test_bad_content_lengths(length: str, status: int) -> None:
    with pytest.raises(BodyError) as refused:
        read_body({"content-length": length}, io.BytesIO(b""), DEFAULT_RULES)
    assert refused.value.status == status


def test_a_chunked_body_over_the_limit_is_refused() -> None:
    chunk = b"x" * 1024
    body = b"400\r\n" + chunk + b"\r\n"
    small = Rules(max_body_bytes=1500, decode_bodies=True)
    with pytest.raises(BodyError) as refused:
        read_body({"transfer-encoding": "chunked"}, io.BytesIO(body * 2), small)
    assert refused.value.status == 413


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def test_stand_in_rules_over_a_socket() -> None:
    """The stand-ins' Server header and {"message"} errors; 500 for a failing app; a bad
    request line answered 400 without killing the server; 503 + Retry-After after a stop."""
    shutdown = Shutdown()

    def app(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        return json_response(200, {"query": request.query})

    server = serve_http(app, 0, shutdown, "test-standin", ["/"], HTTP_RULES)
    port = server.server_address[1]
    try:
        status, headers, body = _get(port, "/?a=1")
        assert (status, body) == (200, b'{"query": {"a": ["1"]}}')
        assert headers["server"].startswith("test-standin (ktrdr-sandbox stand-in)")
        status, _, body = _get(port, "/boom")
        assert (status, body) == (500, b'{"message": "internal error: kaput"}')
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"garbage\r\n\r\n")
            # http.server takes a request line it cannot parse for HTTP/0.9: no status line.
            assert b"Error code: 400" in sock.makefile("rb").read()
        shutdown.stopping.set()
        status, headers, body = _get(port, "/")
        assert (status, headers["retry-after"], body) == (503, "5", b'{"message": "shutting down"}')
    finally:
        stop_servers(server)


def test_stop_servers_stops_several_at_once() -> None:
    servers = [serve_http(lambda r: json_response(200, {}), 0, Shutdown(), "t") for _ in range(4)]
    started = time.monotonic()
    stop_servers(*servers)
    assert time.monotonic() - started < 1.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", servers[0].server_address[1]), timeout=1)
