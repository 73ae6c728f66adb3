"""App kinds: what runs in a slot's backend and workers, as data.

A slot runs either the built-in reference app (no `--source`) or the code of a checkout given
with `inv up --source=PATH`. Which kind of app PATH holds is detected from its layout; each
kind says, as data, which image it runs on, the command of the backend and of each worker type,
which directories of the checkout are mounted (read-only) for hot reload, the environment it
reads, the migration step and the healthcheck. A third kind is a new `AppKind`, not new
branches in the tasks.

`slotfiles.override(...)` turns a kind into a Compose override file; `checkouts` says what a
checkout may expose before any of it is mounted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sandbox import slots
from sandbox.checkouts import check_checkout
from sandbox.errors import Exit, SandboxError
from sandbox.images.app import DEFAULT_TORCH, TORCH_CHOICES

WORKER_TYPES = ("backtesting", "training")
# `inv up --reload`: which app services run under a reloader, recorded on the slot's
# containers (RELOAD_LABEL) as --workers is.
RELOAD_BACKEND = "backend"
RELOAD_WORKERS = "workers"
RELOAD_CHOICES = (RELOAD_BACKEND, RELOAD_WORKERS)
BUILTIN_SOURCE = ""  # the label value of a slot that runs the image's own code
# The app's container paths, as in KTRDR's own images.
APP_DIR = "/app"


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


def check_models(models: str) -> str:
    """`models` when it is one of MODELS_CHOICES, else SandboxError(USAGE)."""
    return slots.one_of(models, MODELS_CHOICES, "--models", "--models=slot")


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
    return slots.one_of(value, RELOAD_CHOICES, "--reload", "--reload=workers")


def check_torch(torch: str) -> str:
    """`torch` when it is one of TORCH_CHOICES, else SandboxError(USAGE)."""
    return slots.one_of(torch, TORCH_CHOICES, "--torch")


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
