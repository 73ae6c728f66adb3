"""`inv images`: every image the compose file needs, pulled, built offline or sent to an engine."""

from __future__ import annotations

import os
from collections.abc import Mapping

from invoke.context import Context
from invoke.tasks import task

from sandbox.cli import common
from sandbox.cli.common import TORCH_HELP, handled, out
from sandbox.errors import Exit, SandboxError


@task(
    name="images",
    help={
        "offline": "build every image locally with no registry (Debian base via debootstrap)",
        "online": "pull upstream images (fail rather than fall back to offline)",
        "to-engine": "send this machine's images (docker save | docker load) to the remote "
        "engine DOCKER_HOST or the current context names; builds nothing",
        "source": "only the dependency image of this KTRDR checkout (what `inv up --source` "
        "runs on): built, or reused when its lock is unchanged; ahead of several `inv new`",
        "torch": TORCH_HELP,
    },
)
@handled
def build_images(
    c: Context,
    offline: bool = False,
    online: bool = False,
    to_engine: bool = False,
    source: str | None = None,
    torch: str | None = None,
) -> None:
    """Get every image the compose file needs: pulled upstream, or built offline."""
    from sandbox import docker
    from sandbox.images import build as images

    environ = dict(os.environ)
    docker.check_engine(environ)
    if to_engine:
        _send_images(environ)
        return
    if source is not None:
        _source_image(source, torch, offline or online, environ)
        return
    if offline and online:
        raise SandboxError("pick one of --offline and --online", Exit.USAGE)
    if not offline and not online:
        offline = not images.registry_reachable(environ)
        if offline:
            out().line("no registry reachable: building every image locally (--offline)")
    built = images.build(
        common.ROOT, offline, environ, on_step=lambda s: out().step("building", s.what)
    )
    out().images(built, offline)


def _source_image(
    source: str, torch: str | None, registry_flag: bool, environ: Mapping[str, str]
) -> None:
    """`--source`: only the dependency image a checkout runs on."""
    from sandbox import apps, upsteps

    if registry_flag:
        raise SandboxError(
            "--source builds with the images `inv images` chose (./.env): leave out "
            "--offline/--online",
            Exit.USAGE,
        )
    checkout = apps.from_flag(source, torch)
    if upsteps.app_image(checkout, common.ROOT, environ, out().step) is None:
        raise SandboxError(
            f"{source} runs on the reference app's image: plain `inv images` builds it",
            Exit.USAGE,
        )


def _send_images(environ: Mapping[str, str]) -> None:
    from sandbox.images import build as images

    loaded = images.to_engine(common.ROOT, environ)
    for image in loaded.images:
        out().step("sent", image)
    for image in loaded.skipped:
        out().step("there already", image)
    out().line(
        f"images: {len(loaded.images)} sent ({loaded.bytes / 1e6:.0f} MB in "
        f"{loaded.seconds:.1f}s), {len(loaded.skipped)} already on the engine"
    )
