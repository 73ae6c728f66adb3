"""The slot scheme: one definition of every host port of every slot.

A slot (0-10) is one complete stack: its own Compose project, its own host ports and its own
database volume. Slot 0 keeps KTRDR's standard ports. Everything else here (env files, the
port table in the docs, preflight, verify) is derived from `PORTS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sandbox.errors import Exit, SandboxError

SLOTS = range(0, 11)
PROJECT_PREFIX = "ktrdr-sandbox-"
PORT_MIN, PORT_MAX = 1024, 65535
BACKEND_PORT = 8000  # the backend's port inside its container (KTRDR's contract)
DB_VOLUME = "db-data"  # the database volume's key in the compose file


@dataclass(frozen=True)
class PortSpec:
    """One published host port.

    Slot 0 uses `standard`; slot N >= 1 uses `base + step * N`. `container_port` is the port
    inside the container, or None where it equals the host port (workers register their own
    port with the backend, so inside and outside must agree).
    """

    variable: str
    service: str
    label: str
    standard: int
    base: int
    step: int
    container_port: int | None

    def host_port(self, slot: int) -> int:
        return self.standard if slot == 0 else self.base + self.step * slot


# OTLP steps by 10: with a step of 1, slot N's gRPC port (4317+N) would be slot N-1's HTTP
# port (4318+N-1). Workers step by 10 for the same reason: four ports per slot.
PORTS: tuple[PortSpec, ...] = (
    PortSpec("KTRDR_DB_PORT", "db", "PostgreSQL", 5432, 5432, 1, 5432),
    PortSpec("KTRDR_API_PORT", "backend", "Backend API", 8000, 8000, 1, BACKEND_PORT),
    PortSpec("KTRDR_JAEGER_UI_PORT", "jaeger", "Jaeger UI", 16686, 16686, 1, 16686),
    PortSpec("KTRDR_JAEGER_OTLP_GRPC_PORT", "jaeger", "OTLP gRPC", 4317, 4317, 10, 4317),
    PortSpec("KTRDR_JAEGER_OTLP_HTTP_PORT", "jaeger", "OTLP HTTP", 4318, 4318, 10, 4318),
    PortSpec("KTRDR_PROMETHEUS_PORT", "prometheus", "Prometheus", 9090, 9090, 1, 9090),
    PortSpec("KTRDR_GRAFANA_PORT", "grafana", "Grafana", 3000, 3000, 1, 3000),
    PortSpec("KTRDR_WORKER_PORT_1", "backtest-worker-1", "Backtest worker 1", 5003, 5000, 10, None),
    PortSpec("KTRDR_WORKER_PORT_2", "backtest-worker-2", "Backtest worker 2", 5004, 5001, 10, None),
    PortSpec("KTRDR_WORKER_PORT_3", "training-worker-1", "Training worker 1", 5005, 5002, 10, None),
    PortSpec("KTRDR_WORKER_PORT_4", "training-worker-2", "Training worker 2", 5006, 5003, 10, None),
)
PORT_VARIABLES = tuple(spec.variable for spec in PORTS)


@dataclass(frozen=True)
class Worker:
    service: str
    worker_type: str  # as KTRDR names it: "backtesting" or "training"
    port_variable: str


WORKERS: tuple[Worker, ...] = (
    Worker("backtest-worker-1", "backtesting", "KTRDR_WORKER_PORT_1"),
    Worker("backtest-worker-2", "backtesting", "KTRDR_WORKER_PORT_2"),
    Worker("training-worker-1", "training", "KTRDR_WORKER_PORT_3"),
    Worker("training-worker-2", "training", "KTRDR_WORKER_PORT_4"),
)
SERVICES: tuple[str, ...] = (
    "db",
    "backend",
    *(w.service for w in WORKERS),
    "jaeger",
    "prometheus",
    "grafana",
)


def project_name(slot: int) -> str:
    return f"{PROJECT_PREFIX}{slot}"


def volume(project: str, key: str) -> str:
    """The name Compose (or a swarm stack) gives the volume `key` of its file in `project`."""
    return f"{project}_{key}"


def db_volume(project: str) -> str:
    return volume(project, DB_VOLUME)


def slot_of_project(project: str) -> int | None:
    """The slot a Compose project name belongs to, or None when it is not a sandbox project."""
    if not project.startswith(PROJECT_PREFIX):
        return None
    rest = project.removeprefix(PROJECT_PREFIX)
    number = ascii_int(rest)
    if number is None or number not in SLOTS or str(number) != rest:
        return None
    return number


def ports(slot: int) -> dict[str, int]:
    """Every host port of `slot`, by variable name."""
    return {spec.variable: spec.host_port(slot) for spec in PORTS}


def service_urls(host: str, port: Callable[[str], int]) -> dict[str, str]:
    """URL by service of one slot, at `host` (an IPv6 address in brackets): the API root, the
    database, the UIs and each worker's /health. `port` gives the host port of a variable."""
    found = {
        "backend": f"http://{host}:{port('KTRDR_API_PORT')}/api/v1",
        "db": f"postgresql://ktrdr@{host}:{port('KTRDR_DB_PORT')}/ktrdr",
        "jaeger": f"http://{host}:{port('KTRDR_JAEGER_UI_PORT')}",
        "prometheus": f"http://{host}:{port('KTRDR_PROMETHEUS_PORT')}",
        "grafana": f"http://{host}:{port('KTRDR_GRAFANA_PORT')}",
    }
    for worker in WORKERS:
        found[worker.service] = f"http://{host}:{port(worker.port_variable)}/health"
    return found


# Every number a user types (a flag, an env file) is at most this many ASCII digits: enough
# for any port, count or timeout, and short of Python's 4300-digit `int()` limit by far.
MAX_DIGITS = 9
_WHOLE = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_SECONDS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?")
SHOWN_CHARS = 24  # how much of a bad value an error line echoes back


def shown(value: str) -> str:
    """`value` for an error line: quoted, and cut short when it is long (5000 digits are
    not "one clear line")."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return repr(value[:SHOWN_CHARS]) + f"... ({len(value)} characters)"


def ascii_int(value: str) -> int | None:
    """A whole number of ASCII digits ("0"-"9" only, at most MAX_DIGITS), else None.

    `str.isdigit()` and `int()` accept far more: superscripts (`8008\u00b2` passes isdigit,
    then int() raises), full-width and other scripts' digits (int() takes them, Compose does
    not), underscores, signs, spaces and 5000-digit strings (int() raises past 4300)."""
    return int(value) if _WHOLE.fullmatch(value) else None


def parse_slot(value: object) -> int:
    """A slot number from user input, or a SandboxError that says what is allowed."""
    text = str(value).strip()
    # A minus sign is read so that `--slot=-3` is told the range rather than "not a number".
    number = ascii_int(text.removeprefix("-"))
    if number is not None and text.startswith("-"):
        number = -number
    if number is None:
        raise SandboxError(
            f"slot must be a whole number from 0 to 10, not {shown(text)} (e.g. --slot=1)",
            Exit.USAGE,
        )
    if number not in SLOTS:
        raise SandboxError(f"slot {number} is outside 0-10: pick a slot from 0 to 10", Exit.USAGE)
    return number


def parse_seconds(value: str, flag: str = "--timeout") -> float:
    """A positive number of seconds from user input (a flag or an env file): ASCII digits,
    optionally with a decimal point, of bounded length."""
    text = value.strip()
    seconds = float(text) if _SECONDS.fullmatch(text) else 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise SandboxError(
            f"{flag.lstrip('-')} must be a positive number of seconds, not {shown(value)} "
            f"(e.g. {flag}=240)",
            Exit.USAGE,
        )
    return seconds


def parse_count(value: str, flag: str) -> int:
    """A whole number of lines (0 or more) from user input, e.g. `--tail`."""
    number = ascii_int(value.strip())
    if number is None:
        raise SandboxError(
            f"{flag} takes a number of lines, not {shown(value)} (e.g. {flag}=50)", Exit.USAGE
        )
    return number


def one_of(value: str, choices: Collection[str], what: str, example: str = "") -> str:
    """`value` when it is one of `choices`; else SandboxError(USAGE) naming them all."""
    if value not in choices:
        hint = f" (e.g. {example})" if example else ""
        raise SandboxError(
            f"unknown {what} {value!r}: use one of {', '.join(choices)}{hint}", Exit.USAGE
        )
    return value


def parse_service(value: str) -> str:
    return one_of(value, SERVICES, "service")


# --- what a slot runs: its worker profile and where its observability lives ----------------

# Worker profile -> the worker services it runs. `full` is the stack as it always was; `light`
# keeps one worker of each type, so backtests and training still have somewhere to go.
WORKER_PROFILES: dict[str, tuple[str, ...]] = {
    "full": tuple(w.service for w in WORKERS),
    "light": ("backtest-worker-1", "training-worker-1"),
    "none": (),
}
DEFAULT_WORKERS = "full"
# `own`: the slot runs its own Jaeger, Prometheus and Grafana; `shared`: it uses the machine's
# one observability stack (sandbox/observability.py).
OBSERVABILITY_MODES = ("own", "shared")
DEFAULT_OBSERVABILITY = "own"
OBSERVABILITY_SERVICES: tuple[str, ...] = ("jaeger", "prometheus", "grafana")


@dataclass(frozen=True)
class Layout:
    """Which of the stack's services a slot runs: every `up` records it on the containers."""

    workers: str = DEFAULT_WORKERS
    observability: str = DEFAULT_OBSERVABILITY

    @property
    def worker_list(self) -> tuple[Worker, ...]:
        wanted = WORKER_PROFILES[self.workers]
        return tuple(w for w in WORKERS if w.service in wanted)

    @property
    def shared(self) -> bool:
        return self.observability == "shared"

    @property
    def services(self) -> tuple[str, ...]:
        """The services that run, in the stack's order."""
        left_out = set(self.left_out)
        return tuple(s for s in SERVICES if s not in left_out)

    @property
    def left_out(self) -> tuple[str, ...]:
        """Services of the compose file this slot does not run (scaled to 0)."""
        wanted = WORKER_PROFILES[self.workers]
        workers = tuple(w.service for w in WORKERS if w.service not in wanted)
        return workers + (OBSERVABILITY_SERVICES if self.shared else ())

    @property
    def app_services(self) -> tuple[str, ...]:
        """The services that run the app's code (backend and this profile's workers)."""
        return ("backend", *(w.service for w in self.worker_list))

    @property
    def ports(self) -> tuple[PortSpec, ...]:
        """The host ports this slot publishes."""
        running = set(self.services)
        return tuple(spec for spec in PORTS if spec.service in running)

    def describe(self) -> str:
        count = len(self.worker_list)
        shown = f"{self.workers} ({count} worker{'s' if count != 1 else ''})"
        return f"{shown}, shared observability" if self.shared else shown


DEFAULT_LAYOUT = Layout()


def parse_workers(value: str) -> str:
    return one_of(value, WORKER_PROFILES, "worker profile", "--workers=light")


def parse_observability(value: str) -> str:
    return one_of(value, OBSERVABILITY_MODES, "observability", "--observability=shared")


def parse_layout(workers: str | None, observability: str | None) -> Layout:
    return Layout(
        parse_workers(workers or DEFAULT_WORKERS),
        parse_observability(observability or DEFAULT_OBSERVABILITY),
    )


def recorded_layout(workers: str, observability: str) -> Layout:
    """The layout labels recorded on a container; containers from before profiles existed
    (no labels) ran the full stack with their own observability. A label this version does
    not know reads as the default rather than failing `status`."""
    return Layout(
        workers if workers in WORKER_PROFILES else DEFAULT_WORKERS,
        observability if observability in OBSERVABILITY_MODES else DEFAULT_OBSERVABILITY,
    )


# --- the machine's one shared observability stack ---------------------------------------------


OBSERVABILITY_PROJECT = f"{PROJECT_PREFIX}observability"
# The external network shared slots and the stack meet on, and the stack's names there
# (unique, unlike a slot's own `jaeger`).
OBSERVABILITY_NETWORK = "ktrdr-sandbox-observability"
SHARED_JAEGER_HOST = "ktrdr-observability-jaeger"


@dataclass(frozen=True)
class FixedPort:
    """A host port of the shared observability stack: one per machine, outside every slot's
    range (a test holds it there)."""

    variable: str
    service: str
    label: str
    port: int
    container_port: int


OBSERVABILITY_PORTS: tuple[FixedPort, ...] = (
    FixedPort("KTRDR_OBS_JAEGER_UI_PORT", "jaeger", "Shared Jaeger UI", 16680, 16686),
    FixedPort("KTRDR_OBS_OTLP_GRPC_PORT", "jaeger", "Shared OTLP gRPC", 4300, 4317),
    FixedPort("KTRDR_OBS_OTLP_HTTP_PORT", "jaeger", "Shared OTLP HTTP", 4301, 4318),
    FixedPort("KTRDR_OBS_PROMETHEUS_PORT", "prometheus", "Shared Prometheus", 9080, 9090),
    FixedPort("KTRDR_OBS_GRAFANA_PORT", "grafana", "Shared Grafana", 3080, 3000),
)


def observability_ports() -> dict[str, int]:
    return {p.variable: p.port for p in OBSERVABILITY_PORTS}
