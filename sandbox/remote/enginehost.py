"""Checks and changes on a remote engine's host, through small containers of the slot's image.

With a tcp:// or ssh:// engine, ports are published on that host and bind mounts resolve in its
filesystem, so preflight, `inv verify` and `inv init-shared` ask there instead of here. Each
function runs one of sandbox/engine.py's helper commands with the engine's environment and
turns its output into a fact or a one-line `SandboxError`; none touches the client's files.

The helper image is the one the slot's app services run (`KTRDR_APP_IMAGE`): Debian-based (sh,
perl, tar), and a slot needs it on the engine anyway; nothing is ever pulled for a check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import compose, engine, runner
from sandbox.engine import PortProbe, SharedDir
from sandbox.errors import Exit, SandboxError
from sandbox.images.build import APP_IMAGE
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT, VERIFY_EXEC_TIMEOUT
from sandbox.shared import SUBDIRS

# Copying a checkout's data/ into the remote host may stream gigabytes.
STREAM_TIMEOUT = 3600.0


def helper_image(root: Path, environ: Mapping[str, str]) -> str:
    """The image the helper containers run: the slots' app image, as Compose gets it (an
    exported KTRDR_APP_IMAGE, else ./.env, else the compose file's default)."""
    return (
        environ.get("KTRDR_APP_IMAGE")
        or compose.image_settings(root).get("KTRDR_APP_IMAGE")
        or APP_IMAGE
    )


def missing_images(images: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """Which of `images` the engine `environ` names does not have (one `docker image inspect`
    each: it answers from the engine's image store, nothing is pulled)."""
    return [
        image
        for image in dict.fromkeys(images)
        if not runner.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            env=environ,
            timeout=CLI_TIMEOUT,
        ).ok
    ]


def slot_images(target: compose.Target, environ: Mapping[str, str]) -> list[str]:
    """Every image the slot's containers run, as Compose will see them; not the build-only
    base (`images.engine_images` sends the same set)."""
    env = compose.environment(target, environ)
    run_by_slots = [name for name in compose.IMAGE_VARIABLES if name != "KTRDR_BASE_IMAGE"]
    found = [env[name] for name in run_by_slots if env.get(name)]
    return found if "KTRDR_APP_IMAGE" in env else [*found, APP_IMAGE]


def shared_state(directory: str, image: str, environ: Mapping[str, str]) -> SharedDir:
    """The shared directory as the engine's host sees it; nothing is created."""
    cmd = engine.shared_dir_check_command(directory, image)
    return engine.parse_shared_check(
        runner.run(cmd, env=environ, timeout=ENGINE_QUERY_TIMEOUT), directory
    )


def create_shared(directory: str, image: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Create the missing parts of the shared directory on the engine's host; what was made."""
    cmd = engine.shared_dir_create_command(directory, image)
    result = runner.run(cmd, env=environ, timeout=ENGINE_QUERY_TIMEOUT)
    if not result.ok:
        raise SandboxError(
            f"cannot create the shared directory {directory} on the engine's host: "
            f"{result.tail(1)}",
            Exit.SHARED_DIR,
            details=result.tail(10),
        )
    return engine.parse_created(result.stdout)


def taken_ports(
    ports: Sequence[int], bind_address: str, image: str, environ: Mapping[str, str]
) -> list[PortProbe]:
    """The ports the engine's host could not publish on `bind_address` (a helper container on
    that host's network tries to bind each one)."""
    cmd = engine.port_probe_command(ports, bind_address, image)
    probed = engine.parse_port_probe(runner.run(cmd, env=environ, timeout=ENGINE_QUERY_TIMEOUT))
    return [p for p in probed if not p.free]


# Writes (or removes) one probe file in each shared subdirectory: $0 the directory, $1 the name.
PROBE_SCRIPT = (
    f'set -e; for d in {" ".join(SUBDIRS)}; do f="$0/$d/$1"; '
    'if [ "$2" = write ]; then echo "ktrdr-sandbox verify probe" > "$f"; '
    'else rm -f "$f"; fi; done'
)


def probe_files_command(directory: str, name: str, image: str, action: str) -> list[str]:
    """`action` "write" or "remove": the verify probe file in data/, models/, strategies/ of
    `directory` on the engine's host (a --mount bind: a missing directory is an error, never
    created)."""
    return [
        *engine.HELPER_RUN,
        "--network=none",
        f"--mount={engine.bind_mount(directory, engine.PROBE_MOUNT)}",
        image,
        "sh",
        "-c",
        PROBE_SCRIPT,
        engine.PROBE_MOUNT,
        name,
        action,
    ]


def write_probe(directory: str, name: str, image: str, environ: Mapping[str, str]) -> str | None:
    """Write the probe files on the engine's host: None, or why it could not."""
    cmd = probe_files_command(directory, name, image, "write")
    result = runner.run(cmd, env=environ, timeout=VERIFY_EXEC_TIMEOUT)
    return None if result.ok else (result.tail(1) or f"exit status {result.returncode}")


def remove_probe(directory: str, name: str, image: str, environ: Mapping[str, str]) -> None:
    runner.run(
        probe_files_command(directory, name, image, "remove"),
        env=environ,
        timeout=VERIFY_EXEC_TIMEOUT,
    )


def stream_copy(
    source: str,
    names: Sequence[str],
    destination: str,
    image: str,
    environ: Mapping[str, str],
) -> None:
    """`inv init-shared --from` on a remote engine: a tar stream of `names` (data/, models/,
    strategies/) of the client directory into the engine's host; files there are kept."""
    cmd = engine.stream_copy_command(source, destination, image, names)
    runner.run(
        cmd,
        env=environ,
        timeout=STREAM_TIMEOUT,
        check=f"copying {source} into {destination} on the engine's host failed: "
        f"{runner.display(cmd)}",
        code=Exit.SHARED_DIR,
    )


@dataclass(frozen=True)
class InitShared:
    """What `inv init-shared` did on the engine's host."""

    created: tuple[str, ...]  # subdirectories made
    sent: tuple[str, ...]  # subdirectories of --from streamed there
    files: int  # files in them (those already there were kept)


def init_shared(
    directory: str, source: Path | None, image: str, environ: Mapping[str, str]
) -> InitShared:
    """Create the shared directory on the engine's host and, with `source` (a checked KTRDR
    checkout), stream its data/, models/ and strategies/ there; nothing is written here."""
    if missing_images([image], environ):
        raise SandboxError(
            f"the engine has no image {image} to work on its host with: run "
            "`inv images --to-engine` first",
            Exit.COMMAND,
        )
    created = create_shared(directory, image, environ)
    if source is None:
        return InitShared(created, (), 0)
    names = tuple(n for n in SUBDIRS if (source / n).is_dir())
    files = sum(1 for n in names for f in (source / n).rglob("*") if f.is_file())
    stream_copy(str(source), names, directory, image, environ)
    return InitShared(created, names, files)
