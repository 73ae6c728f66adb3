"""A simulated remote Docker host on this machine, for testing the sandbox against a remote engine.

One Docker-in-Docker container (`containers/images/remote-host/`) runs Debian's engine and an
OpenSSH server. Its Docker API (2375, no TLS), sshd (2222, key-only) and the slots' ports are
published on 127.0.0.2 only, so a client reaches it as `tcp://127.0.0.2:2375` or
`ssh://root@127.0.0.2:2222` and never through a container's bridge address.

The client side's key, `ssh_config` and an `ssh` wrapper live in one private directory (never
`~/.ssh`): docker's ssh:// transport runs the `ssh` found on PATH and OpenSSH reads the
config of the user's passwd home, not $HOME, so a wrapper that passes `-F` is the one way to
hand it a private config.

    python -m tests.support.remotehost start|stop|status   (scripts/remote-host.sh wraps this)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import ROOT, slots
from sandbox.compose import image_settings
from sandbox.errors import Exit, SandboxError
from sandbox.images import base
from sandbox.images.build import DEBIAN_SUITE
from sandbox.images.send import Loaded, checked, transfer
from sandbox.runner import Result, display, run

IMAGE = "ktrdr-sandbox/remote-host:1"
BASE_IMAGE = base.image(DEBIAN_SUITE)
DOCKERFILE = "containers/images/remote-host/Dockerfile"
CONTAINER = "ktrdr-remote-host"
VOLUME = "ktrdr-remote-docker"  # the inner engine's /var/lib/docker: overlay2 needs a real fs
ADDRESS = "127.0.0.2"
API_PORT = 2375
SSH_PORT = 2222
SSH_ALIAS = "ktrdr-remote"
DEFAULT_SLOTS = (1, 2, 3)
# Measured here: the inner engine answers about 2-3 s after `docker run`.
READY_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
# What `--privileged` would grant, minus CAP_SYS_RESOURCE: VMs without it refuse
# --privileged outright ("unable to apply caps"). The engine inside needs the rest.
SECURITY = (
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--security-opt=systempaths=unconfined",
)
LOCAL_PREFIX = "ktrdr-sandbox/"


@dataclass(frozen=True)
class Place:
    """Which container runs a simulated remote host, which volume holds its inner engine's
    /var/lib/docker, and the loopback address its ports are published on. The default is the
    remote tests' own; another place runs a second host beside it (benchmarks/bench_images.py
    measures image builds on an empty engine without touching theirs)."""

    container: str = CONTAINER
    volume: str = VOLUME
    address: str = ADDRESS


DEFAULT_PLACE = Place()


@dataclass(frozen=True)
class RemoteHost:
    """Where the simulated remote host answers, and the client files that reach it."""

    state_dir: Path
    place: Place = DEFAULT_PLACE

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.place.address}:{API_PORT}"

    @property
    def ssh_url(self) -> str:
        return f"ssh://root@{self.place.address}:{SSH_PORT}"

    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def control_path(self) -> str:
        """ssh's master-connection socket. Unix socket paths are short (108 bytes), and a
        state dir under pytest's tmp is too long, so it lives in /tmp, named per state dir."""
        tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        return f"/tmp/ktrdr-remote-{tag}-%C"

    @property
    def bin_dir(self) -> Path:
        """Holds the `ssh` wrapper: put it first on PATH for DOCKER_HOST=ssh://..."""
        return self.state_dir / "bin"

    def client_env(self, environ: Mapping[str, str], transport: str = "tcp") -> dict[str, str]:
        """`environ` pointed at the remote engine, over "tcp" or "ssh"."""
        env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
        if transport == "tcp":
            return {**env, "DOCKER_HOST": self.tcp_url}
        if transport == "ssh":
            path = f"{self.bin_dir}{os.pathsep}{environ.get('PATH', os.defpath)}"
            return {**env, "DOCKER_HOST": self.ssh_url, "PATH": path}
        raise SandboxError(f"unknown transport {transport!r}: use tcp or ssh", Exit.USAGE)


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """KTRDR_REMOTE_DIR, else ~/.ktrdr/remote-host."""
    value = environ.get("KTRDR_REMOTE_DIR")
    if value:
        return Path(value).expanduser()
    return Path(environ.get("HOME", str(Path.home()))) / ".ktrdr" / "remote-host"


def published_ports(slot_numbers: Iterable[int]) -> list[int]:
    """Every host port the given slots publish, from the slot scheme, in order."""
    return sorted({spec.host_port(slot) for slot in slot_numbers for spec in slots.PORTS})


def run_command(
    public_key: str, slot_numbers: Iterable[int], place: Place = DEFAULT_PLACE
) -> list[str]:
    """The `docker run` that starts the remote host (on the local engine)."""
    ports = [API_PORT, SSH_PORT, *published_ports(slot_numbers)]
    publish = [f"--publish={place.address}:{port}:{port}" for port in ports]
    return [
        "docker",
        "run",
        "--detach",
        f"--name={place.container}",
        f"--hostname={place.container}",
        *SECURITY,
        f"--volume={place.volume}:/var/lib/docker",
        f"--env=KTRDR_AUTHORIZED_KEY={public_key}",
        *publish,
        IMAGE,
    ]


def ssh_config_text(host: RemoteHost) -> str:
    """One entry for the alias and for the address itself, so both
    ssh://ktrdr-remote and ssh://root@127.0.0.2:2222 find the key."""
    return (
        f"# Written by tests/support/remotehost.py for the simulated remote host; not ~/.ssh.\n"
        f"Host {SSH_ALIAS} {host.place.address}\n"
        f"  HostName {host.place.address}\n"
        f"  Port {SSH_PORT}\n"
        f"  User root\n"
        f"  IdentityFile {host.key}\n"
        f"  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {host.known_hosts}\n"
        # A fresh container makes fresh host keys on every start; start() empties the file.
        f"  StrictHostKeyChecking accept-new\n"
        f"  BatchMode yes\n"
        # Compose opens many API connections; one TCP+SSH handshake serves them all.
        f"  ControlMaster auto\n"
        f"  ControlPath {host.control_path}\n"
        f"  ControlPersist 60\n"
    )


def ssh_wrapper_text(host: RemoteHost, real_ssh: str) -> str:
    return (
        "#!/bin/sh\n"
        "# docker's ssh:// transport runs `ssh` from PATH: this one adds the private config.\n"
        f'exec "{real_ssh}" -F "{host.ssh_config}" "$@"\n'
    )


def find_ssh(host: RemoteHost, environ: Mapping[str, str]) -> str:
    """The real ssh client: the one on PATH that is not our own wrapper."""
    parts = environ.get("PATH", os.defpath).split(os.pathsep)
    path = os.pathsep.join(p for p in parts if Path(p) != host.bin_dir)
    found = shutil.which("ssh", path=path)
    if not found:
        raise SandboxError(
            "no ssh client on PATH: install openssh-client (apt-get install openssh-client)",
            Exit.COMMAND,
        )
    return found


def _docker(args: Sequence[str], environ: Mapping[str, str], timeout: float = 60) -> Result:
    env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
    return run(["docker", *args], env=env, timeout=timeout)


def _reason(result: Result) -> str:
    """The line of a failed docker command that says why (the daemon's error, not the usage
    hint docker prints after it)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else f"exit status {result.returncode}"


@dataclass(frozen=True)
class Started:
    host: RemoteHost
    seconds_to_run: float  # `docker run` returning (the outer engine's publishing included)
    seconds_to_engine: float  # `docker run` to the inner engine answering on 2375
    version: str


def ensure_image(root: Path, environ: Mapping[str, str]) -> None:
    """Build the remote-host image (on the local engine) over the shared Debian base."""
    if not _docker(["image", "inspect", BASE_IMAGE], environ).ok:
        script_env = base.environment(DEBIAN_SUITE, environ)
        result = run(base.command(root), env=script_env, timeout=1800)
        checked(result, f"building {BASE_IMAGE}", f"run `bash {base.SCRIPT}` as root and read why")
    build = [
        "build",
        "--quiet",
        f"--build-arg=BASE_IMAGE={BASE_IMAGE}",
        f"--file={root / DOCKERFILE}",
        f"--tag={IMAGE}",
        str(root / "containers"),
    ]
    env = {**environ, "DOCKER_BUILDKIT": "0"}
    checked(_docker(build, env, timeout=1800), f"building {IMAGE}", "read the build output above")


def write_client_files(host: RemoteHost, environ: Mapping[str, str]) -> str:
    """Key (made once), ssh_config, ssh wrapper, an empty known_hosts; the public key."""
    host.state_dir.mkdir(parents=True, exist_ok=True)
    host.state_dir.chmod(0o700)
    if not host.key.is_file():
        keygen = [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            SSH_ALIAS,
            "-f",
            str(host.key),
        ]
        checked(run(keygen, env=dict(environ), timeout=30), "ssh-keygen", "install openssh-client")
    host.ssh_config.write_text(ssh_config_text(host))
    host.known_hosts.write_text("")  # the new container has new host keys
    host.bin_dir.mkdir(exist_ok=True)
    wrapper = host.bin_dir / "ssh"
    wrapper.write_text(ssh_wrapper_text(host, find_ssh(host, environ)))
    wrapper.chmod(0o755)
    return host.key.with_suffix(".pub").read_text().strip()


def _container_state(environ: Mapping[str, str], container: str = CONTAINER) -> str | None:
    """running, exited, ... or None when there is no remote-host container."""
    result = _docker(["container", "inspect", "--format", "{{.State.Status}}", container], environ)
    return result.stdout.strip() if result.ok else None


def _logs_tail(environ: Mapping[str, str], container: str = CONTAINER) -> str:
    return _docker(["logs", "--tail", "15", container], environ).tail(15)


def wait_for_engine(host: RemoteHost, environ: Mapping[str, str], timeout: float) -> str:
    """The inner engine's version once it answers; a SandboxError saying why when it never does."""
    deadline = time.monotonic() + timeout
    env = host.client_env(environ, "tcp")
    while True:
        result = run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, timeout=10)
        if result.ok and result.stdout.strip():
            return result.stdout.strip()
        container = host.place.container
        state = _container_state(environ, container)
        if state != "running" or time.monotonic() > deadline:
            why = f"its container is {state}" if state != "running" else f"no answer in {timeout}s"
            raise SandboxError(
                f"the remote host did not start: {why}; its log above says why "
                f"(`docker logs {container}`)",
                Exit.NO_ENGINE,
                details=_logs_tail(environ, container),
            )
        time.sleep(POLL_INTERVAL)


def wait_for_ssh(host: RemoteHost, environ: Mapping[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    cmd = [find_ssh(host, environ), "-F", str(host.ssh_config), SSH_ALIAS, "true"]
    while not (result := run(cmd, env=dict(environ), timeout=15)).ok:
        if time.monotonic() > deadline:
            raise SandboxError(
                f"the remote host's sshd refused the key ({display(cmd)}): see its log above",
                Exit.NO_ENGINE,
                details=result.tail(5) + "\n" + _logs_tail(environ),
            )
        time.sleep(POLL_INTERVAL)


def start(
    root: Path = ROOT,
    slot_numbers: Sequence[int] = DEFAULT_SLOTS,
    environ: Mapping[str, str] | None = None,
) -> Started:
    """Build the image, (re)start the container, write the client files, wait for the engine
    and sshd. A container of an earlier run is replaced; its volume (the inner images) kept."""
    env = dict(os.environ if environ is None else environ)
    host = RemoteHost(default_state_dir(env))
    ensure_image(root, env)
    public_key = write_client_files(host, env)
    if _container_state(env) is not None:
        checked(_docker(["rm", "--force", CONTAINER], env), "removing the old remote host", "")
    started = time.monotonic()
    result = _docker(run_command(public_key, slot_numbers)[1:], env)
    if not result.ok:
        # A refused publish leaves the container created but not started: take it away.
        _docker(["rm", "--force", CONTAINER], env)
        raise SandboxError(
            f"the remote host did not start: `docker run` failed: {_reason(result)}",
            Exit.NO_ENGINE,
            details=result.tail(20),
        )
    ran = time.monotonic() - started
    version = wait_for_engine(host, env, READY_TIMEOUT)
    seconds = time.monotonic() - started
    wait_for_ssh(host, env, READY_TIMEOUT)
    return Started(host, ran, seconds, version)


def needed_images(root: Path, environ: Mapping[str, str]) -> list[str]:
    """The local images this checkout's slots run (./.env from `inv images`), else every
    ktrdr-sandbox/* image of the local engine but the remote host itself."""
    chosen = [v for v in image_settings(root).values() if v.startswith(LOCAL_PREFIX)]
    if chosen:
        return sorted(set(chosen))
    listing = _docker(
        [
            "images",
            "--filter",
            f"reference={LOCAL_PREFIX}*",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
        environ,
    )
    checked(listing, "listing local images", "is the local engine running?")
    return sorted({line for line in listing.stdout.split() if line != IMAGE})


def load_images(host: RemoteHost, images: Sequence[str], environ: Mapping[str, str]) -> Loaded:
    """Stream `images` from the local engine into the simulated remote host."""
    return transfer(images, host.client_env(environ, "tcp"))


def reset(host: RemoteHost, environ: Mapping[str, str]) -> int:
    """Empty the inner engine but for its images: every container, volume and Compose network
    (an interrupted run's slots). The inner engine is this tool's alone, so a kept volume is
    safe to reuse: images are compared by ID when loaded, everything else starts clean.
    Returns how many objects were removed."""
    env = host.client_env(environ, "tcp")
    listings = (
        (["ps", "--all", "--quiet"], ["rm", "--force", "--volumes"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
        (
            ["network", "ls", "--quiet", "--filter", "label=com.docker.compose.project"],
            ["network", "rm"],
        ),
    )
    removed = 0
    for listing, removal in listings:
        found = checked(run(["docker", *listing], env=env, timeout=60), "listing", "").stdout
        ids = found.split()
        if ids:
            checked(run(["docker", *removal, *ids], env=env, timeout=300), "removing", "")
            removed += len(ids)
    return removed


def stop(
    environ: Mapping[str, str] | None = None,
    keep_volume: bool = False,
    place: Place = DEFAULT_PLACE,
) -> list[str]:
    """Remove the container (and its volume unless kept); what was removed. The inner engine
    gets a clean shutdown first when its volume is kept for the next start."""
    env = dict(os.environ if environ is None else environ)
    removed = []
    if _container_state(env, place.container) is not None:
        if keep_volume:
            _docker(["stop", "--time", "30", place.container], env, 120)
        rm = ["rm", "--force", "--volumes", place.container]
        checked(_docker(rm, env, 120), "docker rm", "")
        removed.append(f"container {place.container}")
    if not keep_volume and _docker(["volume", "inspect", place.volume], env).ok:
        checked(_docker(["volume", "rm", place.volume], env, 120), "docker volume rm", "")
        removed.append(f"volume {place.volume}")
    return removed


def status(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Container state, inner engine version, and the URLs, as printable facts."""
    env = dict(os.environ if environ is None else environ)
    host = RemoteHost(default_state_dir(env))
    state = _container_state(env) or "absent"
    version = ""
    if state == "running":
        result = run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=host.client_env(env, "tcp"),
            timeout=10,
        )
        version = result.stdout.strip() if result.ok else "not answering"
    return {
        "container": f"{CONTAINER} ({state})",
        "engine": version or "-",
        "tcp": host.tcp_url,
        "ssh": f"{host.ssh_url} (PATH={host.bin_dir}:$PATH)",
        "client files": str(host.state_dir),
    }


def _parse_slots(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n not in slots.SLOTS for n in numbers):
        raise SandboxError(
            f"--slots={text!r} is not a list of slots 0-10: use e.g. --slots=1,2,3", Exit.USAGE
        )
    return numbers


def _start_and_load(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    started = start(ROOT, _parse_slots(args.slots), env)
    host = started.host
    print(
        f"remote host up: engine {started.version} answered {started.seconds_to_engine:.1f}s "
        f"after docker run (which took {started.seconds_to_run:.1f}s)"
    )
    if not args.no_load:
        images = args.image or needed_images(ROOT, env)
        loaded = load_images(host, images, env)
        print(
            f"images: {len(loaded.images)} loaded ({loaded.bytes / 1e6:.0f} MB streamed in "
            f"{loaded.seconds:.1f}s), {len(loaded.skipped)} already there"
        )
        for image in loaded.images:
            print(f"  loaded {image}")
    print(f"DOCKER_HOST={host.tcp_url}")
    print(f"DOCKER_HOST={host.ssh_url} PATH={host.bin_dir}:$PATH")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remote-host", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("start", help="build, start, wait for the engine and sshd, load images")
    up.add_argument(
        "--slots",
        default=",".join(map(str, DEFAULT_SLOTS)),
        help="slots whose ports are published on 127.0.0.2 (default 1,2,3)",
    )
    up.add_argument(
        "--image",
        action="append",
        help="load this image (repeatable) instead of the ones ./.env selects",
    )
    up.add_argument("--no-load", action="store_true", help="load no images")
    down = sub.add_parser("stop", help="remove the container and its volume")
    down.add_argument(
        "--keep-volume",
        action="store_true",
        help="keep the inner engine's images for the next start",
    )
    sub.add_parser("status", help="container state, engine version, URLs")
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        if args.action == "start":
            _start_and_load(args, env)
        elif args.action == "stop":
            removed = stop(env, keep_volume=args.keep_volume)
            print("removed " + ", ".join(removed) if removed else "nothing to remove")
        else:
            for key, value in status(env).items():
                print(f"{key:>12}: {value}")
    except SandboxError as error:
        if error.details:
            print(error.details, file=sys.stderr)
        print(f"remote-host: {error.message}", file=sys.stderr)
        return int(error.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
