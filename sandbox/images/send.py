"""Images sent from this machine's engine to a remote one: `docker save | docker load`.

`inv images --to-engine` sends the images slots run; `inv up --source` on a remote engine sends
a checkout's dependency image when this machine has it built for the remote's architecture.
Images are compared by ID, never by tag, so a stale image under the same tag is sent again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, display, run
from sandbox.settings import CLI_TIMEOUT

# A few GB over a slow link.
SEND_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Loaded:
    images: tuple[str, ...]
    skipped: tuple[str, ...]  # already on the remote engine, same image ID
    bytes: int
    seconds: float


def save_load_command(images: Sequence[str]) -> list[str]:
    """`docker save` on the local engine | `docker load` on the remote one, printing the bytes
    streamed.

    bash only joins the pipe: the image names arrive as "$@" and the remote engine as $REMOTE
    and $REMOTE_CONTEXT (`save_load_env`), never inside the script text. The save side is the
    `default` context (this machine's engine) even when the current context is the remote.
    One `docker save` of all images sends each shared layer (the Debian base) once.
    """
    script = (
        '{ DOCKER_CONTEXT=default docker save "$@" | tee /dev/fd/3 | '
        'DOCKER_HOST="$REMOTE" DOCKER_CONTEXT="$REMOTE_CONTEXT" docker load >&2; } 3>&1 | wc -c'
    )
    return ["bash", "-o", "pipefail", "-c", script, "save-load", *images]


def save_load_env(remote: Mapping[str, str]) -> dict[str, str]:
    """The pipe's environment from the remote engine's (`DOCKER_HOST`, or a `DOCKER_CONTEXT`,
    or neither when the current context is the remote): those move to $REMOTE and
    $REMOTE_CONTEXT, so only the load side sees them. PATH stays (an ssh:// wrapper)."""
    env = {k: v for k, v in remote.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
    return {
        **env,
        "REMOTE": remote.get("DOCKER_HOST", ""),
        "REMOTE_CONTEXT": remote.get("DOCKER_CONTEXT", ""),
    }


def local_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` pointed at this machine's engine (the `default` context)."""
    env = {k: v for k, v in environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
    return {**env, "DOCKER_CONTEXT": "default"}


def checked(result: Result, what: str, next_step: str) -> Result:
    """`result` when the docker command succeeded; else one line naming it and what to do."""
    if not result.ok:
        raise SandboxError(
            f"{what} failed ({display(result.args)}): {next_step}",
            Exit.COMMAND,
            details=result.tail(20),
        )
    return result


def _image_id(image: str, environ: Mapping[str, str]) -> str:
    result = run(["docker", "image", "inspect", "--format", "{{.Id}}", image], env=environ)
    return result.stdout.strip() if result.ok else ""


def transfer(images: Sequence[str], remote: Mapping[str, str]) -> Loaded:
    """Stream `images` from this machine's engine into the engine `remote` names (its
    DOCKER_HOST or context), skipping those it has with the same image ID. Images are keyed by
    ID, not tag: a stale image under the same tag is sent again."""
    local = local_env(remote)
    todo: list[str] = []
    skipped: list[str] = []
    for image in images:
        local_id = _image_id(image, local)
        if not local_id:
            raise SandboxError(
                f"{image} is not on the local engine: build it (`inv images --offline`) first",
                Exit.COMMAND,
            )
        (skipped if _image_id(image, remote) == local_id else todo).append(image)
    started = time.monotonic()
    streamed = 0
    if todo:
        result = run(save_load_command(todo), env=save_load_env(remote), timeout=SEND_TIMEOUT)
        checked(result, "docker save | docker load", "is the remote engine reachable?")
        streamed = int(result.stdout.strip() or 0)
    return Loaded(tuple(todo), tuple(skipped), streamed, time.monotonic() - started)


def send_if_local(image: str, remote: Mapping[str, str]) -> Loaded | None:
    """`image` sent from this machine's engine to the remote one when this machine has it,
    built for the remote engine's architecture (a laptop's arm64 image is no use on an amd64
    host); None otherwise, and the caller builds it on the remote engine instead."""
    inspect = ["docker", "image", "inspect", "--format", "{{.Architecture}}", image]
    built_for = run(inspect, env=local_env(remote), timeout=CLI_TIMEOUT)
    if not built_for.ok:
        return None
    arch = ["docker", "version", "--format", "{{.Server.Arch}}"]
    engine_arch = run(arch, env=remote, timeout=CLI_TIMEOUT)
    if not engine_arch.ok or engine_arch.stdout.strip() != built_for.stdout.strip():
        return None
    return transfer([image], remote)
