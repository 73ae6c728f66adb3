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
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from sandbox import compose, engine, preflight, slots
from sandbox.errors import Exit, SandboxError

LOOPBACK = "127.0.0.1"


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
    forwards = [arg for port in ports for arg in ("-L", f"{LOOPBACK}:{port}:{LOOPBACK}:{port}")]
    # Its own connection, never a shared master's: forwards made through a ControlMaster stay
    # with the master after this ssh exits, and Ctrl-C would not close them.
    options = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    options += ["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"]
    return ["ssh", "-N", *options, *forwards, *destination(where)]


def check_free(ports: Sequence[int]) -> None:
    """Every port free on this machine's loopback, else one line naming the first taken."""
    taken = [port for port in ports if not preflight.can_bind(LOOPBACK, port)]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise SandboxError(
            f"port {taken[0]}{more} is taken on this machine's {LOOPBACK}: a local slot or "
            "another tunnel holds it; stop it, or tunnel another slot",
            Exit.PORT_TAKEN,
        )
