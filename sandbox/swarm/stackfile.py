"""A slot's Compose model turned into the stack file `docker stack deploy` accepts.

The input is what `inv up` itself runs: docker-compose.sandbox.yml with the slot's env file and
override, rendered by `docker compose config --format json` (`model_command`). `render` is pure:
it returns the stack document and the files it refers to, and tests assert both exactly.

What the stack loader of Docker 20.10 and later rejects or changes, and what is done about it
(measured on a three-node swarm; docs/designs/Sandbox/SWARM.md has the whole table):

- ports as strings and `host_ip` are refused: numeric long form, `mode: host` (this machine's
  kernel has no IP_VS, so the routing mesh and VIPs do not work; host mode publishes on every
  address of the node that runs the task);
- long-form `depends_on` is refused and the short form ignored: dropped (the backend retries
  the database and the workers their registration, and the gate waits, as with Compose);
- inline `configs.content` is refused: the content goes to a file beside the stack file, and
  the config's name carries a hash of it, since a swarm config can never be updated in place;
- a top-level `name` is refused (the stack name is the project name), `build` silently
  dropped, `restart: "no"` turned into "restart forever": `restart` becomes
  `deploy.restart_policy` (Compose's default, "no", included);
- VIP service addresses need IP_VS: `endpoint_mode: dnsrr` everywhere;
- swarm's DNS names a task only once its first healthcheck passed (dnsrr: the backend cannot
  resolve `db` before), and Docker 20.10 runs that check one interval after the start: the
  healthcheck interval is capped at `HEALTH_INTERVAL` (the compose file's minute would hold a
  slot back by a minute; 10 s for nine checks is ~2% of a core per slot, spread over nodes);
- volumes are node-local and bind sources are never created: the database is pinned to the
  node labelled `ktrdr.sandbox.db=true`, services with bind mounts (the shared directory) to
  nodes labelled `ktrdr.sandbox.shared=true`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import Exit, SandboxError

# The stack file format whose fields are used (init needs 3.7, config names 3.5).
VERSION = "3.8"
DB_SERVICE = "db"
DB_LABEL = "ktrdr.sandbox.db"
SHARED_LABEL = "ktrdr.sandbox.shared"
DB_CONSTRAINT = f"node.labels.{DB_LABEL} == true"
SHARED_CONSTRAINT = f"node.labels.{SHARED_LABEL} == true"
# Compose's restart values as swarm restart conditions. Compose's default is "no".
RESTART = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}
# Service keys carried over as they are.
KEPT = frozenset(
    {
        "command",
        "entrypoint",
        "environment",
        "healthcheck",
        "image",
        "init",
        "labels",
        "stop_grace_period",
        "stop_signal",
        "user",
        "working_dir",
    }
)
# Service keys the stack does not use or that `render` replaces (`restart`, `ports`, `volumes`,
# `configs`, `networks` are rewritten below).
DROPPED = frozenset({"build", "depends_on", "container_name", "pull_policy", "scale"})
REWRITTEN = frozenset({"restart", "ports", "volumes", "configs", "networks"})
CONFIG_DIR = "configs"
HEALTH_INTERVAL = 10.0  # seconds, the longest healthcheck interval of a swarm service
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def seconds(duration: str) -> float:
    """A Go duration as `docker compose config` writes it ("1m0s", "2s", "500ms")."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise SandboxError(f"{duration!r} is not a duration Compose writes", Exit.USAGE)
    return sum(float(n) * _UNIT[u] for n, u in parts)


def healthcheck(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The service's healthcheck with its interval capped at HEALTH_INTERVAL."""
    out = dict(spec)
    interval = out.get("interval")
    if isinstance(interval, str) and seconds(interval) > HEALTH_INTERVAL:
        out["interval"] = f"{HEALTH_INTERVAL:g}s"
    return out


@dataclass(frozen=True)
class Rendered:
    """A stack document and the files it names, relative to the stack file's directory."""

    document: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The stack file: JSON, which the stack loader reads as the YAML it is."""
        return json.dumps(self.document, indent=2, sort_keys=True) + "\n"

    def write(self, directory: Path, name: str = "stack.json") -> Path:
        """The stack file and its files in `directory`; the stack file's path."""
        directory.mkdir(parents=True, exist_ok=True)
        for relative, content in self.files.items():
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        stack = directory / name
        stack.write_text(self.text())
        return stack


def model_command(compose_cmd: Sequence[str]) -> list[str]:
    """`docker compose ... config --format json` after `compose.command`'s project options:
    the model every swarm command starts from."""
    return [*compose_cmd, "config", "--format", "json"]


def parse_model(text: str) -> dict[str, Any]:
    try:
        model = json.loads(text)
    except ValueError:
        model = None
    if not isinstance(model, dict) or not isinstance(model.get("services"), dict):
        raise SandboxError(
            "`docker compose config --format json` gave no services: run it by hand and read "
            "why (Compose v2.20 or later is needed)",
            Exit.NO_COMPOSE,
        )
    return model


def _unsupported(service: str, key: str) -> SandboxError:
    return SandboxError(
        f"service {service!r} uses {key!r}, which has no swarm mapping in this tool: drop it "
        "from the override, or run the slot on one engine (no swarm)",
        Exit.USAGE,
    )


def port(entry: Mapping[str, Any], service: str) -> dict[str, Any]:
    """One published port in the numeric long form, on the node itself (no host_ip)."""
    published = str(entry.get("published") or "")
    if not published.isdigit():
        raise SandboxError(
            f"service {service!r} publishes {published or 'a random port'!r}: a swarm slot "
            "publishes fixed ports only (the slot scheme's)",
            Exit.USAGE,
        )
    return {
        "mode": "host",
        "protocol": str(entry.get("protocol") or "tcp"),
        "published": int(published),
        "target": int(entry["target"]),
    }


def volume(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A mount in the long form the stack loader takes: type, source, target, read_only."""
    mount: dict[str, Any] = {
        "source": entry["source"],
        "target": entry["target"],
        "type": entry["type"],
    }
    if entry.get("read_only"):
        mount["read_only"] = True
    return mount


def config_name(project: str, key: str, content: str) -> str:
    """A swarm config's name: the content's hash in it, since a config is immutable (a changed
    prometheus.yml becomes a new config, not a refused update)."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    return f"{project}_{key}-{digest}"


def _configs(model: Mapping[str, Any], project: str) -> tuple[dict[str, Any], dict[str, str]]:
    configs: dict[str, Any] = {}
    files: dict[str, str] = {}
    for key, spec in sorted((model.get("configs") or {}).items()):
        if "content" in spec:
            relative = f"{CONFIG_DIR}/{key}"
            files[relative] = spec["content"]
            configs[key] = {
                "file": f"./{relative}",
                "name": config_name(project, key, spec["content"]),
            }
        elif "file" in spec:
            content = Path(spec["file"]).read_text()
            relative = f"{CONFIG_DIR}/{key}"
            files[relative] = content
            configs[key] = {"file": f"./{relative}", "name": config_name(project, key, content)}
        else:
            raise SandboxError(
                f"config {key!r} has neither content nor file: a swarm slot cannot use it",
                Exit.USAGE,
            )
    return configs, files


def constraints(name: str, service: Mapping[str, Any]) -> list[str]:
    """Where a service may run: the database on the db node (its volume stays there), a
    service with a bind mount on the nodes that hold the shared directory."""
    found = []
    if name == DB_SERVICE:
        found.append(DB_CONSTRAINT)
    if any(v.get("type") == "bind" for v in service.get("volumes") or ()):
        found.append(SHARED_CONSTRAINT)
    return found


def service(
    name: str, spec: Mapping[str, Any], images: Mapping[str, str], configs: Mapping[str, Any]
) -> dict[str, Any]:
    """One Compose service as a swarm service."""
    for key in spec:
        if key not in KEPT | DROPPED | REWRITTEN:
            raise _unsupported(name, key)
    out: dict[str, Any] = {k: v for k, v in spec.items() if k in KEPT and v is not None}
    if "image" in out:
        out["image"] = images.get(out["image"], out["image"])
    if isinstance(out.get("healthcheck"), dict):
        out["healthcheck"] = healthcheck(out["healthcheck"])
    restart = str(spec.get("restart") or "no")
    if restart not in RESTART:
        raise _unsupported(name, f"restart: {restart}")
    deploy: dict[str, Any] = {
        "endpoint_mode": "dnsrr",
        "replicas": 1,
        "restart_policy": {"condition": RESTART[restart]},
    }
    labels = spec.get("labels")
    if labels:
        deploy["labels"] = dict(labels)
    placed = constraints(name, spec)
    if placed:
        deploy["placement"] = {"constraints": placed}
    out["deploy"] = deploy
    if spec.get("ports"):
        out["ports"] = [port(p, name) for p in spec["ports"]]
    if spec.get("volumes"):
        out["volumes"] = [volume(v) for v in spec["volumes"]]
    if spec.get("configs"):
        out["configs"] = [
            {"source": c["source"], "target": c["target"]}
            for c in spec["configs"]
            if c["source"] in configs
        ]
    out["networks"] = sorted(spec.get("networks") or {"default": None})
    return out


def render(
    model: Mapping[str, Any],
    *,
    project: str,
    images: Mapping[str, str] | None = None,
    services: Collection[str] | None = None,
) -> Rendered:
    """The stack for `project` from a rendered Compose `model`.

    `images` maps an image the model names to the reference nodes pull it by (the in-swarm
    registry's copy); others stay as they are. `services`: the ones the slot's layout runs
    (default: all); the others are left out, as `inv up --scale` leaves them at zero.
    """
    configs, files = _configs(model, project)
    chosen = {
        name: spec
        for name, spec in sorted(model["services"].items())
        if services is None or name in services
    }
    document: dict[str, Any] = {
        "version": VERSION,
        "services": {
            name: service(name, spec, images or {}, configs) for name, spec in chosen.items()
        },
    }
    used_networks = {n for s in document["services"].values() for n in s["networks"]}
    document["networks"] = {n: {"driver": "overlay"} for n in sorted(used_networks)}
    used_volumes = {
        v["source"]
        for s in document["services"].values()
        for v in s.get("volumes", ())
        if v["type"] == "volume"
    }
    if used_volumes:
        # Named by the stack (PROJECT_db-data, as Compose names it) on the node that runs the
        # task: node-local, hence the database's constraint.
        document["volumes"] = {v: {} for v in sorted(used_volumes)}
    used_configs = {
        c["source"] for s in document["services"].values() for c in s.get("configs", ())
    }
    if used_configs:
        document["configs"] = {k: v for k, v in configs.items() if k in used_configs}
    kept = {f"{CONFIG_DIR}/{k}" for k in used_configs}
    return Rendered(document, {k: v for k, v in files.items() if k in kept})


def bind_sources(rendered: Rendered) -> list[str]:
    """Every bind-mount source of the stack: directories that must exist on the nodes labelled
    for the shared directory (swarm never creates one)."""
    return sorted(
        {
            v["source"]
            for s in rendered.document["services"].values()
            for v in s.get("volumes", ())
            if v["type"] == "bind"
        }
    )


def published(rendered: Rendered) -> dict[int, str]:
    """Every published port and the service that publishes it."""
    return {
        p["published"]: name
        for name, s in rendered.document["services"].items()
        for p in s.get("ports", ())
    }
