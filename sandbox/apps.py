"""App kinds: what runs in a slot's backend and workers, as data.

A slot runs either the built-in reference app (no `--source`) or the code of a checkout given
with `inv up --source=PATH`. Which kind of app PATH holds is detected from its layout; each
kind says, as data, which image it runs on, the command of the backend and of each worker type,
which directories of the checkout are mounted (read-only) for hot reload, the environment it
reads, the migration step and the healthcheck. A third kind is a new `AppKind`, not new
branches in the tasks.

`override(...)` turns a kind into a Compose override file (JSON is YAML) layered over
docker-compose.sandbox.yml with a second `-f`; everything else in the stack stays as it is.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sandbox import STATE_DIR, slots
from sandbox.docker import (
    APP_LABEL,
    CLIENT_LABEL,
    MODELS_LABEL,
    OBSERVABILITY_LABEL,
    RELOAD_LABEL,
    SHARED_LABEL,
    SOURCE_LABEL,
    TORCH_LABEL,
    WORKERS_LABEL,
    client_name,
)
from sandbox.errors import Exit, SandboxError
from sandbox.images.app import DEFAULT_TORCH, TORCH_CHOICES

WORKER_TYPES = ("backtesting", "training")
# `inv up --reload`: which app services run under a reloader, recorded on the slot's
# containers (RELOAD_LABEL) as --workers is.
RELOAD_BACKEND = "backend"
RELOAD_WORKERS = "workers"
RELOAD_CHOICES = (RELOAD_BACKEND, RELOAD_WORKERS)
BUILTIN_SOURCE = ""  # the label value of a slot that runs the image's own code
# The file KTRDR's CLI reads to find its slot's API (KTRDR's .gitignore ignores it).
ENV_SANDBOX = ".env.sandbox"
ENV_SANDBOX_HEADER = "# Written by ktrdr-sandbox"
# The app's container paths, as in KTRDR's own images.
APP_DIR = "/app"
# On a remote engine the checkout's mounted files are copied into this per-slot volume
# (sandbox/remote/codesync.py); the app services also mount the volume itself here, read-only, so
# nothing prunes it while the slot runs.
SOURCE_VOLUME = "source"
SOURCE_VOLUME_TARGET = "/opt/ktrdr-sandbox/source"


@dataclass(frozen=True)
class Mount:
    """A directory or file of the checkout, mounted read-only: the container reloads from it
    and can never write to the user's checkout."""

    source: str  # relative to the checkout
    target: str  # inside the container
    optional: bool = False  # skipped when the checkout does not have it


@dataclass(frozen=True)
class Migration:
    """A command run in a running service once the database is ready, before the gate passes."""

    service: str
    command: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class AppKind:
    name: str
    title: str
    # Every path must exist for a checkout to be of this kind; the first one names the kind
    # in errors ("a KTRDR checkout without uv.lock").
    markers: tuple[str, ...]
    image: str  # "reference": the reference-app image; "uv": a dependency image from uv.lock
    backend: tuple[str, ...]
    # Worker type ("backtesting", "training") -> command; "{port}" is the worker's port.
    workers: Mapping[str, tuple[str, ...]]
    mounts: tuple[Mount, ...]
    # Optional extras of the app's pyproject.toml its dependency image installs (uv kinds):
    # what its workers import to do their work (KTRDR's training needs `ml`).
    extras: tuple[str, ...] = ()
    # Directories of the checkout copied into an empty one of the shared directory on `up`
    # (never overwriting): a new machine's first slot finds the branch's strategies.
    seeds: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    worker_environment: Mapping[str, str] = field(default_factory=dict)
    migration: Migration | None = None
    # The healthcheck: a command that exits 0 when 127.0.0.1:PORT/PATH answers 2xx; the port
    # and the path are appended. Both app images carry `http-ok` (containers/app/http-ok.sh):
    # bash's /dev/tcp, ~3 ms of CPU a check where a Python probe costs ~90 ms.
    probe: tuple[str, ...] = ("http-ok",)
    writes_env_sandbox: bool = False
    # How `inv new` checks a branch out: "worktree" (`git worktree add`), or "clone" (a full
    # clone, for an app whose own tooling wants `.git` to be a directory).
    checkout: Literal["worktree", "clone"] = "worktree"
    # Variables that get a random value of their own per slot, kept across `up`s.
    secrets: tuple[str, ...] = ()
    # Sends its traces as OTLP/HTTP to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the reference app);
    # KTRDR reads KTRDR_OTEL_OTLP_ENDPOINT (gRPC) only.
    otlp_http: bool = False
    # The workers' commands under a reloader, for `inv up --reload=workers`. By default only
    # the backend reloads: a reloader is a second process per service that wakes up to look
    # at the source (uvicorn's polls every 0.25 s without watchfiles), and users edit workers
    # far less often than they start slots. Empty: `workers` is used either way.
    reloaded_workers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _reloaded(module: str) -> tuple[str, ...]:
    """`python3 -m module` under the reference image's reloader, watching the mounted source."""
    return (
        "python3",
        "-m",
        "reloader",
        f"{APP_DIR}/ktrdr_reference",
        "--",
        "python3",
        "-m",
        module,
    )


REFERENCE = AppKind(
    name="reference",
    title="reference app source",
    markers=("ktrdr_reference/__init__.py",),
    image="reference",
    # The image's own reloader (containers/shared/reloader.py) restarts the process when a
    # mounted .py file changes: the reference app has no uvicorn.
    backend=_reloaded("ktrdr_reference.backend"),
    workers={kind: ("python3", "-m", "ktrdr_reference.worker") for kind in WORKER_TYPES},
    reloaded_workers={kind: _reloaded("ktrdr_reference.worker") for kind in WORKER_TYPES},
    mounts=(Mount("ktrdr_reference", f"{APP_DIR}/ktrdr_reference"),),
    otlp_http=True,
)


def _uvicorn(app: str, port: str, *more: str, reload: bool = True) -> tuple[str, ...]:
    """uvicorn serving `app`, reloading on edits of the mounted package only: its default
    (the working directory) would also walk the shared data, models and strategies under
    /app."""
    reloading = ("--reload", "--reload-dir", f"{APP_DIR}/ktrdr") if reload else ()
    return ("uvicorn", app, "--host", "0.0.0.0", "--port", port, *reloading, *more)


KTRDR_WORKER_APPS = {
    "backtesting": "ktrdr.backtesting.backtest_worker:app",
    "training": "ktrdr.training.training_worker:app",
}


KTRDR = AppKind(
    name="ktrdr",
    title="KTRDR checkout",
    markers=("ktrdr/__init__.py", "pyproject.toml", "uv.lock", "alembic.ini"),
    image="uv",
    # As KTRDR's own dev image starts it: logs to stdout.
    backend=_uvicorn(
        "ktrdr.api.main:app", "8000", "--log-config", f"{APP_DIR}/ktrdr/config/logging_config.json"
    ),
    workers={
        kind: _uvicorn(app, "{port}", reload=False) for kind, app in KTRDR_WORKER_APPS.items()
    },
    reloaded_workers={kind: _uvicorn(app, "{port}") for kind, app in KTRDR_WORKER_APPS.items()},
    mounts=(
        Mount("ktrdr", f"{APP_DIR}/ktrdr"),
        Mount("config", f"{APP_DIR}/config", optional=True),
        Mount("alembic", f"{APP_DIR}/alembic", optional=True),
        Mount("alembic.ini", f"{APP_DIR}/alembic.ini"),
    ),
    # torch and scikit-learn: the training workers import both (torch as --torch chooses).
    extras=("ml",),
    seeds=("strategies",),
    environment={
        "KTRDR_API_ENVIRONMENT": "development",
        # KTRDR's start-up reconciliation reads the legacy name and is skipped without it.
        "DB_HOST": "db",
        "KTRDR_DB_HOST": "db",
        "KTRDR_DB_PORT": "5432",
        "KTRDR_DB_NAME": "ktrdr",
        "KTRDR_DB_USER": "ktrdr",
        "KTRDR_DB_PASSWORD": "${KTRDR_DB_PASSWORD:-localdev}",
        "KTRDR_API_CLIENT_BASE_URL": "http://backend:8000/api/v1",
        "KTRDR_OTEL_OTLP_ENDPOINT": "http://jaeger:4317",
        # true (KTRDR's own default) points at an IB gateway on the Docker host.
        "KTRDR_IB_HOST_ENABLED": "${KTRDR_IB_HOST_ENABLED:-false}",
        "KTRDR_CHECKPOINT_DIR": "/app/data/checkpoints",
    },
    migration=Migration("backend", ("alembic", "upgrade", "head"), "alembic upgrade head"),
    writes_env_sandbox=True,
    # KTRDR's orchestrator refuses to start unless `.git` is a directory.
    checkout="clone",
    # KTRDR refuses to sign tokens with its published insecure default.
    secrets=("KTRDR_AUTH_JWT_SECRET",),
)

KINDS: tuple[AppKind, ...] = (KTRDR, REFERENCE)


@dataclass(frozen=True)
class Source:
    """What a slot runs: a kind, and the checkout it comes from (None: the image's own code)."""

    kind: AppKind
    path: Path | None
    # Which torch the image has (uv kinds): "debian" (the default), "none" or "locked".
    torch: str = DEFAULT_TORCH
    # Where its models live: "shared" (every slot's, the default) or "slot" (its own).
    models: str = "shared"

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else BUILTIN_SOURCE

    def describe(self) -> str:
        if self.path is None:
            return f"{self.kind.name} (built in)"
        return f"{self.kind.name}: {self.path}"


# What a slot without --source runs: the reference app's own code, from its image.
BUILT_IN = Source(REFERENCE, None)


MODELS_CHOICES = ("shared", "slot")
MODELS_TARGET = f"{APP_DIR}/models"


def check_models(models: str) -> str:
    """`models` when it is one of MODELS_CHOICES, else SandboxError(USAGE)."""
    if models not in MODELS_CHOICES:
        choices = ", ".join(MODELS_CHOICES)
        raise SandboxError(f"--models must be one of {choices}, not {models!r}", Exit.USAGE)
    return models


def models_dir(shared_dir: Path, slot: int, models: str) -> Path:
    """The host directory of a slot's models: the shared one's models/, or with `slot` the
    slot's own under the shared directory (beside, not inside, models/: a slot's directory
    must not look like a strategy to another slot listing models/)."""
    if models == "slot":
        return shared_dir / "slots" / f"slot-{slot}" / "models"
    return shared_dir / "models"


def parse_reload(value: str | None) -> str:
    """`--reload`: backend (default: only the backend reloads on edits) or workers (the
    workers too)."""
    if value is None:
        return RELOAD_BACKEND
    if value not in RELOAD_CHOICES:
        raise SandboxError(
            f"unknown --reload {value!r}: use backend (the default) or workers "
            "(e.g. --reload=workers)",
            Exit.USAGE,
        )
    return value


def check_torch(torch: str) -> str:
    """`torch` when it is one of TORCH_CHOICES, else SandboxError(USAGE)."""
    if torch not in TORCH_CHOICES:
        choices = ", ".join(TORCH_CHOICES)
        raise SandboxError(f"--torch must be one of {choices}, not {torch!r}", Exit.USAGE)
    return torch


def from_flag(value: str | None, torch: str | None = None) -> Source:
    """What `--source=VALUE` runs: left out (None), the built-in app; a path, its checkout.
    An empty value is refused: `--source=$CHECKOUT` with the variable unset must not
    quietly start the built-in app."""
    if value is None:
        if torch is not None:
            check_torch(torch)
        return BUILT_IN
    if not value.strip():
        raise SandboxError(
            "--source is empty (an unset variable?): pass a checkout's path, or leave "
            "--source out to run the built-in reference app",
            Exit.USAGE,
        )
    return detect(Path(value), torch)


def detect(path: Path, torch: str | None = None) -> Source:
    """The kind of app at `path`, or a SandboxError naming what is missing. `torch`: the
    image's torch choice (None: the default, for the kinds that have one). A checkout that
    would expose files outside itself is refused too (`check_checkout`)."""
    found = _detect_kind(path, torch)
    check_checkout(found)
    return found


def _detect_kind(path: Path, torch: str | None) -> Source:
    given = path
    if torch is not None:
        check_torch(torch)
    path = path.expanduser()
    if not path.exists():
        raise SandboxError(f"--source {given}: no such directory; pass a checkout", Exit.USAGE)
    if not path.is_dir():
        raise SandboxError(f"--source {given} is a file; pass a checkout directory", Exit.USAGE)
    path = path.resolve()
    for kind in KINDS:
        if all((path / marker).exists() for marker in kind.markers):
            if kind.image != "uv":
                if torch is not None:
                    raise SandboxError(
                        f"--torch is for KTRDR checkouts, not a {kind.title}", Exit.USAGE
                    )
                return Source(kind, path, "none")
            return Source(kind, path, DEFAULT_TORCH if torch is None else torch)
    for kind in KINDS:
        if (path / kind.markers[0]).exists():
            missing = [m for m in kind.markers if not (path / m).exists()]
            raise SandboxError(
                f"--source {given} looks like a {kind.title} but has no {', '.join(missing)}",
                Exit.USAGE,
            )
    wanted = "; ".join(f"a {k.title} has {', '.join(k.markers)}" for k in KINDS)
    raise SandboxError(f"--source {given} is not an app checkout ({wanted})", Exit.USAGE)


# --- what a checkout may expose -------------------------------------------------------------
#
# A bind mount's source is resolved by Docker on the engine's host: `config -> /etc` in a
# checkout (a branch from someone else's pull request is enough) would give the root backend
# the host's /etc. Links inside a mounted tree are resolved by the container, in its own
# filesystem, so they expose nothing of the host; they are refused all the same when they
# leave the checkout, because the remote copy (sandbox/remote/codesync.py) sends them as links, and
# one such link made into a mount root later would be followed there. One rule, everywhere:
# no link of a mounted path may resolve outside the checkout.


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _links(top: Path) -> Iterator[Path]:
    """`top` when it is a link, and every link under it (directories behind links are not
    entered: the link itself is what counts)."""
    if top.is_symlink():
        yield top
    if not top.is_dir():
        return
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # unreadable: nothing in it can be mounted into a container by us either
        for entry in entries:
            if entry.is_symlink():
                yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))


def outside_links(checkout: Path, mounts: tuple[Mount, ...]) -> Iterator[tuple[str, str]]:
    """(path relative to `checkout`, where it leads) for each link in a mounted path whose
    real path is outside the checkout; dangling links are judged by where they point."""
    root = os.path.realpath(checkout)
    for mount in mounts:
        for link in _links(checkout / mount.source):
            real = os.path.realpath(link)
            if not _inside(real, root):
                yield link.relative_to(checkout).as_posix(), real


def check_links(source: Source) -> None:
    """SandboxError(USAGE) naming the first mounted link that leads outside the checkout."""
    if source.path is None:
        return
    for name, real in outside_links(source.path, source.kind.mounts):
        raise SandboxError(
            f"--source {source.path}: {name} is a link to {real}, outside the checkout, which "
            "a container would read: remove or replace the link (e.g. `git checkout` a clean "
            "branch), then re-run",
            Exit.USAGE,
        )


def check_env_sandbox(source: Source) -> None:
    """The checkout's `.env.sandbox`, which `up` writes and `down` removes, must be absent or
    a regular file this tool wrote: a link is never followed (a committed `.env.sandbox ->
    ~/.bashrc` would have `up` write there), nor is someone else's file replaced."""
    if source.path is None or not source.kind.writes_env_sandbox:
        return
    path = source.path / ENV_SANDBOX
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise SandboxError(
            f"{path} is a symbolic link (to {os.readlink(path)}), which ktrdr-sandbox will not "
            "follow: remove it from the checkout (`git rm` if committed), then re-run",
            Exit.USAGE,
        )
    if not stat.S_ISREG(mode) or not ours(path):
        raise SandboxError(
            f"{path} exists and was not written by ktrdr-sandbox: move it away, then re-run",
            Exit.USAGE,
        )


def check_checkout(source: Source) -> None:
    """Everything a checkout must satisfy before a slot runs it: no mounted link leaves it,
    and its `.env.sandbox` is ours to write. Refused in one line, before anything starts."""
    check_links(source)
    check_env_sandbox(source)


def secret(root: Path, slot: int, name: str) -> str:
    """The slot's own value of secret `name`, made once and kept in this checkout's state
    directory (private to the user) until `inv down --volumes`."""
    path = root / STATE_DIR / f"slot-{slot}.{name}"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _command(argv: tuple[str, ...], port: str) -> list[str]:
    return [part.replace("{port}", port) for part in argv]


def _healthcheck(kind: AppKind, port: str, path: str) -> dict[str, Any]:
    return {"test": ["CMD", *kind.probe, port, path]}


def _volumes(source: Source, copied_to: str | None = None) -> list[str]:
    """The read-only binds of the kind's mounts: of the checkout itself, or, on a remote
    engine, of its copy at `copied_to` on the engine's host (plus the copy's volume)."""
    if source.path is None:
        return []
    # The last word before Docker resolves these binds on the host: preflight checked, but a
    # checkout can change between preflight and here.
    check_links(source)
    found = []
    for mount in source.kind.mounts:
        if mount.optional and not (source.path / mount.source).exists():
            continue
        where = f"{copied_to}/{mount.source}" if copied_to else str(source.path / mount.source)
        found.append(f"{where}:{mount.target}:ro")
    if copied_to:
        found.append(f"{SOURCE_VOLUME}:{SOURCE_VOLUME_TARGET}:ro")
    return found


APP_SERVICES = ("backend", *(w.service for w in slots.WORKERS))


def override(
    source: Source,
    image: str | None,
    environment: Mapping[str, str],
    layout: slots.Layout = slots.DEFAULT_LAYOUT,
    copied_to: str | None = None,
    place: Place | None = None,
    reload: str = RELOAD_BACKEND,
) -> dict[str, Any]:
    """The Compose override for `source` and `layout`: labels on every service (the app, its
    source, the client machine, the layout; on the workers, what reloads); for a checkout,
    the app services' image, commands, read-only mounts, environment and healthchecks; for shared
    observability, the app services on the shared network with their traces sent there.
    Which services run at all is `up`'s `--scale` (sandbox/stack.py). `copied_to`: the
    checkout's copy on a remote engine's host (sandbox/remote/codesync.py), bound instead of the
    checkout. `reload`: RELOAD_WORKERS puts the workers under a reloader too."""
    labels = _labels(source, layout, place)
    services: dict[str, dict[str, Any]] = {s: {"labels": labels} for s in slots.SERVICES}
    # On the workers only: another --reload then recreates them and nothing else.
    for worker in slots.WORKERS:
        services[worker.service]["labels"] = {**labels, RELOAD_LABEL: reload}
    document: dict[str, Any] = {"services": services}
    own_models = _own_models(source, place)
    traces = _trace_environment(source.kind, layout)
    if layout.shared:
        # `default` listed too: a service given `networks` is on those networks only.
        document["networks"] = {
            "observability": {"external": True, "name": slots.OBSERVABILITY_NETWORK}
        }
        for service in APP_SERVICES:
            services[service]["networks"] = ["default", "observability"]
    if source.path is None:
        for service in APP_SERVICES:
            if traces:
                services[service]["environment"] = traces
            if own_models:
                services[service]["volumes"] = own_models[service]
        return document
    workers = source.kind.reloaded_workers if reload == RELOAD_WORKERS else {}
    _run_checkout(services, source, image, {**environment, **traces}, copied_to, workers)
    for service, volumes in own_models.items():
        services[service]["volumes"] = [*services[service]["volumes"], *volumes]
    if copied_to:
        document["volumes"] = {SOURCE_VOLUME: {}}
    return document


@dataclass(frozen=True)
class Place:
    """Where a slot keeps its files on the engine's host: its number and shared directory."""

    slot: int
    shared_dir: Path

    def models(self, source: Source) -> Path:
        return models_dir(self.shared_dir, self.slot, source.models)


def _own_models(source: Source, place: Place | None) -> dict[str, list[str]]:
    """With `--models=slot`, each app service's bind of the slot's own models directory at
    the path the compose file binds the shared one (Compose merges binds by their target);
    read-only for backtest workers, as the shared one is."""
    if place is None or source.models != "slot":
        return {}
    where = place.models(source)
    read_only = {w.service for w in slots.WORKERS if w.worker_type == "backtesting"}
    return {
        service: [f"{where}:{MODELS_TARGET}{':ro' if service in read_only else ''}"]
        for service in APP_SERVICES
    }


def _labels(source: Source, layout: slots.Layout, place: Place | None) -> dict[str, str]:
    labels = {
        APP_LABEL: source.kind.name,
        SOURCE_LABEL: source.label,
        WORKERS_LABEL: layout.workers,
        OBSERVABILITY_LABEL: layout.observability,
        CLIENT_LABEL: client_name(),
    }
    if source.kind.image == "uv":
        labels[TORCH_LABEL] = source.torch
    if place is not None:
        labels[SHARED_LABEL] = str(place.shared_dir)
        labels[MODELS_LABEL] = str(place.models(source))
    return labels


def _run_checkout(
    services: dict[str, dict[str, Any]],
    source: Source,
    image: str | None,
    environment: Mapping[str, str],
    copied_to: str | None = None,
    reloaded: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """The app services run the checkout's code: image, commands, mounts, env, healthchecks;
    a worker type in `reloaded` runs that command instead of its own."""
    kind = source.kind
    commands = {**kind.workers, **(reloaded or {})}
    env = {**kind.environment, **environment}
    app: dict[str, Any] = {"volumes": _volumes(source, copied_to), "environment": env}
    if image:
        app["image"] = image
    services["backend"].update(
        app,
        command=_command(kind.backend, "8000"),
        healthcheck=_healthcheck(kind, "8000", "/api/v1/health"),
    )
    for worker in slots.WORKERS:
        port = f"${{{worker.port_variable}}}"
        worker_env = {
            **env,
            **kind.worker_environment,
            "WORKER_TYPE": worker.worker_type,
            # Without an id KTRDR registers `<type>-worker-<random hex>`; the gate looks for
            # the service name.
            "KTRDR_WORKER_ID": worker.service,
            "KTRDR_WORKER_PORT": port,
            "KTRDR_WORKER_PUBLIC_BASE_URL": f"http://{worker.service}:{port}",
        }
        services[worker.service].update(
            app,
            environment=worker_env,
            command=_command(commands[worker.worker_type], port),
            healthcheck=_healthcheck(kind, port, "/health"),
        )


def _trace_environment(kind: AppKind, layout: slots.Layout) -> dict[str, str]:
    """Where the app services send traces: the shared Jaeger on shared observability; the
    slot's own for an app that needs telling (the compose file names it for KTRDR)."""
    env: dict[str, str] = {}
    if layout.shared:
        env["KTRDR_OTEL_OTLP_ENDPOINT"] = f"http://{slots.SHARED_JAEGER_HOST}:4317"
    if kind.otlp_http:
        host = slots.SHARED_JAEGER_HOST if layout.shared else "jaeger"
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://{host}:4318/v1/traces"
    return env


def override_path(root: Path, slot: int) -> Path:
    return root / STATE_DIR / f"slot-{slot}.compose.json"


def write_override(root: Path, slot: int, document: Mapping[str, Any]) -> Path:
    """Write the override where `compose.command` finds it; private: it holds the secret."""
    path = override_path(root, slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def recorded_source(root: Path, slot: int) -> str:
    """The source the slot's last `up` from this checkout ran ("" for none), from its
    override: containers that recorded it may be gone (`down` without --volumes)."""
    try:
        document = json.loads(override_path(root, slot).read_text())
        source = document["services"]["backend"]["labels"][SOURCE_LABEL]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return source if isinstance(source, str) else ""


def recorded_copy(root: Path, slot: int) -> bool:
    """Whether the slot's last `up` from this checkout bound a copy of its source on a remote
    engine's host (its override declares the copy's volume)."""
    try:
        document = json.loads(override_path(root, slot).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and SOURCE_VOLUME in (document.get("volumes") or {})


def remove_state(root: Path, slot: int) -> list[Path]:
    """The slot's override and secrets, removed with its database (`down --volumes`)."""
    state = root / STATE_DIR
    found = [p for p in state.glob(f"slot-{slot}.*") if p.is_file()] if state.is_dir() else []
    for path in found:
        path.unlink()
    return found


def env_sandbox_text(
    slot: int,
    values: Mapping[str, str],
    urls: Mapping[str, str],
    source: Source = BUILT_IN,
    place: Place | None = None,
) -> str:
    """`.env.sandbox` for a checkout: the slot's ports and URLs for KTRDR's CLI (it reads
    KTRDR_API_PORT), its Compose project for `ktrdr sandbox status` (which runs `docker
    compose ps` with this file's variables), and the directories KTRDR's own sandbox names.
    Values unquoted: KTRDR's reader does not strip quotes."""
    lines = [
        f"{ENV_SANDBOX_HEADER} for slot {slot}; removed by `inv down --slot={slot} --volumes`.",
        f"COMPOSE_PROJECT_NAME={slots.project_name(slot)}",
        f"SLOT_NUMBER={slot}",
    ]
    if source.path is not None:
        lines.append(f"INSTANCE_ID={source.path.name}")
    lines += [f"{name}={values[name]}" for name in slots.PORT_VARIABLES if name in values]
    if "Backend API" in urls:
        lines.append(f"KTRDR_API_URL={urls['Backend API']}")
    if place is not None:
        lines += [
            f"KTRDR_SHARED_DIR={place.shared_dir}",
            f"KTRDR_DATA_DIR={place.shared_dir / 'data'}",
            f"KTRDR_MODELS_DIR={place.models(source)}",
            f"KTRDR_STRATEGIES_DIR={place.shared_dir / 'strategies'}",
        ]
    return "\n".join(lines) + "\n"


def write_env_sandbox(source: Source, text: str) -> Path | None:
    """Write `.env.sandbox` into the checkout, for kinds whose CLI reads it. Never replaces a
    file that ktrdr-sandbox did not write."""
    if source.path is None or not source.kind.writes_env_sandbox:
        return None
    check_env_sandbox(source)
    path = source.path / ENV_SANDBOX
    # O_NOFOLLOW: a link that appeared since the check is refused by the kernel, not followed.
    # No O_TRUNC: a file of someone else's that appeared since the check is looked at through
    # the descriptor first, and emptied only when it is ours.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise SandboxError(
            f"cannot write {path} ({exc.strerror}): remove it from the checkout, then re-run",
            Exit.USAGE,
        ) from None
    with os.fdopen(fd, "r+") as handle:
        info = os.fstat(handle.fileno())
        head = handle.read(len(ENV_SANDBOX_HEADER)) if info.st_size else ENV_SANDBOX_HEADER
        if not stat.S_ISREG(info.st_mode) or head != ENV_SANDBOX_HEADER:
            raise SandboxError(
                f"{path} was not written by ktrdr-sandbox: move it away, then re-run", Exit.USAGE
            )
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    return path


def ours(path: Path) -> bool:
    """Whether `path` is a regular file (not a link to one) that this tool wrote."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd) as handle:
        return handle.read(len(ENV_SANDBOX_HEADER)) == ENV_SANDBOX_HEADER


def remove_env_sandbox(checkout: Path) -> Path | None:
    """Remove the `.env.sandbox` this tool wrote into `checkout`; anything else stays (a link,
    even one to a file of ours, is the checkout's: it may be tracked)."""
    path = checkout / ENV_SANDBOX
    if ours(path):
        path.unlink()
        return path
    return None
