"""What `up` writes for a slot, and reads back: the Compose override that makes its app kind
run (JSON, which is YAML, layered over docker-compose.sandbox.yml with a second `-f`;
everything else in the stack stays as it is), the slot's secrets, and `.env.sandbox`'s text.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import STATE_DIR, slots
from sandbox.apps import (
    APP_DIR,
    BUILT_IN,
    RELOAD_BACKEND,
    RELOAD_WORKERS,
    AppKind,
    Source,
    models_dir,
)
from sandbox.checkouts import ENV_SANDBOX_HEADER, check_links
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

# On a remote engine the checkout's mounted files are copied into this per-slot volume
# (sandbox/remote/codesync.py); the app services also mount the volume itself here, read-only, so
# nothing prunes it while the slot runs.
SOURCE_VOLUME = "source"
SOURCE_VOLUME_TARGET = "/opt/ktrdr-sandbox/source"
MODELS_TARGET = f"{APP_DIR}/models"


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
