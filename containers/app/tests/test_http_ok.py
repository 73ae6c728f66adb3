"""http-ok.sh, the app's Compose healthcheck, against a real httpkit server on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpkit import Request, Response, Shutdown, json_response, serve_http, stop_servers

SCRIPT = Path(__file__).resolve().parents[1] / "http-ok.sh"


def http_ok(*args: str) -> subprocess.CompletedProcess[str]:
    # Container-side test: the script runs as Docker's healthcheck runs it, as a process.
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=10, check=False
    )


@pytest.fixture
def port() -> Iterator[int]:
    def app(request: Request) -> Response:
        if request.path == "/health":
            return json_response(200, {"status": "ok"})
        return json_response(503, {"detail": "degraded"})

    server = serve_http(app, 0, Shutdown(), "test")
    try:
        yield int(server.server_address[1])
    finally:
        stop_servers(server)


def test_2xx_passes(port: int) -> None:
    result = http_ok(str(port), "/health")
    assert (result.returncode, result.stdout) == (0, "")


def test_other_status_fails_with_one_line(port: int) -> None:
    result = http_ok(str(port), "/api/v1/health")
    assert result.returncode == 1
    assert result.stdout == f"http-ok: 127.0.0.1:{port}/api/v1/health: HTTP 503\n"


def test_refused_connection_fails() -> None:
    result = http_ok("1", "/health")
    assert result.returncode == 1
    assert "127.0.0.1:1: no connection" in result.stdout


def test_usage() -> None:
    result = http_ok("8000")
    assert result.returncode == 2
    assert "usage: http-ok PORT PATH" in result.stderr
