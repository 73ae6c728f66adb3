"""Per-slot env files: rendered from the scheme, read back as data, validated.

`env/slot-N.env` is committed and held equal to `render(N)` by a test. The files are read with
`dotenv_values` and never loaded into this process, so one slot's values cannot leak into
another's command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from sandbox import slots
from sandbox.errors import Exit, SandboxError

ENV_DIR = "env"
# `${HOME}` rather than `~`: Compose interpolates ${HOME} in env files, bash expands it when the
# file is sourced, and neither expands a tilde in the middle of an assignment's value.
SHARED_DIR_VALUE = "${HOME}/.ktrdr/shared"
SHARED_DIR_DEFAULT = Path.home() / ".ktrdr" / "shared"
REQUIRED = ("COMPOSE_PROJECT_NAME", "SLOT_NUMBER", *slots.PORT_VARIABLES)


def env_path(root: Path, slot: int) -> Path:
    return root / ENV_DIR / f"slot-{slot}.env"


def render(slot: int) -> str:
    """The text of `env/slot-<slot>.env`."""
    lines = [
        f"# ktrdr-sandbox slot {slot}. Generated from sandbox/slots.py by `inv env --write`;",
        "# edit the scheme, not this file (a test holds them equal).",
        f"#   docker compose --env-file .env --env-file env/slot-{slot}.env "
        "-f docker-compose.sandbox.yml up -d",
        f"#   set -a; . env/slot-{slot}.env; set +a",
        f"COMPOSE_PROJECT_NAME={slots.project_name(slot)}",
        f"SLOT_NUMBER={slot}",
    ]
    lines += [f"{name}={port}" for name, port in slots.ports(slot).items()]
    if slot == 0:
        lines.append("# Slot 0 mounts ./data, ./models and ./strategies of this checkout.")
    else:
        lines.append(f"KTRDR_SHARED_DIR={SHARED_DIR_VALUE}")
    return "\n".join(lines) + "\n"


def write_all(root: Path) -> list[Path]:
    """Write every slot's env file; return the ones whose text changed."""
    changed = []
    for slot in slots.SLOTS:
        path = env_path(root, slot)
        text = render(slot)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def read(path: Path) -> dict[str, str]:
    """An env file as data, `${HOME}`-style references expanded from this environment."""
    if not path.is_file():
        raise SandboxError(
            f"env file {path} is missing: run `inv env --write` to regenerate env/", Exit.BAD_ENV
        )
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


@dataclass(frozen=True)
class Problem:
    file: str
    slot: int | None
    variable: str
    message: str

    def __str__(self) -> str:
        where = f"slot {self.slot}" if self.slot is not None else "unknown slot"
        return f"{self.file}: {self.variable} ({where}): {self.message}"


def check(values: Mapping[str, str], file: str, slot: int | None = None) -> list[Problem]:
    """Problems within one env file: missing variables, non-numbers, ports out of range."""
    problems = []
    raw_slot = values.get("SLOT_NUMBER")
    said_slot = slots.ascii_int(raw_slot) if raw_slot is not None else None
    if slot is None:
        slot = said_slot
    for name in REQUIRED:
        value = values.get(name)
        if value is None or value == "":
            problems.append(Problem(file, slot, name, "missing"))
        elif name in slots.PORT_VARIABLES or name == "SLOT_NUMBER":
            number = slots.ascii_int(value)
            if number is None:
                problems.append(Problem(file, slot, name, f"{slots.shown(value)} is not a number"))
            elif name != "SLOT_NUMBER" and not slots.PORT_MIN <= number <= slots.PORT_MAX:
                problems.append(
                    Problem(
                        file,
                        slot,
                        name,
                        f"port {number} is outside {slots.PORT_MIN}-{slots.PORT_MAX}",
                    )
                )
    if slot is not None and said_slot is not None and said_slot != slot:
        problems.append(Problem(file, slot, "SLOT_NUMBER", f"says {raw_slot}, file is slot {slot}"))
    project = values.get("COMPOSE_PROJECT_NAME")
    if slot is not None and project and project != slots.project_name(slot):
        problems.append(
            Problem(
                file,
                slot,
                "COMPOSE_PROJECT_NAME",
                f"{project!r} should be {slots.project_name(slot)!r}",
            )
        )
    return problems


def check_collisions(files: Iterable[tuple[str, int, Mapping[str, str]]]) -> list[Problem]:
    """Ports shared between or within slots. `files` yields (file name, slot, values)."""
    owner: dict[int, tuple[str, int, str]] = {}
    problems = []
    for file, slot, values in files:
        for name in slots.PORT_VARIABLES:
            port = slots.ascii_int(values.get(name, ""))
            if port is None:
                continue  # reported by check()
            if port in owner:
                other_file, other_slot, other_name = owner[port]
                problems.append(
                    Problem(
                        file,
                        slot,
                        name,
                        f"port {port} is also {other_name} of slot {other_slot} ({other_file})",
                    )
                )
            else:
                owner[port] = (file, slot, name)
    return problems


def check_scheme() -> list[Problem]:
    """The scheme itself, before any file: every slot's ports valid and distinct."""
    rendered = [
        (f"scheme slot {s}", s, {k: str(v) for k, v in slots.ports(s).items()}) for s in slots.SLOTS
    ]
    problems = []
    for file, slot, values in rendered:
        full = {
            **values,
            "SLOT_NUMBER": str(slot),
            "COMPOSE_PROJECT_NAME": slots.project_name(slot),
        }
        problems += check(full, file, slot)
    return problems + check_collisions(rendered)


def check_all(root: Path) -> list[Problem]:
    """Every committed env file: each valid on its own, no port shared between two slots."""
    problems = check_scheme()
    seen = []
    for slot in slots.SLOTS:
        path = env_path(root, slot)
        name = f"{ENV_DIR}/{path.name}"
        if not path.is_file():
            problems.append(Problem(name, slot, "(file)", "missing: run `inv env --write`"))
            continue
        values = read(path)
        problems += check(values, name, slot)
        seen.append((name, slot, values))
    return problems + check_collisions(seen)


def load_slot(root: Path, slot: int) -> dict[str, str]:
    """A slot's env file, validated; SandboxError naming the first problem otherwise."""
    path = env_path(root, slot)
    values = read(path)
    problems = check(values, f"{ENV_DIR}/{path.name}", slot)
    if problems:
        raise SandboxError(
            f"{problems[0]}: fix it or run `inv env --write` to regenerate env/", Exit.BAD_ENV
        )
    return values
