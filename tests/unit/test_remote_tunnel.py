"""`inv tunnel`'s ssh command and its refusals (sandbox/remote/tunnel.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import engine, ports, runner
from sandbox.errors import Exit, SandboxError
from sandbox.remote import tunnel


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


# ----------------------------------------------------------------------------- a killed tunnel

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process
# An `ssh -N -L ...` stand-in: its command line reads as ssh's (argv[0] "ssh"), and it holds
# its forwards' ports as ssh would.
FAKE_SSH = """
import socket, sys, time
held = []
for i, arg in enumerate(sys.argv):
    if arg == "-L":
        port = int(sys.argv[i + 1].split(":")[1])
        s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); held.append(s)
print("ready", flush=True)
time.sleep(600)
"""


def free_ports(n: int) -> list[int]:
    found = []
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
        found.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return found


@pytest.fixture
def fake_ssh(tmp_path: Path) -> Iterator[Callable[[list[int]], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    # Python run through a link named ssh: its command line starts with .../ssh.
    ssh = tmp_path / "bin" / "ssh"
    ssh.parent.mkdir()
    ssh.symlink_to(sys.executable)

    def start(ports: list[int]) -> subprocess.Popen[str]:
        forwards = [a for p in ports for a in ("-L", f"127.0.0.1:{p}:127.0.0.1:{p}")]
        cmd = [str(ssh), "-c", FAKE_SSH, "-N"]
        proc = subprocess.Popen([*cmd, *forwards, "me@big-box"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_the_ssh_a_killed_tunnel_left_is_found_and_stopped(
    tmp_path: Path, fake_ssh: Callable[[list[int]], subprocess.Popen[str]]
) -> None:
    ports = free_ports(3)
    ssh = fake_ssh(ports)
    assert tunnel.is_tunnel(ssh.pid, ports)
    with pytest.raises(SandboxError) as caught:
        tunnel.check_free(ports)  # what the next `inv tunnel` met: the port, and who holds it
    assert caught.value.code is Exit.PORT_TAKEN
    assert f"(pid {ssh.pid})" in caught.value.message  # the holder, by name and pid
    tunnel.write_record(tmp_path, tunnel.Record(3, ssh.pid, DEAD_PID, tuple(ports), 0.0))
    assert tunnel.record_path(tmp_path, 3).stat().st_mode & 0o077 == 0
    said = tunnel.reclaim(tmp_path, 3)
    assert said == (
        f"stopped the ssh (pid {ssh.pid}) a killed `inv tunnel` of slot 3 left holding its 3 "
        "forwards"
    )
    assert ssh.wait(5) is not None
    tunnel.check_free(ports)  # every forward's port is free again
    assert not tunnel.record_path(tmp_path, 3).exists()
    assert tunnel.reclaim(tmp_path, 3) is None  # nothing left to say


def test_a_tunnel_whose_inv_still_runs_is_not_touched(
    tmp_path: Path, fake_ssh: Callable[[list[int]], subprocess.Popen[str]]
) -> None:
    ports = free_ports(1)
    ssh = fake_ssh(ports)
    tunnel.write_record(tmp_path, tunnel.Record(4, ssh.pid, os.getppid(), tuple(ports), 0.0))
    with pytest.raises(SandboxError) as caught:
        tunnel.reclaim(tmp_path, 4)
    assert caught.value.code is Exit.PORT_TAKEN
    assert caught.value.message.startswith("slot 4's tunnel is open already (inv tunnel pid ")
    assert ssh.poll() is None and tunnel.record_path(tmp_path, 4).exists()


def test_a_recorded_pid_now_someone_elses_is_never_killed(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        tunnel.write_record(tmp_path, tunnel.Record(5, other.pid, DEAD_PID, (8005,), 0.0))
        assert tunnel.reclaim(tmp_path, 5) is None
        assert other.poll() is None  # a reused pid: not ssh, not these forwards
        assert not tunnel.record_path(tmp_path, 5).exists()
    finally:
        other.kill()
        other.wait()


def test_an_ssh_forwarding_other_ports_is_not_ours(
    fake_ssh: Callable[[list[int]], subprocess.Popen[str]],
) -> None:
    ports = free_ports(2)
    ssh = fake_ssh(ports)
    assert not tunnel.is_tunnel(ssh.pid, ports[:1])
    assert not tunnel.is_tunnel(DEAD_PID, ports)


def test_a_zombie_is_not_running() -> None:
    child = subprocess.Popen(["true"])
    for _ in range(100):
        if not tunnel.running(child.pid):
            break
        time.sleep(0.02)
    assert not tunnel.running(child.pid)  # exited, not yet reaped: a zombie
    child.wait()


def test_an_ssh_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    sent: list[int] = []
    alive = {"up": True}

    def kill(pid: int, sig: int) -> None:
        sent.append(sig)
        if sig == signal.SIGKILL:
            alive["up"] = False

    def no_wait(seconds: float) -> None:
        pass

    system = tunnel.System(
        proc=tmp_path, alive=lambda pid: pid == 77 and alive["up"], kill=kill, sleep=no_wait
    )
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cmdline").write_bytes(
        b"\x00".join([b"ssh", b"-N", b"-L", b"127.0.0.1:8001:127.0.0.1:8001", b"h"])
    )
    tunnel.write_record(tmp_path / "locks", tunnel.Record(1, 77, DEAD_PID, (8001,), 0.0))
    assert tunnel.reclaim(tmp_path / "locks", 1, system) is not None
    assert sent == [signal.SIGTERM, signal.SIGKILL]


def test_a_taken_port_names_its_holder() -> None:
    listener = ports.Listener(8003, "127.0.0.1", 1, 4242, "ssh")
    assert tunnel.holder(listener) == "ssh (pid 4242)"
    proxy = ports.Listener(8003, "127.0.0.1", 1, 99, "docker-proxy")
    assert tunnel.holder(proxy) == "a container's published port (docker-proxy, pid 99)"
    assert tunnel.holder(None).startswith("a process this user cannot see")


def test_the_runner_tells_the_pid_before_it_waits() -> None:
    seen: list[int] = []
    result = runner.run(["true"], capture=False, started=seen.append)
    assert result.ok and len(seen) == 1 and seen[0] > 0
    missing = runner.run(["no-such-program-here"], capture=False, started=seen.append)
    assert missing.returncode == 127 and len(seen) == 1


def test_the_record_and_its_directory_are_private(tmp_path: Path) -> None:
    import stat

    lock_dir = tmp_path / "locks"
    stale = lock_dir / f".{tunnel.record_path(lock_dir, 3).name}.{os.getpid()}"
    lock_dir.mkdir(mode=0o755)
    stale.write_text("left by a killed writer")
    stale.chmod(0o644)
    record = tunnel.Record(slot=3, ssh_pid=4242, inv_pid=4243, ports=(8003,), at=0.0)
    tunnel.write_record(lock_dir, record)
    written = tunnel.record_path(lock_dir, 3)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert not stale.exists()
    fresh = tmp_path / "new-locks"
    tunnel.write_record(fresh, record)
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o077 == 0
