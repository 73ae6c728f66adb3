"""`inv tunnel`'s ssh command and its refusals (sandbox/tunnel.py)."""

from __future__ import annotations

import socket

import pytest

from sandbox import engine, tunnel
from sandbox.errors import Exit, SandboxError


def test_the_command_forwards_each_port_on_its_own_connection() -> None:
    where = engine.from_docker_host("ssh://me@big-box:2200")
    cmd = tunnel.command(where, [8001, 5433])
    assert cmd[:2] == ["ssh", "-N"]
    assert cmd[-3:] == ["-p", "2200", "me@big-box"]
    forwards = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-L"]
    assert forwards == ["127.0.0.1:8001:127.0.0.1:8001", "127.0.0.1:5433:127.0.0.1:5433"]
    options = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-o"]
    assert {"ControlMaster=no", "ControlPath=none", "ExitOnForwardFailure=yes"} <= set(options)


def test_a_destination_without_user_or_port_is_the_host_alone() -> None:
    assert tunnel.destination(engine.from_docker_host("ssh://big-box")) == ["big-box"]


@pytest.mark.parametrize("endpoint", ["tcp://big-box:2375", "unix:///var/run/docker.sock"])
def test_only_an_ssh_engine_has_a_connection_to_forward_over(endpoint: str) -> None:
    with pytest.raises(SandboxError) as caught:
        tunnel.command(engine.from_docker_host(endpoint), [8001])
    assert caught.value.code is Exit.USAGE
    assert caught.value.message.startswith("inv tunnel forwards ports over an ssh:// engine's")


def test_a_port_taken_here_is_refused_before_ssh_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SandboxError) as caught:
            tunnel.check_free([port])
    assert caught.value.code is Exit.PORT_TAKEN
    assert caught.value.message.startswith(f"port {port} is taken on this machine's 127.0.0.1")
    tunnel.check_free([port])  # released: free again


def test_a_loopback_bind_on_an_ssh_engine_points_at_the_tunnel() -> None:
    why = engine.from_docker_host("ssh://me@big-box").unreachable_bind("127.0.0.1")
    assert why is not None and "`inv tunnel --slot=N`" in why
    assert "KTRDR_CONNECT_HOST=127.0.0.1" in why
    tcp = engine.from_docker_host("tcp://big-box:2375").unreachable_bind("127.0.0.1")
    assert tcp is not None and "inv tunnel" not in tcp
