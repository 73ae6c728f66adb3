"""What `sandbox.images.provenance` relies on, held against the real engine and Compose.

The module creates the database volume itself and keeps labels out of the compose file,
because Compose adopts such a volume silently but prompts "Recreate (data will be lost)?"
for a volume whose declared labels changed. A Compose upgrade that changes either behaviour
fails here, not in a user's database. Projects are named `faults-probe-*`, never a slot's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import ROOT, compose, slots
from sandbox.images import provenance
from sandbox.images.provenance import Expected, Kind
from sandbox.runner import Result, run
from tests.e2e.conftest import Sandbox

pytestmark = pytest.mark.docker

PLAIN = """services:
  s:
    image: {image}
    command: ["sleep", "60"]
    volumes: ["db-data:/data"]
volumes:
  db-data:
"""
LABELLED = PLAIN + "    labels:\n      io.ktrdr.sandbox.example: declared\n"


@pytest.fixture
def project(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name = f"faults-probe-{uuid.uuid4().hex[:8]}"
    try:
        yield name, tmp_path
    finally:
        for file in tmp_path.glob("*.yml"):
            run(
                ["docker", "compose", "-p", name, "-f", str(file), "down", "--volumes"],
                env=sandbox.env,
                cwd=tmp_path,
                timeout=120,
            )
        run(["docker", "volume", "rm", slots.db_volume(name)], env=sandbox.env, timeout=60)


def compose_file(where: Path, name: str, text: str) -> Path:
    image = compose.image_settings(ROOT).get(
        "KTRDR_APP_IMAGE", "ktrdr-sandbox/reference-app:latest"
    )
    path = where / name
    path.write_text(text.format(image=image))
    return path


def up_no_start(sandbox: Sandbox, name: str, file: Path, where: Path) -> Result:
    # stdin closed, as under `inv up`: a prompt takes its default instead of waiting.
    cmd = ["docker", "compose", "-p", name, "-f", str(file), "up", "--no-start"]
    return run(cmd, env=sandbox.env, cwd=where, timeout=120, input_text="")


def inspect(sandbox: Sandbox, name: str) -> provenance.VolumeInfo | None:
    volume = slots.db_volume(name)
    return provenance.parse_inspect(run(provenance.inspect_command(volume), env=sandbox.env).stdout)


def test_compose_adopts_a_volume_we_created_silently(
    sandbox: Sandbox, project: tuple[str, Path]
) -> None:
    name, where = project
    expected = Expected(7, ROOT, "this-host", "", "reference", "localdev")
    labels = expected.labels()
    assert run(provenance.create_volume_command(name, labels), env=sandbox.env).ok
    # Even a compose file that declares other labels: only a config-hash label is compared.
    for file in (compose_file(where, "plain.yml", PLAIN), compose_file(where, "l.yml", LABELLED)):
        result = up_no_start(sandbox, name, file, where)
        assert result.ok, result.tail()
        said = (result.stdout + result.stderr).lower()
        assert "already exists" not in said and "recreate" not in said, said
    info = inspect(sandbox, name)
    assert info is not None and info.labels.items() >= labels.items()  # ours kept as made
    assert provenance.compare(info, expected).kind is Kind.OURS
    other = Expected(7, ROOT, "this-host", "", "reference", "other")
    assert provenance.compare(info, other).kind is Kind.OTHER_PASSWORD


def test_declaring_labels_in_the_compose_file_would_prompt_to_recreate(
    sandbox: Sandbox, project: tuple[str, Path]
) -> None:
    name, where = project
    assert up_no_start(sandbox, name, compose_file(where, "plain.yml", PLAIN), where).ok
    before = inspect(sandbox, name)
    assert before is not None and not before.has_provenance
    assert provenance.compare(before, Expected(7, ROOT, "h", "", "r", "x")).kind is Kind.LEGACY
    result = up_no_start(sandbox, name, compose_file(where, "l.yml", LABELLED), where)
    assert "Recreate (data will be lost)?" in result.stdout + result.stderr
    after = inspect(sandbox, name)
    # Closed stdin answered No: the volume (and its config hash) is the old one.
    assert after is not None and after.labels == before.labels
