"""The in-swarm registry the nodes pull from, and this machine's images pushed into it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import ROOT, runner
from sandbox.errors import Exit, SandboxError
from sandbox.images import send as imagesend
from sandbox.images.build import OFFLINE_BASE
from sandbox.settings import CLI_TIMEOUT
from sandbox.swarm.cluster import Manager, tasks_of_service, wait_for

REGISTRY_VARIABLE = "KTRDR_SWARM_REGISTRY"  # HOST:PORT the nodes pull from
REGISTRY_SERVICE = "ktrdr-sandbox-registry"
REGISTRY_IMAGE = "ktrdr-sandbox/registry-debian:2"
REGISTRY_DOCKERFILE = "containers/images/registry-debian/Dockerfile"
REGISTRY_PORT = 5000
REGISTRY_VOLUME = "ktrdr-sandbox-registry"
PUSH_TIMEOUT = 1800.0
REGISTRY_READY = 120.0


def registry_ref(registry: str, image: str) -> str:
    return f"{registry}/{image}"


def registry_address(environ: Mapping[str, str], found: Manager) -> str:
    """KTRDR_SWARM_REGISTRY, else the manager's node address on the registry's port."""
    named = environ.get(REGISTRY_VARIABLE, "").strip()
    if named:
        return named
    host = f"[{found.address}]" if ":" in found.address else found.address
    return f"{host}:{REGISTRY_PORT}"


def registry_service_command() -> list[str]:
    """The registry as a swarm service on a manager (the one the tool pushes through), its
    port published on that node, its blobs in a node-local volume."""
    return [
        "docker",
        "service",
        "create",
        "--detach",
        f"--name={REGISTRY_SERVICE}",
        "--constraint=node.role==manager",
        "--endpoint-mode=dnsrr",
        f"--publish=mode=host,published={REGISTRY_PORT},target={REGISTRY_PORT}",
        f"--mount=type=volume,source={REGISTRY_VOLUME},target=/var/lib/docker-registry",
        "--label=ktrdr.sandbox.registry=1",
        REGISTRY_IMAGE,
    ]


def registry_build_command(root: Path) -> list[str]:
    """The registry image, built on this machine's engine over the shared Debian base
    (`inv images --offline` makes it)."""
    return [
        "docker",
        "build",
        "--quiet",
        f"--build-arg=BASE_IMAGE={OFFLINE_BASE}",
        f"--file={root / REGISTRY_DOCKERFILE}",
        f"--tag={REGISTRY_IMAGE}",
        str(root / "containers"),
    ]


def ensure_registry_image(root: Path, environ: Mapping[str, str]) -> None:
    local = imagesend.local_env(environ)
    if runner.run(
        ["docker", "image", "inspect", REGISTRY_IMAGE], env=local, timeout=CLI_TIMEOUT
    ).ok:
        return
    if not runner.run(
        ["docker", "image", "inspect", OFFLINE_BASE], env=local, timeout=CLI_TIMEOUT
    ).ok:
        raise SandboxError(
            f"{OFFLINE_BASE} is missing, which the registry image is built on: run "
            "`inv images --offline` first",
            Exit.COMMAND,
        )
    runner.run(
        registry_build_command(root),
        env={**local, "DOCKER_BUILDKIT": "0"},
        timeout=1800,
        check=f"building {REGISTRY_IMAGE} failed: read the build output above",
    )


def ensure_registry(
    environ: Mapping[str, str], say: Callable[[str, str], None], root: Path = ROOT
) -> None:
    """The registry service running (its image built here and sent to the manager first
    when missing)."""
    env = dict(environ)
    if not runner.run(
        ["docker", "service", "inspect", REGISTRY_SERVICE], env=env, timeout=CLI_TIMEOUT
    ).ok:
        ensure_registry_image(root, env)
        imagesend.transfer([REGISTRY_IMAGE], env)
        runner.run(
            registry_service_command(),
            env=env,
            timeout=CLI_TIMEOUT,
            check="starting the registry service failed",
        )
        say("registry", f"started the service {REGISTRY_SERVICE} ({REGISTRY_IMAGE})")
    found: list[str] = []

    def running() -> bool:
        found[:] = tasks_of_service(REGISTRY_SERVICE, env)
        return "running" in found

    wait_for(
        running,
        REGISTRY_READY,
        lambda: SandboxError(
            f"the registry service did not start ({', '.join(found) or 'no task'}): "
            f"`docker service ps {REGISTRY_SERVICE} --no-trunc` says why",
            Exit.COMMAND,
        ),
    )


@dataclass(frozen=True)
class Pushed:
    images: tuple[str, ...]
    sent_bytes: int
    send_seconds: float
    push_seconds: float


def push_images(images: Sequence[str], registry: str, environ: Mapping[str, str]) -> Pushed:
    """This machine's images into the registry: sent to the manager's engine (skipped when it
    has the same image ID), tagged there with the registry's name and pushed from there, so
    only the manager needs to trust the registry, never this machine's engine."""
    env = dict(environ)
    sent = imagesend.transfer(images, env)
    started = time.monotonic()
    for image in images:
        ref = registry_ref(registry, image)
        runner.run(
            ["docker", "tag", image, ref],
            env=env,
            timeout=CLI_TIMEOUT,
            check=f"tagging {image} failed",
        )
        runner.run(
            ["docker", "push", "--quiet", ref],
            env=env,
            timeout=PUSH_TIMEOUT,
            check=f"pushing {ref} failed: does the manager's engine trust {registry} "
            "(insecure-registries in its daemon.json)?",
        )
    return Pushed(tuple(images), sent.bytes, sent.seconds, time.monotonic() - started)
