"""One `inv up` resolves the slot's configuration once: ./.env and the slot's env file are read
once, and the environment Compose runs with is computed once, through preflight, the volume,
`docker compose up`, the gate and `.env.sandbox` (the engine scripted, the gate's probes fake)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import compose, envfiles, gate, ports, slots, stack
from sandbox.gateprobes import Probes
from sandbox.images import build as images
from sandbox.runner import Result
from tests.unit.support.engine import FakeEngine
from tests.unit.support.factories import container

LAYOUT = slots.parse_layout("none", "own")  # no workers: the gate's worker list is empty


def counted(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], module: Any, name: str) -> None:
    real: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[f"{module.__name__}.{name}"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    root = tmp_path / "checkout"
    envfiles.write_all(root)
    (root / compose.IMAGES_ENV).write_text(images.render_env(True, root))
    return root


def test_one_up_reads_the_files_once_and_computes_the_environment_once(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine().install(monkeypatch)
    monkeypatch.setattr(ports, "can_bind", lambda host, port: True)
    monkeypatch.setattr(ports, "read_listeners", lambda wanted: {})
    running = [container(4, service) for service in LAYOUT.services]
    probes = Probes(
        http_get=lambda url, timeout: (200, "[]"),
        exec=lambda cmd, env: Result(tuple(cmd), 0),
        containers=lambda: running,
        pg=lambda host, port, timeout: (True, "accepting connections"),
    )
    monkeypatch.setattr(gate, "default_probes", lambda environ: probes)
    calls: Counter[str] = Counter()
    counted(monkeypatch, calls, compose, "dotenv_values")  # ./.env
    counted(monkeypatch, calls, envfiles, "dotenv_values")  # env/slot-N.env
    counted(monkeypatch, calls, compose, "resolve_environment")
    environ = {"PATH": "/usr/bin", "KTRDR_DB_PASSWORD": "s3cret"}

    target = compose.load_target(checkout, 4, environ)  # what `inv up` does, once
    result = stack.up(target, environ, layout=LAYOUT, timeout=5.0)

    assert result.started and result.gate is not None and result.gate.passed
    assert engine.ran("docker", "volume", "create")  # a new database: the volume step ran
    assert [c for c in engine.commands if "up" in c and "-d" in c]  # and `compose up`
    assert calls == {
        "sandbox.compose.dotenv_values": 1,
        # The slot's own env file once; preflight's collision check reads every slot's.
        "sandbox.envfiles.dotenv_values": 1 + len(slots.SLOTS),
        "sandbox.compose.resolve_environment": 1,
    }
    # And what it computed is what every command ran with.
    up = next(o for c, o in zip(engine.commands, engine.options, strict=True) if "-d" in c)
    assert up["env"]["KTRDR_DB_PASSWORD"] == "s3cret"
    assert up["env"]["KTRDR_DB_IMAGE"] == "ktrdr-sandbox/postgres-debian:15"
