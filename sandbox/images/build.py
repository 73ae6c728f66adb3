"""The images a slot runs: upstream ones on a connected machine, local ones without a registry.

Offline, nothing is pulled: a Debian base is made with debootstrap, real PostgreSQL and
Prometheus come from Debian packages, and Jaeger and Grafana are replaced by small stand-ins
that say they are stand-ins. Local images carry our own names (ktrdr-sandbox/...), never an
upstream one. Which set a machine uses is recorded in ./.env (see compose.IMAGES_ENV).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from sandbox import engine, runner
from sandbox.compose import IMAGE_VARIABLES, IMAGES_ENV, image_settings
from sandbox.errors import Exit, SandboxError
from sandbox.images import base
from sandbox.images import send as imagesend
from sandbox.runner import display
from sandbox.settings import BUILD_WORKERS, CLI_TIMEOUT, REGISTRY_PROBE_TIMEOUT

CONTEXT = "containers"
# The Debian release the slot images are built on, named here only (the uv apps' Python base
# needs a later one, named in app).
DEBIAN_SUITE = "bookworm"
OFFLINE_BASE = base.image(DEBIAN_SUITE)
UPSTREAM_BASE = f"debian:{DEBIAN_SUITE}-slim"
# The compose file's default, for plain `docker compose` with no ./.env.
APP_IMAGE = "ktrdr-sandbox/reference-app:latest"

UPSTREAM: dict[str, str] = {
    "KTRDR_DB_IMAGE": "timescale/timescaledb:latest-pg16",
    "KTRDR_JAEGER_IMAGE": "jaegertracing/all-in-one:latest",
    "KTRDR_PROMETHEUS_IMAGE": "prom/prometheus:latest",
    "KTRDR_GRAFANA_IMAGE": "grafana/grafana:latest",
}


@dataclass(frozen=True)
class LocalImage:
    variable: str  # the compose variable that selects it
    tag: str
    directory: str  # under containers/images/
    what: str


# Offline replacements, each built FROM the offline base. The app comes last: it is the one
# that changes.
OFFLINE: tuple[LocalImage, ...] = (
    LocalImage(
        "KTRDR_DB_IMAGE",
        "ktrdr-sandbox/postgres-debian:15",
        "postgres-debian",
        "real PostgreSQL 15 from Debian (no TimescaleDB)",
    ),
    LocalImage(
        "KTRDR_PROMETHEUS_IMAGE",
        "ktrdr-sandbox/prometheus-debian:2",
        "prometheus-debian",
        "real Prometheus from Debian",
    ),
    LocalImage(
        "KTRDR_JAEGER_IMAGE",
        "ktrdr-sandbox/jaeger-standin:1",
        "jaeger-standin",
        "STAND-IN for Jaeger all-in-one",
    ),
    LocalImage(
        "KTRDR_GRAFANA_IMAGE",
        "ktrdr-sandbox/grafana-standin:1",
        "grafana-standin",
        "STAND-IN for Grafana",
    ),
)


def app_image(root: Path) -> LocalImage:
    """The reference app as this checkout builds it. Each checkout (branch, worktree) gets
    its own tag, so rebuilding in one never changes what another checkout's slots run."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return LocalImage(
        "KTRDR_APP_IMAGE",
        f"{APP_IMAGE.split(':')[0]}:checkout-{digest}",
        "reference-app",
        "reference KTRDR backend and workers",
    )


@dataclass(frozen=True)
class Step:
    """One command of an image build, with what it produces and what it builds on."""

    what: str
    cmd: list[str]
    env: dict[str, str]
    after: tuple[str, ...] = ()  # the steps (by `what`) whose images this one starts FROM


@dataclass(frozen=True)
class Built:
    what: str
    seconds: float
    command: str


def selection(offline: bool, root: Path) -> dict[str, str]:
    """The value of every image variable for this mode: what ./.env records."""
    if offline:
        chosen = {image.variable: image.tag for image in OFFLINE}
        chosen["KTRDR_BASE_IMAGE"] = OFFLINE_BASE
    else:
        chosen = {**UPSTREAM, "KTRDR_BASE_IMAGE": UPSTREAM_BASE}
    chosen["KTRDR_APP_IMAGE"] = app_image(root).tag
    return {name: chosen[name] for name in IMAGE_VARIABLES}


def offline_selected(root: Path) -> bool:
    """Whether `inv images` chose local images for this checkout (no registry)."""
    return image_settings(root).get("KTRDR_BASE_IMAGE") == OFFLINE_BASE


def render_env(offline: bool, root: Path) -> str:
    mode = "offline: local images, no registry" if offline else "online: upstream images"
    lines = [
        f"# Written by `inv images` ({mode}). Compose reads this file when no --env-file is",
        "# given; with --env-file, pass it first: --env-file .env --env-file env/slot-N.env.",
        "# Delete it, or run `inv images` on a connected machine, to go back to upstream images.",
    ]
    lines += [f"{name}={value}" for name, value in selection(offline, root).items()]
    return "\n".join(lines) + "\n"


def build_env(environ: Mapping[str, str], buildkit: bool) -> dict[str, str]:
    # Debian's engine has no buildx plugin; its legacy builder builds these Dockerfiles fine.
    return {**environ, "DOCKER_BUILDKIT": "1" if buildkit else "0"}


def docker_build(root: Path, image: LocalImage, base: str) -> list[str]:
    return [
        "docker",
        "build",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(root / CONTEXT / "images" / image.directory / "Dockerfile"),
        "-t",
        image.tag,
        str(root / CONTEXT),
    ]


def plan(root: Path, offline: bool, environ: Mapping[str, str], buildkit: bool) -> list[Step]:
    """Every command `inv images` runs; a step starts once those it comes `after` are done."""
    env = build_env(environ, buildkit)
    app = app_image(root)
    if offline:
        base_env = base.environment(DEBIAN_SUITE, environ)
        steps = [Step(OFFLINE_BASE, base.command(root), base_env)]
        on_base = (OFFLINE_BASE,)
        steps += [Step(i.tag, docker_build(root, i, OFFLINE_BASE), env, on_base) for i in OFFLINE]
        return [*steps, Step(app.tag, docker_build(root, app, OFFLINE_BASE), env, on_base)]
    steps = [Step(tag, ["docker", "pull", tag], dict(environ)) for tag in UPSTREAM.values()]
    return [*steps, Step(app.tag, docker_build(root, app, UPSTREAM_BASE), env)]


def buildkit_available(environ: Mapping[str, str]) -> bool:
    return runner.run(["docker", "buildx", "version"], env=dict(environ), timeout=CLI_TIMEOUT).ok


def registry_reachable(environ: Mapping[str, str]) -> bool:
    """Whether upstream images can be pulled: pull the small base the app builds on."""
    return runner.run(
        ["docker", "pull", "-q", UPSTREAM_BASE], env=dict(environ), timeout=REGISTRY_PROBE_TIMEOUT
    ).ok


def missing(environ: Mapping[str, str], tags: list[str]) -> list[str]:
    return [
        tag
        for tag in tags
        if not runner.run(
            ["docker", "image", "inspect", tag], env=dict(environ), timeout=CLI_TIMEOUT
        ).ok
    ]


def build(
    root: Path,
    offline: bool,
    environ: Mapping[str, str],
    on_step: Callable[[Step], None] | None = None,
) -> list[Built]:
    """Run the plan, BUILD_WORKERS steps at a time; after a failure start nothing more, then
    record the selection in ./.env."""
    again = "inv images --offline" if offline else "inv images"

    def run_step(step: Step) -> Built:
        started = time.monotonic()
        runner.run(
            step.cmd,
            env=step.env,
            cwd=root,
            check=f"building {step.what} failed ({display(step.cmd)}); "
            f"the output above says why: fix it and re-run `{again}`",
        )
        return Built(step.what, time.monotonic() - started, display(step.cmd))

    steps = plan(root, offline, environ, buildkit_available(environ))
    done = run_steps(steps, run_step, BUILD_WORKERS, on_step)
    (root / IMAGES_ENV).write_text(render_env(offline, root))
    return done


def ready(waiting: Sequence[Step], finished: Mapping[str, Built]) -> list[Step]:
    """The steps of `waiting` whose every `after` step has finished, in plan order."""
    return [step for step in waiting if all(name in finished for name in step.after)]


def run_steps(
    steps: Sequence[Step],
    run_step: Callable[[Step], Built],
    workers: int,
    on_step: Callable[[Step], None] | None = None,
) -> list[Built]:
    """Run each step once those it comes after are done, at most `workers` at once (the base
    first, then the images built FROM it side by side), and return what each built, in plan
    order. After a failure nothing new starts; the first failure is raised once the running
    steps end. `on_step` is told of each start, from this thread."""
    unknown = {name for step in steps for name in step.after} - {step.what for step in steps}
    if unknown:
        raise ValueError(f"steps come after steps the plan does not have: {sorted(unknown)}")
    waiting, finished = list(steps), dict[str, Built]()
    running: dict[futures.Future[Built], Step] = {}
    failure: SandboxError | None = None
    with futures.ThreadPoolExecutor(workers) as pool:
        while True:
            for step in [] if failure else ready(waiting, finished)[: workers - len(running)]:
                waiting.remove(step)
                if on_step:
                    on_step(step)
                running[pool.submit(run_step, step)] = step
            if not running:
                break
            ended, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in ended:
                failed = _finish(running.pop(future), future, finished)
                failure = failure or failed
    if failure:
        raise failure
    return [finished[step.what] for step in steps]


def _finish(
    step: Step, future: futures.Future[Built], finished: dict[str, Built]
) -> SandboxError | None:
    """Record a step that ended: what it built, or its failure (returned, not raised)."""
    try:
        finished[step.what] = future.result()
    except SandboxError as exc:
        return exc
    return None


def build_app(root: Path, environ: Mapping[str, str]) -> Built:
    """Rebuild only the reference app, under the tag and on the base ./.env selected (the
    compose file's defaults when `inv images` has not run)."""
    settings = image_settings(root)
    base = settings.get("KTRDR_BASE_IMAGE", UPSTREAM_BASE)
    app = app_image(root)
    app = LocalImage(app.variable, settings.get(app.variable, APP_IMAGE), app.directory, app.what)
    cmd = docker_build(root, app, base)
    started = time.monotonic()
    runner.run(
        cmd,
        env=build_env(environ, buildkit_available(environ)),
        cwd=root,
        check=f"building {app.tag} failed ({display(cmd)}); fix it and re-run `inv up --build`",
    )
    return Built(app.tag, time.monotonic() - started, display(cmd))


# --- a remote engine ------------------------------------------------------------------------
#
# Two ways to get the images onto a remote engine (DOCKER_HOST or a context): `inv images
# --offline` with DOCKER_HOST set builds them there (the build context goes over the API; only
# the debootstrap base must be sent first), or `inv images --to-engine` sends this machine's
# with `docker save | docker load`. The second is the documented one: measured here 33-98 s
# for the six images against 326 s of builds on the remote (docs/designs/Sandbox/
# REMOTE_ENGINE.md), and it needs neither a mirror nor CPU on the remote.


def engine_images(root: Path) -> list[str]:
    """The images a slot runs, as ./.env selects them (the compose file's app image without
    it): what a remote engine needs. The build-only base is left out."""
    chosen = {k: v for k, v in image_settings(root).items() if k != "KTRDR_BASE_IMAGE"}
    chosen.setdefault("KTRDR_APP_IMAGE", APP_IMAGE)
    return sorted(set(chosen.values()))


def to_engine(root: Path, environ: Mapping[str, str]) -> imagesend.Loaded:
    """`inv images --to-engine`: send the slot images from this machine's engine to the remote
    engine `environ` names, skipping those it has with the same image ID."""
    where = engine.detect(environ)
    if where.local:
        raise SandboxError(
            "--to-engine sends this machine's images to a remote engine: point DOCKER_HOST "
            "(tcp://HOST:PORT or ssh://USER@HOST) or a Docker context at it, then re-run",
            Exit.USAGE,
        )
    return imagesend.transfer(engine_images(root), environ)
