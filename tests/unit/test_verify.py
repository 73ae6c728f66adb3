"""`inv verify`'s comparisons on fabricated containers and mounts, plus the shared-dir probe."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandbox import COMPOSE_FILE, compose, docker, engine, slots, verify
from sandbox.docker import PublishedPort
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.runner import execute as real_run
from sandbox.verify import Mount
from tests.unit.support.engine import FakeEngine


def target_for(root: Path, slot: int, **extra: str) -> compose.Target:
    base = compose.load_target(root, slot)
    return compose.Target(slot, root, {**base.values, **extra})


def stack(slot: int, state: docker.ContainerState = "running") -> list[docker.Container]:
    """A slot's containers publishing exactly what its env file says."""
    project = slots.project_name(slot)
    ports: dict[str, list[PublishedPort]] = {}
    for spec in slots.PORTS:
        host = spec.host_port(slot)
        inner = spec.container_port if spec.container_port is not None else host
        ports.setdefault(spec.service, []).append(PublishedPort("127.0.0.1", host, inner))
    return [
        docker.Container(
            id=f"{slot:02d}{service}" + "0" * 50,
            name=f"{project}-{service}-1",
            project=project,
            service=service,
            state=state,
            status="Up 1 minute",
            working_dir="/checkout",
            ports=tuple(ports.get(service, [])),
        )
        for service in slots.SERVICES
    ]


def db_of(containers: Sequence[docker.Container], slot: int) -> docker.Container:
    return next(c for c in containers if c.slot == slot and c.service == "db")


def volume(name: str) -> Mount:
    return Mount(
        "volume", name, f"/var/lib/docker/volumes/{name}/_data", "/var/lib/postgresql/data"
    )


def own_mounts(containers: Sequence[docker.Container]) -> dict[str, list[Mount]]:
    return {
        c.id: [volume(f"{c.project}_db-data")]
        for c in containers
        if c.service == "db" and c.slot is not None
    }


def replace(
    containers: list[docker.Container], service: str, **changes: Any
) -> list[docker.Container]:
    return [dataclasses.replace(c, **changes) if c.service == service else c for c in containers]


# ----------------------------------------------------------------------------- mounts


def test_parse_mounts() -> None:
    mounts = [
        {
            "Type": "volume",
            "Name": "ktrdr-sandbox-1_db-data",
            "Source": "/var/lib/docker/volumes/ktrdr-sandbox-1_db-data/_data",
            "Destination": "/var/lib/postgresql/data",
            "Driver": "local",
            "RW": True,
        },
        {"Type": "bind", "Source": "/home/x/data", "Destination": "/app/data"},
    ]
    output = f"abc {json.dumps(mounts)}\ndef null\nghi not-json\n\n"
    parsed = verify.parse_mounts(output)
    assert parsed["abc"] == [
        volume("ktrdr-sandbox-1_db-data"),
        Mount("bind", "", "/home/x/data", "/app/data"),
    ]
    assert "def" not in parsed and "ghi" not in parsed


def test_inspect_mounts_command_is_one_call_for_all_ids() -> None:
    assert verify.inspect_mounts_command(["a", "b"]) == [
        "docker",
        "inspect",
        "--format",
        "{{.Id}} {{json .Mounts}}",
        "a",
        "b",
    ]


# ----------------------------------------------------------------------------- own-database


def test_own_database_passes_for_separate_slots() -> None:
    containers = [*stack(1), *stack(2)]
    check = verify.check_own_database(1, containers, own_mounts(containers))
    assert check.passed, check.detail
    assert check.name == "own-database"
    assert "ktrdr-sandbox-1_db-data" in check.detail


def test_own_database_missing_or_stopped() -> None:
    assert verify.check_own_database(3, stack(1), {}).detail == (
        "no db container: run `inv up --slot=3`"
    )
    stopped = replace(stack(1), "db", state="exited")
    check = verify.check_own_database(1, stopped, own_mounts(stopped))
    assert not check.passed and check.detail.endswith("is exited, not running")


def test_own_database_wrong_volume() -> None:
    containers = stack(1)
    mounts = {db_of(containers, 1).id: [volume("ktrdr-sandbox_db-data")]}
    check = verify.check_own_database(1, containers, mounts)
    assert not check.passed
    assert check.detail == (
        "data volume should be ktrdr-sandbox-1_db-data; mounts ktrdr-sandbox_db-data"
    )
    anonymous = {
        db_of(containers, 1).id: [Mount("bind", "", "/srv/pg", "/var/lib/postgresql/data")]
    }
    assert "no named volume" in verify.check_own_database(1, containers, anonymous).detail


def test_own_database_volume_shared_with_another_slot() -> None:
    containers = [*stack(1), *stack(2)]
    mounts = own_mounts(containers)
    mounts[db_of(containers, 2).id].append(volume("ktrdr-sandbox-1_db-data"))
    check = verify.check_own_database(1, containers, mounts)
    assert not check.passed
    assert check.detail == "volume ktrdr-sandbox-1_db-data is also mounted by slot 2's db"


def test_own_database_not_inspected() -> None:
    containers = stack(1)
    assert "could not inspect" in verify.check_own_database(1, containers, {}).detail


# ----------------------------------------------------------------------------- ports


def test_ports_pass(root: Path) -> None:
    check = verify.check_ports(target_for(root, 1), [*stack(1), *stack(2)])
    assert check.passed, check.detail
    assert check.detail == "11 ports as in slot-1.env, none published by another slot"


def test_ports_differ_from_env_file(root: Path) -> None:
    # A stack started with slot 1's file, checked against an edited file.
    check = verify.check_ports(target_for(root, 1, KTRDR_API_PORT="8101"), stack(1))
    assert not check.passed
    assert check.detail == "KTRDR_API_PORT=8101 is not backend's port 8000"


def test_worker_container_port_must_equal_host_port(root: Path) -> None:
    containers = stack(1)
    containers = replace(
        containers, "training-worker-1", ports=(PublishedPort("127.0.0.1", 5012, 5005),)
    )
    check = verify.check_ports(target_for(root, 1), containers)
    assert check.detail == "KTRDR_WORKER_PORT_3=5012 is not training-worker-1's port 5012"


def test_ports_collide_with_another_running_slot(root: Path) -> None:
    other = replace(stack(2), "grafana", ports=(PublishedPort("0.0.0.0", 3001, 3000),))
    check = verify.check_ports(target_for(root, 1), [*stack(1), *other])
    assert not check.passed
    assert check.detail == "host port 3001 is also published by ktrdr-sandbox-2/grafana"
    stopped = replace(other, "grafana", state="exited")
    assert verify.check_ports(target_for(root, 1), [*stack(1), *stopped]).passed


def test_ports_of_a_stopped_slot(root: Path) -> None:
    check = verify.check_ports(target_for(root, 1), stack(1, state="exited"))
    assert not check.passed
    assert check.detail.startswith("not running: db, backend, jaeger")


# ----------------------------------------------------------------------------- shared-dir, health


def test_check_shared_dir() -> None:
    ok = verify.check_shared_dir("/app/data/p", {"backend": None, "backtest-worker-1": None})
    assert ok.passed and ok.detail == "/app/data/p visible in backend, backtest-worker-1"
    bad = verify.check_shared_dir("/app/data/p", {"backend": None, "training-worker-2": "nope"})
    assert not bad.passed and bad.detail == "/app/data/p not visible in training-worker-2: nope"
    assert not verify.check_shared_dir("/app/data/p", {}).passed


def test_exec_seen() -> None:
    assert verify.exec_seen(Result(("x",), 0)) is None
    assert verify.exec_seen(Result(("x",), 1)) == (
        "not under /app/data, /app/models, /app/strategies"
    )
    assert verify.exec_seen(Result(("x",), 1, "", 'service "backend" is not running\n')) == (
        'service "backend" is not running'
    )


def test_check_health() -> None:
    assert verify.check_health(200, '{"status": "ok"}').passed
    assert verify.check_health(None, "connection refused").detail == "connection refused"


def test_shared_dir_probe_is_seen_and_always_removed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEngine().install(monkeypatch)
    shared = tmp_path / "shared"
    for sub in ("data", "models", "strategies"):
        (shared / sub).mkdir(parents=True)
    target = target_for(root, 1, KTRDR_SHARED_DIR=str(shared))
    containers = replace(stack(1), "training-worker-2", state="exited")

    def look(args: tuple[str, ...]) -> Result:
        wanted = [arg.removeprefix("/app/") for arg in args if arg.startswith("/app/")]
        assert len(wanted) == 3
        present = all((shared / rel).is_file() for rel in wanted)  # probes exist while we look
        return Result(args, 0 if present else 1)

    fake.on(answer=look)  # every command
    check = verify.shared_dir(target, ["docker", "compose"], {}, containers)
    assert all(o["env"]["COMPOSE_PROJECT_NAME"] == "ktrdr-sandbox-1" for o in fake.options)
    commands = [list(c) for c in fake.commands]
    assert not check.passed
    assert check.detail.endswith("not visible in training-worker-2: not running")
    assert len(commands) == 4  # backend and the three running workers
    name = commands[0][-1].removeprefix("/app/strategies/")
    assert name.startswith(".ktrdr-verify-1-")
    services = ["backend", "backtest-worker-1", "backtest-worker-2", "training-worker-1"]
    probe = ["test", "-f", f"/app/data/{name}", "-a", "-f", f"/app/models/{name}"]
    probe += ["-a", "-f", f"/app/strategies/{name}"]
    assert sorted(commands) == sorted(
        compose.command(["docker", "compose"], target, "exec", "-T", s, *probe) for s in services
    )
    for sub in ("data", "models", "strategies"):
        assert list((shared / sub).iterdir()) == []

    def interrupted(args: tuple[str, ...]) -> Result:
        raise KeyboardInterrupt

    fake.on(answer=interrupted)
    with pytest.raises(KeyboardInterrupt):
        verify.shared_dir(target, ["docker", "compose"], {}, stack(1))
    for sub in ("data", "models", "strategies"):
        assert list((shared / sub).iterdir()) == []  # removed even then


def test_shared_dir_probe_on_a_remote_engine_is_written_there(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper containers' scripts run for real, on a directory standing for the remote
    host's; the slot's shared path (a client path) never appears on the client."""
    client_path = tmp_path / "client-home" / "shared"
    remote_disk = tmp_path / "remote-host"
    remote_dir = remote_disk / str(client_path).lstrip("/")
    for sub in ("data", "models", "strategies"):
        (remote_dir / sub).mkdir(parents=True)
    target = target_for(root, 1, KTRDR_SHARED_DIR=str(client_path))
    helpers: list[str] = []

    def on_remote(args: tuple[str, ...], options: dict[str, Any]) -> None:
        assert options["env"]["DOCKER_HOST"] == "tcp://127.0.0.2:2375"

    def helper(args: tuple[str, ...]) -> Result:
        script_at = args.index("-c") + 1
        helpers.append(args[-1] if args[-1] in ("write", "remove") else "check")
        return real_run(["sh", "-c", args[script_at], str(remote_dir), *args[script_at + 2 :]])

    def look(args: tuple[str, ...]) -> Result:
        wanted = [a.removeprefix("/app/") for a in args if a.startswith("/app/")]
        return Result(args, 0 if all((remote_dir / w).is_file() for w in wanted) else 1)

    fake = FakeEngine().install(monkeypatch)
    fake.each = on_remote
    fake.on(answer=look)  # every command but the helper containers
    fake.on("docker", "run", answer=helper)
    where = engine.resolve({"DOCKER_HOST": "tcp://127.0.0.2:2375"}, None)
    env = {"DOCKER_HOST": "tcp://127.0.0.2:2375"}
    check = verify.shared_dir(target, ["docker", "compose"], env, stack(1), where)
    assert check.passed, check.detail
    assert helpers == ["check", "write", "remove"]
    for sub in ("data", "models", "strategies"):
        assert list((remote_dir / sub).iterdir()) == []
    assert not client_path.parent.exists()
    # Missing there: says so, and writes nothing.
    (remote_dir / "models").rmdir()
    check = verify.shared_dir(target, ["docker", "compose"], env, stack(1), where)
    assert not check.passed
    assert check.detail == f"{client_path} on 127.0.0.2 lacks models/: run `inv init-shared`"


def test_shared_dir_missing(root: Path, tmp_path: Path) -> None:
    target = target_for(root, 1, KTRDR_SHARED_DIR=str(tmp_path / "nowhere"))
    check = verify.shared_dir(target, ["docker", "compose"], {}, stack(1))
    assert not check.passed and "inv init-shared" in check.detail


def test_verify_uses_one_ps_and_one_inspect(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEngine().install(monkeypatch)
    containers = [*stack(1), *stack(2)]
    shared = tmp_path / "shared"
    for sub in ("data", "models", "strategies"):
        (shared / sub).mkdir(parents=True)
    ps_calls: list[object] = []

    def fake_containers(environ: object = None) -> list[docker.Container]:
        ps_calls.append(environ)
        return containers

    def mounts(args: tuple[str, ...]) -> Result:
        lines = [
            f"{c.id} {json.dumps([{'Type': 'volume', 'Name': f'{c.project}_db-data'}])}"
            for c in containers
            if c.id in args
        ]
        return Result(args, 0, "\n".join(lines) + "\n")

    urls: list[str] = []

    def fake_get(url: str, timeout: float) -> tuple[int | None, str]:
        urls.append(url)
        return 200, "{}"

    monkeypatch.setattr(docker, "containers", fake_containers)
    fake.on(answer=Result((), 0))  # every other command succeeds, saying nothing
    fake.on("docker", "inspect", answer=mounts)
    targets = [target_for(root, s, KTRDR_SHARED_DIR=str(shared)) for s in (1, 2)]
    reports = verify.verify(targets, ["docker", "compose"], {}, http_get=fake_get)
    assert [r.slot for r in reports] == [1, 2]
    for report in reports:
        assert [c.name for c in report.checks] == ["health", "own-database", "ports", "shared-dir"]
        assert report.passed, report.checks
    assert len(ps_calls) == 1
    assert len(fake.ran("docker", "inspect")) == 1
    assert urls == ["http://127.0.0.1:8001/api/v1/health", "http://127.0.0.1:8002/api/v1/health"]


def test_report_passed() -> None:
    good = verify.VerifyCheck("health", True, "HTTP 200")
    bad = verify.VerifyCheck("ports", False, "x")
    assert verify.VerifyReport(1, [good]).passed
    assert not verify.VerifyReport(1, [good, bad]).passed


def test_another_checkouts_paused_slot_is_refused_not_thawed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifying thaws a paused slot; another (existing) checkout's is not this one's to thaw."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / COMPOSE_FILE).write_text("services: {}\n")
    fake = FakeEngine().install(monkeypatch)
    paused = [dataclasses.replace(c, working_dir=str(elsewhere)) for c in stack(1, state="paused")]
    monkeypatch.setattr(docker, "containers", lambda environ=None: paused)
    fake.on(answer=Result((), 0))
    with pytest.raises(SandboxError) as raised:
        verify.verify(
            [target_for(root, 1)], ["docker", "compose"], {}, http_get=lambda u, t: (200, "")
        )
    assert raised.value.code is Exit.OTHER_CHECKOUT
    assert fake.ran("docker", "unpause") == []
