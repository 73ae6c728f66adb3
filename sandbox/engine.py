"""Where the Docker engine is, and the commands that act on the engine's host instead of ours.

The engine is named by `DOCKER_HOST` (unix://, tcp://host:port, ssh://user@host:port) or, when
that is unset, by the current Docker context. A local engine (a unix socket) shares this
machine's ports and files. A tcp:// or ssh:// engine publishes the slots' ports on its own host
and resolves bind mounts in its own filesystem, so URLs use that host's name, and port probes
and shared-directory checks run there, in a small container.

Parsing is pure (`from_docker_host`, `from_context`, `resolve`); `detect` asks docker for the
current context only when `DOCKER_HOST` is unset. The command builders return argument lists.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, run
from sandbox.settings import CLI_TIMEOUT
from sandbox.shared import SUBDIRS

# An explicit override of the host the client connects to for published ports: for an ssh://
# alias the client cannot resolve, a tunnel, or a tcp:// engine reached through another name.
CONNECT_HOST_VARIABLE = "KTRDR_CONNECT_HOST"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Where a small helper container sees the directory or the files it works on.
PROBE_MOUNT = "/probe"
# Addresses a port is published on. Docker lists a wildcard bind as "0.0.0.0" and "::", an
# empty host ip means every address too, and Compose also takes "[::]" (hence `bare`).
LOOPBACK_IPV4 = "127.0.0.1"  # where a wildcard bind is reached, and where a tunnel forwards
LOOPBACKS = frozenset({LOOPBACK_IPV4, "::1", "localhost"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def bare(address: str) -> str:
    """`address` without the brackets Compose and URLs put around IPv6."""
    return address.strip("[]")


def is_wildcard(address: str) -> bool:
    return bare(address) in WILDCARDS


def is_loopback(address: str) -> bool:
    return bare(address) in LOOPBACKS


class Kind(StrEnum):
    LOCAL = "local"  # unix:// (or npipe://): this machine's ports and files
    TCP = "tcp"
    SSH = "ssh"


@dataclass(frozen=True)
class Engine:
    """One Docker engine as the client reaches it."""

    kind: Kind
    endpoint: str  # as docker takes it: unix:///var/run/docker.sock, tcp://h:2375, ssh://u@h
    host: str  # the engine's host name or address; "" for a local socket
    source: str  # what named it: "DOCKER_HOST", "context NAME"
    connect_override: str = ""  # KTRDR_CONNECT_HOST when set

    @property
    def local(self) -> bool:
        return self.kind is Kind.LOCAL

    def connect_host(self, bind_address: str) -> str:
        """The host the client uses in URLs for a port published on `bind_address`.

        Local: the bind address itself (a wildcard bind is reached on loopback), as today.
        Remote: the engine's host, whatever the bind (the client cannot use the remote's own
        addresses). The override wins everywhere.
        """
        if self.connect_override:
            return self.connect_override
        if not self.local:
            return self.host
        address = bare(bind_address)
        if address in WILDCARDS:
            return "::1" if address == "::" else LOOPBACK_IPV4
        return address

    def unreachable_bind(self, bind_address: str, slot: int | None = None) -> str | None:
        """Why ports bound to `bind_address` on this engine cannot be reached from the client,
        or None when they can. A loopback bind on a remote host is local to that host; on an
        ssh:// engine `inv tunnel` (for `slot`) forwards them."""
        if self.local or self.connect_override:
            return None
        if not is_loopback(bind_address):
            return None
        where = f"ports bound to {bind_address} on {self.host} are reachable only on that host"
        wide = (
            f"set KTRDR_BIND_ADDR=0.0.0.0 (exposes them, the database included, to "
            f"{self.host}'s network)"
        )
        if self.kind is Kind.SSH:
            return (
                f"{where}: forward them with `inv tunnel --slot={'N' if slot is None else slot}` "
                "and set "
                f"{CONNECT_HOST_VARIABLE}=127.0.0.1 (they stay on that host's loopback), or {wide}"
            )
        return f"{where}: {wide} or forward them and set {CONNECT_HOST_VARIABLE}"

    def describe(self) -> str:
        """One line for preflight's output: which host a check ran on."""
        if self.local:
            return f"this machine ({self.endpoint})"
        return f"{self.host} ({self.endpoint}, from {self.source})"

    def exposure(self, bind_address: str) -> str:
        """What `inv up` exposes where: the bind on the engine's host, the host URLs use.

        Local engines say nothing new (ports are this machine's, as always).
        """
        bind = bare(bind_address) or "0.0.0.0"
        reached = self.connect_host(bind_address)
        if self.local:
            return f"ports bound on {bind} of this machine, reached at {reached}"
        wide = " (every network of that host)" if bind in WILDCARDS else ""
        return f"ports bound on {bind} on {self.host}{wide}, reached at {reached}"


# A machine's own engine behind the default socket: what `detect` finds with no DOCKER_HOST
# and no context, and what tests pass where an engine is needed but Docker is not.
LOCAL = Engine(Kind.LOCAL, DEFAULT_SOCKET, "", "default")


def url_host(addr: str) -> str:
    """A bind address as the host part of a URL: a wildcard is reached on loopback, IPv6
    comes back in brackets."""
    if is_wildcard(addr):
        return LOOPBACK_IPV4
    return f"[{addr}]" if ":" in addr else addr


def connect_url_host(where: Engine, bind_address: str) -> str:
    """The URL host for a port published on `bind_address` by the engine `where`: the local
    rule of `url_host` on this machine, the engine's host (or KTRDR_CONNECT_HOST) otherwise."""
    if where.local and not where.connect_override:
        return url_host(bind_address)
    found = where.connect_host(bind_address)
    return f"[{found}]" if ":" in found else found


def _bad(endpoint: str, source: str, why: str) -> SandboxError:
    return SandboxError(
        f"{source}={endpoint!r} {why}: use unix:///path, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]",
        Exit.NO_ENGINE,
    )


def from_docker_host(endpoint: str, source: str = "DOCKER_HOST", override: str = "") -> Engine:
    """An engine from a `DOCKER_HOST`-style endpoint."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme in ("unix", "npipe", "fd"):
        return Engine(Kind.LOCAL, endpoint, "", source, override)
    if scheme not in ("tcp", "ssh"):
        raise _bad(endpoint, source, "is not an engine address docker understands")
    try:
        host = parts.hostname or ""
        _ = parts.port  # raises for a non-numeric port
    except ValueError as error:
        raise _bad(endpoint, source, f"has a bad port ({error})") from None
    if not host:
        raise _bad(endpoint, source, "names no host")
    return Engine(Kind(scheme), endpoint, host, source, override)


def from_context(inspect_output: str, override: str = "") -> Engine:
    """An engine from `docker context inspect` output (a JSON list with one context)."""
    try:
        contexts = json.loads(inspect_output)
        context = contexts[0]
        name = str(context.get("Name", "?"))
        endpoint = str(context["Endpoints"]["docker"]["Host"])
    except (ValueError, LookupError, TypeError, AttributeError):
        raise SandboxError(
            "`docker context inspect` gave output this tool cannot read: check "
            "`docker context ls` and re-run, or set DOCKER_HOST",
            Exit.NO_ENGINE,
        ) from None
    return from_docker_host(endpoint or DEFAULT_SOCKET, f"context {name}", override)


def resolve(environ: Mapping[str, str], context_output: str | None) -> Engine:
    """`DOCKER_HOST` when set (docker itself gives it precedence over any context), else the
    context `docker context inspect` printed; the local socket when there is neither."""
    override = environ.get(CONNECT_HOST_VARIABLE, "").strip().strip("[]")
    endpoint = environ.get("DOCKER_HOST", "").strip()
    if endpoint:
        return from_docker_host(endpoint, "DOCKER_HOST", override)
    if context_output:
        return from_context(context_output, override)
    return from_docker_host(DEFAULT_SOCKET, "default", override)


def context_command() -> list[str]:
    """The current context (DOCKER_CONTEXT, else the config's currentContext)."""
    return ["docker", "context", "inspect"]


def context_name(environ: Mapping[str, str]) -> str:
    """The context docker would use: DOCKER_CONTEXT, else the CLI config's currentContext
    ($DOCKER_CONFIG/config.json, else ~/.docker/config.json), else "default"."""
    named = environ.get("DOCKER_CONTEXT", "").strip()
    if named:
        return named
    home = environ.get("HOME") or str(Path.home())
    config = Path(environ.get("DOCKER_CONFIG") or Path(home) / ".docker") / "config.json"
    try:
        current = json.loads(config.read_text()).get("currentContext", "")
    except (OSError, ValueError, AttributeError):
        return "default"  # docker itself falls back to the default context
    return str(current or "default")


def detect(environ: Mapping[str, str] | None = None) -> Engine:
    """The engine `docker` would talk to with `environ`.

    `DOCKER_HOST` and the default context are answered here; only another context costs a
    `docker context inspect` (most machines: none, so a local `inv status` stays one docker
    call).
    """
    env = dict(os.environ if environ is None else environ)
    if env.get("DOCKER_HOST", "").strip() or context_name(env) == "default":
        return _from_container(resolve(env, None), env)
    result = run(context_command(), env=env, timeout=CLI_TIMEOUT)
    if not result.ok and env.get("DOCKER_CONTEXT", "").strip():
        raise SandboxError(
            f"DOCKER_CONTEXT={env['DOCKER_CONTEXT']!r} cannot be read ({result.tail(1)}): "
            "pick one from `docker context ls`, or unset it",
            Exit.NO_ENGINE,
        )
    return _from_container(resolve(env, result.stdout if result.ok else None), env)


def _from_container(found: Engine, env: Mapping[str, str]) -> Engine:
    """Inside a container holding a local engine's socket, the published ports are on the
    engine's host: reached at its bridge gateway (sandbox/reach.py), unless
    KTRDR_CONNECT_HOST says otherwise. Elsewhere `found` as it is (reach is loaded only in a
    container, so `inv status` on a host pays nothing for it)."""
    if not found.local or found.connect_override or own_container_id() is None:
        return found
    from sandbox import reach

    host = reach.connect_host(env)
    return replace(found, connect_override=host) if host else found


# Docker bind-mounts /var/lib/docker/containers/<id>/{hostname,hosts,resolv.conf} into every
# container it starts: the one place that names a container's own full id (cgroup v2 shows
# "0::/" in PID 1's cgroup). /.dockerenv alone is not enough: a machine may carry one and run
# its engine itself (this project's CI does), and without an id nothing can be translated.
# Only such a mount AT /etc/hostname (or hosts, resolv.conf) counts: the engine's own host
# sees /var/lib/docker/containers/<id>/mounts/shm of every running container in its table.
_CONTAINER_ID = re.compile(
    r" \S*/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)"
    r" /etc/(?:hostname|hosts|resolv\.conf) "
)
MOUNTINFO = Path("/proc/self/mountinfo")


def container_id_in(mountinfo: str) -> str | None:
    found = _CONTAINER_ID.search(mountinfo)
    return found.group(1) if found else None


def own_container_id(mountinfo: Path = MOUNTINFO) -> str | None:
    """The id of the Docker container this process runs in, or None (not in one)."""
    try:
        return container_id_in(mountinfo.read_text())
    except OSError:
        return None


# --- Commands that run on the engine's host, through a small container ---------------------
#
# Each takes the image to run (one the engine already has: nothing is pulled, the sandbox's
# machines may have no registry) and returns an argument list for `runner.run` with the
# engine's environment. None of them touches the client's filesystem.

HELPER_RUN = ("docker", "run", "--rm", "--pull=never")


def bind_mount(source: str, target: str, readonly: bool = False) -> str:
    """A --mount value; CSV-quoted, since docker splits it on commas."""
    fields = ["type=bind", f"source={source}", f"target={target}"]
    if readonly:
        fields.append("readonly")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


# The shared directory's subdirectories, one line each: "present NAME" or "missing NAME";
# "notdir" when the path is not a directory. The directory is $0, so the same text runs
# against any path (the unit tests run it on a temporary directory).
CHECK_SCRIPT = (
    '[ -d "$0" ] || { echo notdir; exit 0; }; for d in "$@"; do '
    'if [ -d "$0/$d" ]; then echo "present $d"; else echo "missing $d"; fi; done'
)


def shared_dir_check_command(directory: str, image: str) -> list[str]:
    """Whether `directory` and its subdirectories exist on the engine's host.

    A --mount bind (unlike -v) fails when the source is missing instead of creating it, so
    checking never creates anything.
    """
    return [
        *HELPER_RUN,
        "--network=none",
        f"--mount={bind_mount(directory, PROBE_MOUNT, readonly=True)}",
        image,
        "sh",
        "-c",
        CHECK_SCRIPT,
        PROBE_MOUNT,
        *SUBDIRS,
    ]


@dataclass(frozen=True)
class SharedDir:
    """The shared directory as the engine's host sees it."""

    exists: bool
    missing: tuple[str, ...]  # subdirectories absent (all of them when not `exists`)
    not_a_directory: bool = False

    @property
    def ready(self) -> bool:
        return self.exists and not self.missing and not self.not_a_directory


def parse_shared_check(result: Result, directory: str) -> SharedDir:
    """`shared_dir_check_command`'s result; a SandboxError when the probe itself failed."""
    if not result.ok:
        if "bind source path does not exist" in result.stderr:
            return SharedDir(False, SUBDIRS)
        raise SandboxError(
            f"checking {directory} on the engine's host failed: {result.tail(1)}",
            Exit.SHARED_DIR,
            details=result.tail(10),
        )
    lines = result.stdout.split("\n")
    if "notdir" in lines:
        return SharedDir(True, (), not_a_directory=True)
    missing = tuple(line.split(" ", 1)[1] for line in lines if line.startswith("missing "))
    return SharedDir(True, missing)


# Makes each missing subdirectory of $0 (and hands it to $OWNER when set); "created NAME".
# Two `inv up` of different slots may create the same directory at once: one that appeared
# meanwhile is fine (the second mkdir only runs to print why a real failure failed).
CREATE_SCRIPT = (
    'for d in "$@"; do if [ ! -d "$0/$d" ]; then '
    'if mkdir "$0/$d" 2>/dev/null; then '
    'if [ -n "${OWNER:-}" ]; then chown "$OWNER" "$0/$d" || exit 1; fi; echo "created $d"; '
    'elif [ ! -d "$0/$d" ]; then mkdir "$0/$d" || exit 1; fi; fi; done'
)


def shared_dir_create_command(directory: str, image: str, owner: str = "") -> list[str]:
    """Create `directory` and its subdirectories on the engine's host (only what is missing;
    nothing is overwritten). Prints "created NAME" for each subdirectory it made.

    -v creates a missing source directory (as root); `owner` ("UID:GID") hands the new
    subdirectories to the user the containers run as.
    """
    if ":" in directory:
        raise SandboxError(
            f"{directory!r} contains ':', which docker's -v cannot mount: pick another "
            "KTRDR_SHARED_DIR",
            Exit.SHARED_DIR,
        )
    env = ["--env", f"OWNER={owner}"] if owner else []
    return [
        *HELPER_RUN,
        "--network=none",
        *env,
        "--volume",
        f"{directory}:{PROBE_MOUNT}",
        image,
        "sh",
        "-c",
        CREATE_SCRIPT,
        PROBE_MOUNT,
        *SUBDIRS,
    ]


def parse_created(output: str) -> tuple[str, ...]:
    return tuple(
        line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("created ")
    )


# Tries to bind each port where Compose would publish it: the engine's host network, the bind
# address. perl because Debian's minimal base has it (and no python).
PORT_SCRIPT = r"""
use Socket qw(:all);
my ($addr, @ports) = @ARGV;
my $family = $addr =~ /:/ ? AF_INET6 : AF_INET;
my $ip = inet_pton($family, $addr) or die "bad address $addr\n";
for my $port (@ports) {
    socket(my $s, $family, SOCK_STREAM, 0) or die "socket: $!\n";
    setsockopt($s, SOL_SOCKET, SO_REUSEADDR, 1);
    my $sa = $family == AF_INET6 ? pack_sockaddr_in6($port, $ip) : pack_sockaddr_in($port, $ip);
    if (bind($s, $sa)) { print "free $port\n" } else { print "taken $port $!\n" }
    close $s;
}
""".strip()


def port_probe_command(ports: Sequence[int], bind_address: str, image: str) -> list[str]:
    """Which of `ports` the engine's host could publish on `bind_address`: one line per port,
    "free PORT" or "taken PORT REASON". Ports published through iptables alone (no
    docker-proxy) hold no socket: read `docker ps` on the engine as well."""
    address = bare(bind_address) or "0.0.0.0"
    return [
        *HELPER_RUN,
        "--network=host",
        image,
        "perl",
        "-e",
        PORT_SCRIPT,
        address,
        *(str(port) for port in ports),
    ]


@dataclass(frozen=True)
class PortProbe:
    port: int
    free: bool
    reason: str = ""  # the bind error when taken: "Address already in use", ...


def parse_port_probe(result: Result) -> list[PortProbe]:
    if not result.ok:
        raise SandboxError(
            f"probing ports on the engine's host failed: {result.tail(1)}",
            Exit.PORT_TAKEN,
            details=result.tail(10),
        )
    found = []
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        port, _, reason = rest.partition(" ")
        if word in ("free", "taken") and port.isdigit():
            found.append(PortProbe(int(port), word == "free", reason))
    return found


def stream_copy_command(
    source: str, destination: str, image: str, names: Sequence[str] = (".",)
) -> list[str]:
    """Copy `names` (default: everything) of the client directory `source` into `destination`
    on the engine's host: a tar stream over the engine's API (nothing mounted from the
    client). Files already there are kept (--skip-old-files), as `inv init-shared --from`
    does locally.

    bash only joins the pipe; the paths and image arrive as "$1".."$3", the names after them.
    """
    script = (
        'tar -C "$1" -cf - "${@:4}" | docker run -i --rm --pull=never --network=none '
        '--volume "$2:/probe" "$3" tar -x -C /probe --skip-old-files --no-same-owner'
    )
    if ":" in destination:
        raise SandboxError(
            f"{destination!r} contains ':', which docker's -v cannot mount: pick another "
            "KTRDR_SHARED_DIR",
            Exit.SHARED_DIR,
        )
    return ["bash", "-o", "pipefail", "-c", script, "stream", source, destination, image, *names]
