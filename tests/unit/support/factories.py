"""Fabricated `docker.Container`s for the tests that read what the engine reports."""

from __future__ import annotations

from sandbox import docker, slots
from sandbox.docker import PublishedPort


def container(
    slot: int | str,
    service: str = "db",
    *,
    state: docker.ContainerState = "running",
    status: str = "Up 1 minute",
    working_dir: str = "/home/dev/ktrdr-sandbox",
    ports: tuple[PublishedPort, ...] = (),
    source: str = "",
    workers: str = "",
    observability: str = "",
) -> docker.Container:
    """A container of slot `slot`'s project (or of the project named `slot`)."""
    project = slots.project_name(slot) if isinstance(slot, int) else slot
    return docker.Container(
        id=f"{project}-{service}",
        name=f"{project}-{service}-1",
        project=project,
        service=service,
        state=state,
        status=status,
        working_dir=working_dir,
        ports=ports,
        source=source,
        workers=workers,
        observability=observability,
    )


def make(
    slot: int | str,
    service: str,
    state: docker.ContainerState = "running",
    status_text: str = "Up 2 minutes (healthy)",
    ports: tuple[PublishedPort, ...] = (),
    working_dir: str = "/home/dev/ktrdr-sandbox",
) -> docker.Container:
    """A healthy container by position, as `inv status` tests describe them."""
    return container(
        slot, service, state=state, status=status_text, ports=ports, working_dir=working_dir
    )
