"""The steps of `inv up` between preflight and `docker compose up`, each on the slot's
configuration and the preflight's plan: the app image, the slot's files, the source's copy on a
remote engine, the Compose override, `.env.sandbox`, and the wait for the admission turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sandbox import (
    admission,
    apps,
    docker,
    engine,
    observability,
    preflight,
    reach,
    shared,
    slotfiles,
    slots,
)
from sandbox.compose import Target
from sandbox.errors import Exit, SandboxError
from sandbox.images import app as appimages
from sandbox.images import build as images
from sandbox.images import send as imagesend
from sandbox.remote import codesync, enginehost


def place(target: Target) -> slotfiles.Place:
    return slotfiles.Place(target.slot, target.shared_dir)


def prepare_files(
    target: Target,
    source: apps.Source,
    where: engine.Engine,
    on_step: Callable[[str, str], None] | None,
) -> None:
    """The slot's files in the shared directory: its own models directory (`--models=slot`,
    made here so that it belongs to the user, not to the engine's root), and the checkout's
    strategies when the shared directory has none yet. Says what it did; on a remote engine
    the shared directory is on the engine's host and only the models line is said (Docker
    makes the directory there)."""
    say = on_step or (lambda name, detail: None)
    models = place(target).models(source)
    if source.models == "slot":
        if where.local:
            shared.ensure_directory(models)
        say("models", f"{models} (this slot's own: --models=slot)")
    else:
        say("models", f"{models} (shared by every slot: a `*_latest` model may be another's)")
    if source.path is None or not source.kind.seeds or not where.local:
        return
    copied = shared.seed(source.path, target.shared_dir, source.kind.seeds).copied
    if copied:
        names = ", ".join(source.kind.seeds)
        say("seeded", f"{len(copied)} file(s) of {names} from {source.path} (none were there)")


def applied_torch(source: apps.Source) -> apps.Source:
    """`source` with the torch choice that applies to its image (sandbox/images/app.py): what
    the slot's label records and `inv status` shows."""
    if source.path is None or source.kind.image != "uv":
        return source
    torch = appimages.effective_torch(source.path, source.kind.extras, source.torch)
    return dataclasses.replace(source, torch=torch)


def heal_network(
    target: Target,
    environ: Mapping[str, str],
    plan: preflight.UpPlan,
    on_step: Callable[[str, str], None] | None,
) -> list[docker.Container]:
    """The slot's containers at preflight, less those of a shared slot attached to a shared
    network since removed (its `inv observability down` ran while the slot was stopped): they
    could not start again, so they are removed here, and Compose makes them anew."""
    if not plan.layout.shared or not plan.running:
        return plan.running
    removed = observability.heal(plan.running, environ)
    if not removed:
        return plan.running
    if on_step:
        on_step(
            "healed",
            f"removed {len(removed)} container(s) of slot {target.slot} attached to a shared "
            f"network that no longer exists ({', '.join(removed)}); Compose makes them anew",
        )
    return [c for c in plan.running if c.name not in removed]


def copy_source(
    target: Target,
    environ: Mapping[str, str],
    plan: preflight.UpPlan,
    source: apps.Source,
    on_step: Callable[[str, str], None] | None,
) -> str | None:
    """On a remote engine, the checkout's copy on its host (sandbox/remote/codesync.py),
    brought up to date: where the override binds from. None on this machine's engine."""
    if source.path is None or plan.where.local:
        return None
    helper = enginehost.helper_image(target.root, environ)
    synced = codesync.send(target, environ, source, helper, create=True)
    if on_step:
        on_step("source", synced.describe(plan.where.host))
    return synced.volume.mountpoint


def app_image(
    source: apps.Source,
    root: Path,
    environ: Mapping[str, str],
    on_step: Callable[[str, str], None] | None = None,
) -> str | None:
    """The image a source checkout runs on: its dependency image, reused when its lock is
    unchanged, else built (offline when `inv images` chose local images). On a remote engine
    that lacks it, this machine's copy is sent when there is one, else it is built there (the
    build context goes over the API). None: the image ./.env names (the reference app)."""
    if source.path is None or source.kind.image != "uv":
        return None
    offline = images.offline_selected(root)
    say = on_step or (lambda name, detail: None)
    where = engine.detect(environ)
    extras = source.kind.extras
    if not where.local:
        _send_deps_image(source.path, extras, source.torch, offline, environ, where, say)
    ensured = appimages.ensure_deps_image(
        source.path,
        environ,
        offline,
        lambda what: say("build", what),
        extras=extras,
        torch=source.torch,
        on_wait=lambda what: say("build", what),
    )
    world = "offline: no registry" if offline else "online"
    if not where.local:
        world += f"; on the engine at {where.host}"
    made = f"extras: {' '.join(extras) or 'none'}, torch: {ensured.torch}"
    if ensured.built:
        say("image", f"built {ensured.tag} in {ensured.seconds:.1f} s ({made}; {world})")
    elif ensured.waited:
        say("image", f"{ensured.tag}, built by the command waited for ({made}; {world})")
    else:
        say("image", f"{ensured.tag} (dependencies unchanged: not rebuilt; {made}; {world})")
    return ensured.tag


def _send_deps_image(
    checkout: Path,
    extras: Sequence[str],
    torch: str,
    offline: bool,
    environ: Mapping[str, str],
    where: engine.Engine,
    say: Callable[[str, str], None],
) -> None:
    """A remote engine without the checkout's dependency image gets this machine's copy."""
    torch = appimages.effective_torch(checkout.resolve(), extras, torch)
    base = appimages.python_base(offline, torch)
    tag = appimages.deps_tag(checkout.resolve(), extras, base, torch)
    if appimages.image_exists(tag, environ):
        return
    sent = imagesend.send_if_local(tag, environ)
    if sent is not None and sent.images:
        say(
            "image",
            f"sent {tag} from this machine's engine to {where.host} "
            f"({sent.bytes / 1e6:.0f} MB in {sent.seconds:.1f} s)",
        )


def write_override(
    target: Target,
    source: apps.Source,
    image: str | None,
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    copied_to: str | None = None,
    reload: str = apps.RELOAD_BACKEND,
) -> Path:
    """The app kind's Compose override for this slot, with the slot's own secrets."""
    secrets = {
        name: slotfiles.secret(target.root, target.slot, name) for name in source.kind.secrets
    }
    document = slotfiles.override(source, image, secrets, layout, copied_to, place(target), reload)
    return slotfiles.write_override(target.root, target.slot, document)


def env_sandbox(
    target: Target, environ: Mapping[str, str], plan: preflight.UpPlan, source: apps.Source
) -> str:
    """`.env.sandbox`'s text: the plan's URLs, and the agents' line when containers reach
    the slot."""
    text = slotfiles.env_sandbox_text(target.slot, target.values, plan.urls, source, place(target))
    lines = reach.env_sandbox_lines(environ, target.bind, target.port("KTRDR_API_PORT"))
    return text + "".join(f"{line}\n" for line in lines)


def reach_steps(
    target: Target, environ: Mapping[str, str], source: apps.Source = apps.BUILT_IN
) -> list[preflight.Step]:
    """Preflight's `container` and `reach` lines (sandbox/reach.py): run inside a container
    (its bind paths translated, or refused), and who reaches the ports when containers,
    Docker Desktop or that container change it; none for the default."""
    bind, api = target.bind, target.port("KTRDR_API_PORT")
    paths = [target.shared_dir] + ([source.path] if source.path is not None else [])
    lines = [
        ("container", reach.container_line(environ, paths)),
        ("reach", reach.exposure_line(environ, bind, api)),
    ]
    return [preflight.Step(name, line) for name, line in lines if line is not None]


def wait_turn(
    slot: int,
    environ: Mapping[str, str],
    on_wait: Callable[[str], None] | None,
    heavy: contextlib.ExitStack,
) -> float:
    """Wait for the slot's admission turn, held in `heavy`; seconds waited. Ctrl-C in line:
    SandboxError(INTERRUPTED) saying that nothing was started (the line keeps no trace)."""
    try:
        turn = heavy.enter_context(admission.turn(slot, environ, on_wait=on_wait))
    except KeyboardInterrupt:
        raise SandboxError(
            f"interrupted while slot {slot} waited for its turn to start: nothing of it was "
            f"started; `inv up --slot={slot}` queues again",
            Exit.INTERRUPTED,
        ) from None
    if turn.queued and on_wait is not None:
        on_wait(f"slot {slot}: its turn to start after {turn.waited:.1f} s in line")
    return turn.waited
