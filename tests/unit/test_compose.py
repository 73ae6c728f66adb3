"""The compose invocation as data: exact argument lists and environments."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import compose, envfiles, stack
from sandbox.images import build as images


@pytest.fixture
def target_slot() -> int:
    return 2


def test_command_names_project_env_file_and_compose_file(target: compose.Target) -> None:
    root = str(target.root)
    assert compose.command(["docker", "compose"], target, "ps") == [
        "docker",
        "compose",
        "--project-name",
        "ktrdr-sandbox-2",
        "--project-directory",
        root,
        "--env-file",
        f"{root}/env/slot-2.env",
        "-f",
        f"{root}/docker-compose.sandbox.yml",
        "ps",
    ]


def test_stack_commands(target: compose.Target) -> None:
    prefix = compose.command(["docker-compose"], target)
    assert stack.up_command(["docker-compose"], target) == [*prefix, "up", "-d", "--remove-orphans"]
    assert stack.down_command(["docker-compose"], target, volumes=False) == [
        *prefix,
        "down",
        "--remove-orphans",
    ]
    assert stack.down_command(["docker-compose"], target, volumes=True)[-1] == "--volumes"
    assert compose.logs_command(["docker-compose"], target, "db", True, 50) == [
        *prefix,
        "logs",
        "--no-color",
        "--tail",
        "50",
        "--follow",
        "db",
    ]
    assert stack.psql_command(["docker-compose"], target, interactive=False) == [
        *prefix,
        "exec",
        "-T",
        "db",
        "psql",
        "-U",
        "ktrdr",
        "-d",
        "ktrdr",
    ]


def test_environment_drops_another_slots_exports(target: compose.Target) -> None:
    leaked = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "COMPOSE_PROJECT_NAME": "ktrdr-sandbox-7",
        "SLOT_NUMBER": "7",
        "KTRDR_API_PORT": "8007",
        "KTRDR_SHARED_DIR": "/elsewhere",
        "KTRDR_BIND_ADDR": "0.0.0.0",
        "KTRDR_DB_IMAGE": "my/postgres:16",
    }
    env = compose.environment(target, leaked)
    assert env["PATH"] == "/usr/bin"
    assert env["COMPOSE_PROJECT_NAME"] == "ktrdr-sandbox-2"
    assert env["SLOT_NUMBER"] == "2"
    assert env["KTRDR_API_PORT"] == "8002"
    assert env["KTRDR_SHARED_DIR"] == target.values["KTRDR_SHARED_DIR"] != "/elsewhere"
    # Machine-wide choices pass through.
    assert env["KTRDR_BIND_ADDR"] == "0.0.0.0"
    assert env["KTRDR_DB_IMAGE"] == "my/postgres:16"


def test_slot_zero_does_not_inherit_a_shared_dir(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    slot0 = compose.load_target(tmp_path, 0)
    env = compose.environment(slot0, {"KTRDR_SHARED_DIR": "/elsewhere"})
    assert "KTRDR_SHARED_DIR" not in env
    assert slot0.shared_dir == tmp_path


def test_images_env_is_read_and_shell_wins(target: compose.Target) -> None:
    (target.root / compose.IMAGES_ENV).write_text(images.render_env(True, target.root))
    # ./.env is read once, when the slot's configuration is made.
    assert "KTRDR_DB_IMAGE" not in compose.environment(target, {})
    target = compose.load_target(target.root, target.slot)
    env = compose.environment(target, {"KTRDR_JAEGER_IMAGE": "mine/jaeger:1"})
    assert env["KTRDR_DB_IMAGE"] == "ktrdr-sandbox/postgres-debian:15"
    assert env["KTRDR_GRAFANA_IMAGE"] == "ktrdr-sandbox/grafana-standin:1"
    assert env["KTRDR_JAEGER_IMAGE"] == "mine/jaeger:1"


def test_precedence_flag_over_env_file_over_default(target: compose.Target) -> None:
    values = {**target.values, "KTRDR_BIND_ADDR": "127.0.0.2"}
    assert compose.resolve("KTRDR_BIND_ADDR", "127.0.0.3", values, "127.0.0.1") == "127.0.0.3"
    assert compose.resolve("KTRDR_BIND_ADDR", None, values, "127.0.0.1") == "127.0.0.2"
    assert compose.resolve("KTRDR_BIND_ADDR", None, target.values, "127.0.0.1") == "127.0.0.1"
    # And through environment(): a CLI override beats the slot's env file.
    env = compose.environment(target, {}, overrides={"KTRDR_API_PORT": "9999"})
    assert env["KTRDR_API_PORT"] == "9999"


def test_offline_selection_never_uses_upstream_names(tmp_path: Path) -> None:
    offline = images.selection(True, tmp_path)
    upstream = set(images.UPSTREAM.values()) | {images.UPSTREAM_BASE}
    assert not upstream & set(offline.values())
    assert all(tag.startswith("ktrdr-sandbox/") for tag in offline.values())
    assert "standin" in offline["KTRDR_JAEGER_IMAGE"]
    assert "standin" in offline["KTRDR_GRAFANA_IMAGE"]


def test_offline_plan_builds_everything_locally(tmp_path: Path) -> None:
    steps = images.plan(tmp_path, offline=True, environ={}, buildkit=False)
    assert steps[0].cmd == ["bash", str(tmp_path / "scripts/build-debian-base.sh")]
    # The script tags ktrdr-sandbox/debian-base:<suite>: the suite it gets is the one named here.
    assert steps[0].env["KTRDR_DEBIAN_SUITE"] == images.DEBIAN_SUITE
    assert f"ktrdr-sandbox/debian-base:{images.DEBIAN_SUITE}" == images.OFFLINE_BASE
    assert not any(step.cmd[:2] == ["docker", "pull"] for step in steps)
    builds = [step for step in steps if step.cmd[:2] == ["docker", "build"]]
    assert [step.what for step in builds] == [
        "ktrdr-sandbox/postgres-debian:15",
        "ktrdr-sandbox/prometheus-debian:2",
        "ktrdr-sandbox/jaeger-standin:1",
        "ktrdr-sandbox/grafana-standin:1",
        images.app_image(tmp_path).tag,
    ]
    assert all("BASE_IMAGE=ktrdr-sandbox/debian-base:bookworm" in s.cmd for s in builds)
    assert all(s.env["DOCKER_BUILDKIT"] == "0" for s in builds)


def test_online_plan_pulls_upstream_and_builds_the_app(tmp_path: Path) -> None:
    steps = images.plan(tmp_path, offline=False, environ={}, buildkit=True)
    pulls = [step.cmd[2] for step in steps if step.cmd[:2] == ["docker", "pull"]]
    assert pulls == list(images.UPSTREAM.values())
    assert steps[-1].cmd == [
        "docker",
        "build",
        "--build-arg",
        "BASE_IMAGE=debian:bookworm-slim",
        "-f",
        str(tmp_path / "containers/images/reference-app/Dockerfile"),
        "-t",
        images.app_image(tmp_path).tag,
        str(tmp_path / "containers"),
    ]


def test_each_checkout_builds_its_own_app_tag(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    tags = {images.app_image(one).tag, images.app_image(two).tag}
    assert len(tags) == 2
    assert all(t.startswith("ktrdr-sandbox/reference-app:checkout-") for t in tags)
    assert images.app_image(one).tag == images.app_image(tmp_path / "one" / ".." / "one").tag
    assert images.selection(False, one)["KTRDR_APP_IMAGE"] == images.app_image(one).tag


def test_an_exported_shared_dir_wins_over_the_env_file(tmp_path: Path) -> None:
    envfiles.write_all(tmp_path)
    assert compose.load_target(tmp_path, 2).shared_dir == Path.home() / ".ktrdr" / "shared"
    exported = compose.load_target(tmp_path, 2, {"KTRDR_SHARED_DIR": "/srv/ktrdr"})
    assert exported.shared_dir == Path("/srv/ktrdr")
    assert compose.environment(exported, {})["KTRDR_SHARED_DIR"] == "/srv/ktrdr"
    # Empty is not a choice; other slot settings exported in the shell still do not leak.
    leaked = compose.load_target(tmp_path, 2, {"KTRDR_SHARED_DIR": "", "KTRDR_API_PORT": "1"})
    assert leaked.values == compose.load_target(tmp_path, 2).values
