"""Engine-side port probing: which of a slot's host ports are free, and who holds a taken one.

The decisions are pure functions (`classify_ports`, `port_holder`, `parse_proc_net`) tested
without Docker; `can_bind` and `read_listeners` ask this host (its sockets, its /proc).
Preflight, the slot picker and the tunnel share them.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sandbox import compose, engine, slots
from sandbox.docker import Container
from sandbox.errors import Exit, SandboxError

PROC = Path("/proc")
# /proc/net/tcp's "st" column: 0A is TCP_LISTEN (include/net/tcp_states.h).
TCP_LISTEN = "0A"
# docker-proxy holds a published port on the host for a container (the userland proxy).
DOCKER_PROXY = "docker-proxy"

Probe = Callable[[str, int], bool]


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket from /proc/net/tcp{,6}, with its owner when it could be found."""

    port: int
    address: str
    inode: int
    pid: int | None = None
    process: str | None = None


@dataclass(frozen=True)
class TakenPort:
    """A host port of the slot that something else holds."""

    port: int
    variable: str
    service: str


# --- ports --------------------------------------------------------------------------------


def probe_addresses(bind_addr: str) -> tuple[str, ...]:
    """Where a port must be free: the bind address and both wildcards. A holder on any of
    them stops Docker (wildcard vs specific) or at least confuses clients of localhost."""
    return tuple(dict.fromkeys((bind_addr, "0.0.0.0", "::")))


def can_bind(host: str, port: int) -> bool:
    """Whether a TCP socket can bind `host:port` now. Only "address in use" says no.

    SO_REUSEADDR so connections in TIME_WAIT (a stack that just went down) do not count; Linux
    honours it when the TIME_WAIT socket's creator set it too, as servers and docker-proxy do.
    IPV6_V6ONLY so the "::" probe asks about IPv6 alone; 0.0.0.0 covers IPv4. A host without
    IPv6 answers yes for "::": nothing can hold the port there. Any other error (an address
    this host does not have, say) is not a taken port; Compose reports it itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return True
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def published_tcp(containers: Sequence[Container]) -> set[int]:
    return {p.host_port for c in containers for p in c.ports if p.protocol == "tcp"}


def classify_ports(
    target: compose.Target,
    containers: Sequence[Container],
    probe: Probe,
    *,
    bind_addr: str = compose.DEFAULT_BIND_ADDR,
    specs: Sequence[slots.PortSpec] = slots.PORTS,
) -> list[TakenPort]:
    """The slot's host ports (`specs`: those its layout publishes) that are taken, in order.

    A port published by this slot's own containers is fine (the stack is up already). A port
    published by any other container is taken even when it binds (an engine without the
    userland proxy holds ports in iptables only). Otherwise it is taken unless `probe` can
    bind it on every address of `probe_addresses(bind_addr)`.
    """
    own = published_tcp([c for c in containers if c.project == target.project])
    others = published_tcp([c for c in containers if c.project != target.project])
    addresses = probe_addresses(bind_addr)
    taken = []
    for spec in specs:
        port = target.port(spec.variable)
        if port in own:
            continue
        if port in others or not all(probe(address, port) for address in addresses):
            taken.append(TakenPort(port, spec.variable, spec.service))
    return taken


def port_holder(
    port: int, containers: Sequence[Container], listeners: Mapping[int, Listener]
) -> str | None:
    """Who holds `port`, in words, or None when nobody could be found.

    A container publishing it wins over a listening process: for a container the process is
    only docker-proxy. Sandbox slots first, then other containers.
    """
    publishing = [c for c in containers if port in published_tcp([c])]
    publishing.sort(key=lambda c: c.slot is None)
    if publishing:
        c = publishing[0]
        if c.slot is not None:
            return f"slot {c.slot} ({c.project}, service {c.service})"
        if c.project:
            return f"container {c.name} (compose project {c.project})"
        return f"container {c.name}"
    listener = listeners.get(port)
    if listener is None:
        return None
    if listener.pid is None:
        return "an unknown process"
    if listener.process == DOCKER_PROXY:
        return (
            f"a Docker container outside Compose (docker-proxy, pid {listener.pid}; "
            f"`docker ps --filter publish={port}` names it)"
        )
    return f"process {listener.process or '?'} (pid {listener.pid})"


def port_error(
    taken: Sequence[TakenPort], holder: str | None, where: engine.Engine = engine.LOCAL
) -> SandboxError:
    """One line: the first taken port in full, the others by number."""
    first = taken[0]
    more = ""
    if len(taken) > 1:
        rest = ", ".join(str(t.port) for t in taken[1:])
        more = f" (and {len(taken) - 1} more: {rest})"
    if holder is None and not where.local:
        holder = f"a process on {where.host} (`ss -ltnp 'sport = :{first.port}'` there names it)"
    if holder is None or holder == "an unknown process":
        # /proc names no holder (macOS, another user's process): say how to find it.
        holder = (
            f"a process this user cannot name (`lsof -nP -iTCP:{first.port} -sTCP:LISTEN` "
            f"or `sudo ss -ltnp 'sport = :{first.port}'` shows it)"
        )
    return SandboxError(
        f"port {first.port} ({first.service}, {first.variable}) is taken by "
        f"{holder}{more}: stop it or pick another slot",
        Exit.PORT_TAKEN,
    )


# --- who listens: /proc -------------------------------------------------------------------


def _address(hex_address: str, ipv6: bool) -> str:
    raw = bytes.fromhex(hex_address)
    if not ipv6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # Four 32-bit words, each in host (little-endian) byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def parse_proc_net(text: str, *, ipv6: bool) -> list[Listener]:
    """The listening sockets in the text of /proc/net/tcp (or tcp6 with `ipv6`)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        address, _, port = fields[1].partition(":")
        try:
            found.append(Listener(int(port, 16), _address(address, ipv6), int(fields[9])))
        except ValueError:
            continue
    return found


def socket_owners(inodes: Collection[int], proc: Path = PROC) -> dict[int, tuple[int, str]]:
    """inode -> (pid, process name) for the sockets whose owner this user may see."""
    owners: dict[int, tuple[int, str]] = {}
    wanted = set(inodes)
    try:
        pids = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return owners
    for pid_dir in pids:
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # not ours to look at, or gone
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if not (link.startswith("socket:[") and link.endswith("]")):
                continue
            inode = int(link[len("socket:[") : -1])
            if inode in wanted and inode not in owners:
                try:
                    name = (pid_dir / "comm").read_text().strip()
                except OSError:
                    name = ""
                owners[inode] = (int(pid_dir.name), name)
        if wanted <= owners.keys():
            break
    return owners


def read_listeners(ports: Collection[int], proc: Path = PROC) -> dict[int, Listener]:
    """Listening TCP sockets on `ports` (IPv4 and IPv6), one per port, owner filled in where
    this user may see it. Empty where /proc is not there (not Linux)."""
    wanted = set(ports)
    found: list[Listener] = []
    for name, ipv6 in (("tcp", False), ("tcp6", True)):
        try:
            text = (proc / "net" / name).read_text()
        except OSError:
            continue
        found += [s for s in parse_proc_net(text, ipv6=ipv6) if s.port in wanted]
    owners = socket_owners({s.inode for s in found}, proc) if found else {}
    result: dict[int, Listener] = {}
    for sock in found:
        pid, process = owners.get(sock.inode, (None, None))
        current = result.get(sock.port)
        if current is None or (current.pid is None and pid is not None):
            result[sock.port] = replace(sock, pid=pid, process=process or None)
    return result
