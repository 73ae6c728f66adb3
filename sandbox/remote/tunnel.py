"""`inv tunnel`: a slot's ports forwarded over the SSH connection of an ssh:// engine.

On an ssh:// engine the slot's ports can stay bound to the remote host's loopback (the default
`KTRDR_BIND_ADDR=127.0.0.1`), where nothing on that host's network reaches them, the database
and its password included. This machine reaches them through `ssh -L`: one forward per port,
each on this machine's loopback under the same number. With `KTRDR_CONNECT_HOST=127.0.0.1`
every URL the tasks print or probe (gate, status, verify, `.env.sandbox`) goes through it.

The forwards are made by the `ssh` Docker itself runs for the engine (from PATH, with the
user's ssh config, keys and agent): whatever reaches the engine reaches the ports. A forward
to a port nothing listens on yet is fine; ssh connects per connection, so the tunnel can be
opened before `inv up`.

The ssh's pid is recorded in the slot locks' directory (`tunnel-slot-N.json`, with the pid of
the `inv tunnel` that started it). An `inv tunnel` killed with SIGKILL cannot take its ssh
down: that ssh lives on, holding every forward. The next `inv tunnel` of the slot finds it
from the record (checked against its command line, so a reused pid is never touched), stops
it and says so; a port still taken then is named with the process that holds it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sandbox import compose, engine, lastup, slots
from sandbox.errors import Exit, SandboxError
from sandbox.ports import DOCKER_PROXY, Listener, can_bind, read_listeners

PROC = Path("/proc")
# How long a left-over ssh gets to exit after SIGTERM before SIGKILL; ssh exits at once.
STOP_WAIT = 3.0


def slot_ports(target: compose.Target) -> list[int]:
    """Every host port of the slot's scheme (the layout it will run is not known here)."""
    return sorted({target.port(spec.variable) for spec in slots.PORTS})


def destination(where: engine.Engine) -> list[str]:
    """ssh's arguments for the engine's host: `-p PORT` when given, then `[USER@]HOST`."""
    if where.kind is not engine.Kind.SSH:
        named = "this machine's" if where.local else f"{where.endpoint} ({where.kind})"
        raise SandboxError(
            f"inv tunnel forwards ports over an ssh:// engine's connection; the engine is "
            f"{named}: point DOCKER_HOST at ssh://[USER@]HOST, or reach the ports directly",
            Exit.USAGE,
        )
    parts = urlsplit(where.endpoint)
    user = f"{parts.username}@" if parts.username else ""
    port = ["-p", str(parts.port)] if parts.port else []
    return [*port, f"{user}{parts.hostname}"]


def command(where: engine.Engine, ports: Sequence[int]) -> list[str]:
    """`ssh -N` with one `-L` per port, failing at once when a forward cannot be made."""
    forwards = [
        arg
        for port in ports
        for arg in ("-L", f"{engine.LOOPBACK_IPV4}:{port}:{engine.LOOPBACK_IPV4}:{port}")
    ]
    # Its own connection, never a shared master's: forwards made through a ControlMaster stay
    # with the master after this ssh exits, and Ctrl-C would not close them.
    options = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    options += ["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"]
    return ["ssh", "-N", *options, *forwards, *destination(where)]


Listeners = Callable[[set[int]], dict[int, Listener]]


def holder(listener: Listener | None) -> str:
    """Who holds a port, in a few words: the process and its pid when /proc shows them."""
    if listener is None or listener.pid is None:
        return "a process this user cannot see (another user's, or a container's)"
    if listener.process == DOCKER_PROXY:
        return f"a container's published port (docker-proxy, pid {listener.pid})"
    return f"{listener.process or 'a process'} (pid {listener.pid})"


def check_free(ports: Sequence[int], listeners: Listeners = read_listeners) -> None:
    """Every port free on this machine's loopback, else one line naming the first taken and
    the process that holds it."""
    taken = [port for port in ports if not can_bind(engine.LOOPBACK_IPV4, port)]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        who = holder(listeners({taken[0]}).get(taken[0]))
        raise SandboxError(
            f"port {taken[0]}{more} is taken on this machine's {engine.LOOPBACK_IPV4} by "
            f"{who}: stop it (a local slot: `inv down`; a tunnel: its `inv tunnel`), or tunnel "
            "another slot",
            Exit.PORT_TAKEN,
        )


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Record:
    """A running tunnel: the ssh that holds the forwards, and the `inv tunnel` that started
    it."""

    slot: int
    ssh_pid: int
    inv_pid: int
    ports: tuple[int, ...]
    at: float


def record_path(lock_dir: Path, slot: int) -> Path:
    return lock_dir / f"tunnel-slot-{slot}.json"


def write_record(lock_dir: Path, record: Record) -> None:
    """Private to the user (it names their processes), replaced whole."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = record_path(lock_dir, record.slot)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.unlink(missing_ok=True)  # a killed writer's, with whatever mode it had
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(asdict(record)) + "\n")
    partial.replace(path)


def read_record(lock_dir: Path, slot: int) -> Record | None:
    try:
        data = json.loads(record_path(lock_dir, slot).read_text())
        return Record(
            int(data["slot"]),
            int(data["ssh_pid"]),
            int(data["inv_pid"]),
            tuple(int(p) for p in data["ports"]),
            float(data["at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_record(lock_dir: Path, slot: int, inv_pid: int) -> None:
    """Remove the slot's record if it is still the one `inv_pid` wrote."""
    found = read_record(lock_dir, slot)
    if found is not None and found.inv_pid == inv_pid:
        record_path(lock_dir, slot).unlink(missing_ok=True)


def command_line(pid: int, proc: Path = PROC) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0") if raw else []


def is_tunnel(pid: int, ports: Sequence[int], proc: Path = PROC) -> bool:
    """Whether `pid` is an `ssh -N` forwarding exactly these ports (not a pid reused since)."""
    args = command_line(pid, proc)
    if not args or Path(args[0]).name != "ssh" or "-N" not in args:
        return False
    forwards = {args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-L"}
    return forwards == {
        f"{engine.LOOPBACK_IPV4}:{port}:{engine.LOOPBACK_IPV4}:{port}" for port in ports
    }


def running(pid: int, proc: Path = PROC) -> bool:
    """`pid` exists and is not a zombie (a dead child its parent has not reaped yet)."""
    if not lastup.pid_alive(pid):
        return False
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return True  # no /proc to ask: it exists, as far as we can tell
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass(frozen=True)
class System:
    """The process table, as `reclaim` uses it (tests pass their own)."""

    proc: Path = PROC
    alive: Callable[[int], bool] = running
    kill: Callable[[int, int], None] = os.kill
    sleep: Callable[[float], None] = time.sleep


def reclaim(lock_dir: Path, slot: int, system: System = System()) -> str | None:
    """Before a new tunnel of `slot`: what became of the last one. Its `inv tunnel` still
    runs: SandboxError naming it. Its `inv tunnel` is gone and its ssh lives on (SIGKILL
    leaves it): that ssh is stopped, and the line to say so returned. Otherwise the record
    (if any) is dropped and None returned."""
    found = read_record(lock_dir, slot)
    if found is None:
        return None
    ssh_runs = system.alive(found.ssh_pid) and is_tunnel(found.ssh_pid, found.ports, system.proc)
    if ssh_runs and system.alive(found.inv_pid) and found.inv_pid != os.getpid():
        raise SandboxError(
            f"slot {slot}'s tunnel is open already (inv tunnel pid {found.inv_pid}, ssh pid "
            f"{found.ssh_pid}): use it, or close it (Ctrl-C there, or `kill {found.inv_pid}`)",
            Exit.PORT_TAKEN,
        )
    record_path(lock_dir, slot).unlink(missing_ok=True)
    if not ssh_runs:
        return None
    _stop(found.ssh_pid, system)
    return (
        f"stopped the ssh (pid {found.ssh_pid}) a killed `inv tunnel` of slot {slot} left "
        f"holding its {len(found.ports)} forwards"
    )


def _stop(pid: int, system: System) -> None:
    """SIGTERM, then SIGKILL if it is still there after STOP_WAIT."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            system.kill(pid, sig)
        except ProcessLookupError:
            return
        waited = 0.0
        while waited < STOP_WAIT:
            if not system.alive(pid):
                return
            system.sleep(0.05)
            waited += 0.05
    raise SandboxError(
        f"the ssh (pid {pid}) a killed `inv tunnel` left does not stop: `kill -9 {pid}`, "
        "then re-run",
        Exit.PORT_TAKEN,
    )
