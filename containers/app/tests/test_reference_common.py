"""Shared helpers: env reading, validation, and one real HTTP round trip on loopback."""

from __future__ import annotations

import pytest
from httpkit import Request, Response, Shutdown, json_response, one_line, serve_http, stop_servers
from ktrdr_reference.common import (
    ConfigError,
    check_http_url,
    env_int,
    env_optional_int,
    env_text,
    http_request,
)
from ktrdr_reference.probe import probe


def test_env_text() -> None:
    assert env_text({"A": " x "}, "A") == "x"
    assert env_text({"A": ""}, "A", "d") == "d"
    with pytest.raises(ConfigError, match="A is not set"):
        env_text({}, "A")


def test_env_int_bounds() -> None:
    assert env_int({}, "P", 8000) == 8000
    assert env_int({"P": "5"}, "P", minimum=1, maximum=9) == 5
    with pytest.raises(ConfigError, match=r"outside 1\.\.9"):
        env_int({"P": "10"}, "P", minimum=1, maximum=9)


def test_env_optional_int() -> None:
    assert env_optional_int({}, "SLOT_NUMBER") is None
    assert env_optional_int({"SLOT_NUMBER": "0"}, "SLOT_NUMBER") == 0


def test_check_http_url() -> None:
    assert check_http_url("http://backend:8000/api/v1/", "u") == "http://backend:8000/api/v1"
    for bad in ("", "backend:8000", "http://", "mailto:x@y"):
        with pytest.raises(ValueError):
            check_http_url(bad, "u")


def test_one_line_squeezes_and_bounds() -> None:
    assert one_line("a\n\tb  c") == "a b c"
    assert len(one_line("x" * 1000, 50)) == 50


def test_request_from_target() -> None:
    request = Request.from_target("get", "/a/b?x=1&x=2&y=", {"Content-Type": "t"})
    assert (request.method, request.path) == ("GET", "/a/b")
    assert request.query == {"x": ["1", "2"], "y": [""]}
    assert request.headers == {"content-type": "t"}


def test_round_trip_and_shutdown_answer() -> None:
    """serve_http and http_request together, then the 503 that follows a stop request."""
    shutdown = Shutdown()
    seen: list[Request] = []

    def app(request: Request) -> Response:
        seen.append(request)
        return json_response(201, {"echo": request.body.decode()})

    server = serve_http(app, 0, shutdown, "test")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        reply = http_request(url, method="POST", payload={"a": 1}, timeout=2)
        assert reply.status == 201
        assert reply.body == b'{"echo": "{\\"a\\": 1}"}'
        assert seen[0].headers["content-type"] == "application/json"
        assert probe(url) is None
        shutdown.stopping.set()
        reply = http_request(url, timeout=2)
        assert reply.status == 503
        assert reply.headers["retry-after"] == "5"
        assert probe(url) == "HTTP 503"
    finally:
        stop_servers(server)


def test_probe_reports_a_refused_connection() -> None:
    reason = probe("http://127.0.0.1:1/health")
    assert reason is not None and "refused" in reason.lower()
