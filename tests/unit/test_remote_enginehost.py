"""Helpers for a remote engine's host, and getting images there: the parts that need no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import Exit, SandboxError
from sandbox.images import build as images
from sandbox.remote import enginehost
from sandbox.runner import run

DOTENV = (
    "KTRDR_DB_IMAGE=ktrdr-sandbox/postgres-debian:15\n"
    "KTRDR_APP_IMAGE=ktrdr-sandbox/reference-app:checkout-abc\n"
    "KTRDR_BASE_IMAGE=ktrdr-sandbox/debian-base:bookworm\n"
    "KTRDR_JAEGER_IMAGE=ktrdr-sandbox/jaeger-standin:1\n"
)


def test_a_remote_engine_gets_the_images_slots_run_not_the_build_base(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(DOTENV)
    assert images.engine_images(tmp_path) == [
        "ktrdr-sandbox/jaeger-standin:1",
        "ktrdr-sandbox/postgres-debian:15",
        "ktrdr-sandbox/reference-app:checkout-abc",
    ]
    # Without ./.env: the compose file's app image, the others are pulled upstream.
    assert images.engine_images(tmp_path / "nothing") == [images.APP_IMAGE]


def test_to_engine_refuses_a_local_engine(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        images.to_engine(tmp_path, {"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert caught.value.code is Exit.USAGE
    assert caught.value.message.startswith("--to-engine sends this machine's images to a remote")


def test_helper_image_is_the_app_image_compose_would_run(tmp_path: Path) -> None:
    assert enginehost.helper_image(tmp_path, {}) == images.APP_IMAGE
    (tmp_path / ".env").write_text(DOTENV)
    assert enginehost.helper_image(tmp_path, {}) == "ktrdr-sandbox/reference-app:checkout-abc"
    exported = {"KTRDR_APP_IMAGE": "mine:1"}
    assert enginehost.helper_image(tmp_path, exported) == "mine:1"


def test_probe_script_writes_and_removes_in_all_three(tmp_path: Path) -> None:
    for sub in ("data", "models", "strategies"):
        (tmp_path / sub).mkdir()
    cmd = enginehost.probe_files_command("/srv/shared", ".probe-1", "img:1", "write")
    assert "--network=none" in cmd
    assert "--mount=type=bind,source=/srv/shared,target=/probe" in cmd
    script = cmd[cmd.index("-c") + 1]
    assert run(["sh", "-c", script, str(tmp_path), ".probe-1", "write"]).ok
    assert all((tmp_path / s / ".probe-1").is_file() for s in ("data", "models", "strategies"))
    assert run(["sh", "-c", script, str(tmp_path), ".probe-1", "remove"]).ok
    assert not any((tmp_path / s / ".probe-1").exists() for s in ("data", "models", "strategies"))
    # A missing subdirectory is an error, never created.
    (tmp_path / "models").rmdir()
    assert not run(["sh", "-c", script, str(tmp_path), ".probe-1", "write"]).ok
    assert not (tmp_path / "models").exists()
