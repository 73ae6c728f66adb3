"""Fixtures for the swarm suite: a three-node Docker-in-Docker swarm, started once.

tests/support/swarmnodes.py starts the nodes on a bridge network of their own (nothing published on
this machine), makes node 1 the manager and labels node 1 for the databases and node 2 for the
shared directory. The tests drive `inv ... --swarm` with DOCKER_HOST at the manager's engine.
When the swarm cannot start, every test fails with the reason; nothing skips.

KTRDR_SWARM_KEEP=1 leaves the nodes running afterwards (to look at them); otherwise they go,
and their volumes (the nodes' images and the registry's blobs) go too unless
KTRDR_SWARM_KEEP_IMAGES=1 (the nox session's default: the next run sends and pushes nothing).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox import ROOT, compose
from sandbox.errors import SandboxError
from sandbox.images import build as images
from sandbox.runner import Result, run
from sandbox.swarm import cluster as swarm_cluster
from sandbox.swarm import registry
from tests.support import swarmnodes

KEEP = os.environ.get("KTRDR_SWARM_KEEP", "") not in ("", "0")
KEEP_IMAGES = os.environ.get("KTRDR_SWARM_KEEP_IMAGES", "") not in ("", "0")
# The swarm's own engines hold nothing else: any slot numbers do. Ports are published on the
# nodes' bridge addresses only.
SLOTS = (1, 2)


@dataclass
class Figures:
    """What the suite measured, printed at the end (docs/designs/Sandbox/SWARM.md quotes them)."""

    values: dict[str, object] = field(default_factory=dict)

    def say(self) -> str:
        return json.dumps(self.values, indent=2, sort_keys=True)


@dataclass(frozen=True)
class Swarm:
    nodes: tuple[swarmnodes.Node, ...]
    base_env: dict[str, str]  # no DOCKER_HOST: this machine's engine
    figures: Figures

    @property
    def manager(self) -> swarmnodes.Node:
        return self.nodes[0]

    def env(self) -> dict[str, str]:
        """The client's environment: DOCKER_HOST at the manager, the registry by node name."""
        return {
            **self.base_env,
            "DOCKER_HOST": self.manager.docker_host,
            registry.REGISTRY_VARIABLE: swarmnodes.REGISTRY,
            swarm_cluster.NODE_ENGINE_VARIABLE: f"tcp://{{address}}:{swarmnodes.API_PORT}",
        }

    def inv(self, *args: str, **extra: str) -> Result:
        """`inv ARGS` against the swarm; `extra`: more environment variables."""
        inv = Path(sys.executable).parent / "inv"
        env = {**self.env(), **extra}
        return run([str(inv), "--search-root", str(ROOT), *args], env=env, cwd=ROOT, timeout=900)

    def on(self, node: swarmnodes.Node, *args: str) -> Result:
        return run(["docker", *args], env=node.env(self.base_env), timeout=60)


def _client_env(work: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KTRDR_", "COMPOSE_", "DOCKER_HOST", "DOCKER_CONTEXT"))
        and key != "SLOT_NUMBER"
    }
    env["DOCKER_CONFIG"] = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))
    # HOME names the shared directory (${HOME}/.ktrdr/shared in the env files): it is made on
    # node 2, never here. Locks are this suite's own: the machine's slots 1 and 2 are others'.
    env.update(
        HOME=str(work / "home"),
        KTRDR_LOCK_DIR=str(work / "locks"),
        KTRDR_SWARM_DIR=str(work),
        KTRDR_GATE_TIMEOUT="240",
    )
    env.update(compose.image_settings(ROOT))
    return env


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """Start the swarm, its registry, and push this checkout's images; fail loudly if not."""
    work = tmp_path_factory.mktemp("swarm")
    env = _client_env(work)
    if not compose.image_settings(ROOT):
        pytest.fail(
            "the swarm suite pushes this checkout's images: run `inv images --offline` first "
            "(./.env is missing)",
            pytrace=False,
        )
    figures = Figures()
    started = time.monotonic()
    try:
        up = swarmnodes.start(ROOT, env)
        figures.values["engines_answer_s"] = round(up.seconds_to_engines, 1)
        figures.values["swarm_ready_after_init_s"] = round(up.seconds_to_swarm, 1)
        nodes = up.nodes
        shared = f"{env['HOME']}/.ktrdr/shared"
        swarmnodes.make_dirs(
            nodes[1], [f"{shared}/{d}" for d in ("data", "models", "strategies")], env
        )
        manager_env = nodes[0].env(env)
        began = time.monotonic()
        registry.ensure_registry(manager_env, lambda name, detail: None)
        pushed = registry.push_images(images.engine_images(ROOT), swarmnodes.REGISTRY, manager_env)
        figures.values["registry_ready_s"] = round(
            time.monotonic() - began - pushed.send_seconds - pushed.push_seconds, 1
        )
        figures.values["images_sent_to_manager_mb"] = round(pushed.sent_bytes / 1e6)
        figures.values["images_send_s"] = round(pushed.send_seconds, 1)
        figures.values["images_push_s"] = round(pushed.push_seconds, 1)
    except SandboxError as error:
        swarmnodes.stop(env, keep_images=KEEP_IMAGES)
        pytest.fail(f"the swarm could not start: {error.message}\n{error.details}", pytrace=False)
    figures.values["setup_s"] = round(time.monotonic() - started, 1)
    yield Swarm(nodes, env, figures)
    figures.values["session_s"] = round(time.monotonic() - started, 1)
    print("\nswarm figures:\n" + figures.say())
    if not KEEP:
        swarmnodes.stop(env, keep_images=KEEP_IMAGES)
