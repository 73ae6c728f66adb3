"""Slots that run a checkout's code (`inv up --source=PATH`), driven through `inv`.

Two copies of the KTRDR-shaped fixture (containers/fixtures/ktrdr-fixture: our own app with
KTRDR's layout, not KTRDR) whose code differs run side by side, through exactly the path a real
KTRDR checkout takes: its dependency image from uv.lock, Alembic migrations as a gate row,
uvicorn --reload on the read-only mounted package, `.env.sandbox` in the checkout. Then the
reference app from a source (its own reloader), and the bad inputs.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import ROOT, slots
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
REFERENCE = ROOT / "containers" / "app"
# Seconds. A reload takes 1-4 s on an idle machine; the margin is for a loaded one (CI runs
# several slots' healthchecks at once on 2 cores).
RELOAD_WITHIN = 60.0


def health(slot: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert isinstance(body, dict)
    return body


def version_after(slot: int, wanted: str, seconds: float = RELOAD_WITHIN) -> float:
    """Seconds until the slot's health reports `wanted`; fails the test past `seconds`."""
    start = time.monotonic()
    seen: object = None
    while time.monotonic() - start < seconds:
        try:
            seen = health(slot).get("version")
        except OSError as exc:  # the backend restarting: not an answer yet
            seen = exc
        if seen == wanted:
            return time.monotonic() - start
        time.sleep(0.25)
    pytest.fail(f"slot {slot} still reports {seen!r}, not {wanted!r}, after {seconds}s")


def started_at(slot: int, env: dict[str, str]) -> dict[str, str]:
    """Each container of the slot with the moment it started: a restart changes it."""
    ids = [c.id for c in project_containers(slot)]
    result = run(
        ["docker", "inspect", "--format", "{{.Name}} {{.State.StartedAt}}", *ids],
        env=env,
        timeout=60,
    )
    assert result.ok, result.tail()
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"


def copy_fixture(where: Path, version: str) -> Path:
    checkout = where / f"ktrdr-{version}"
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__", ".env.sandbox"))
    (checkout / "ktrdr" / "version.py").write_text(f'VERSION = "{version}"\n')
    return checkout


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    where = tmp_path_factory.mktemp("branches")
    return {A: copy_fixture(where, "branch-a"), B: copy_fixture(where, "branch-b")}


@pytest.fixture(scope="module")
def branches(sandbox: Sandbox, checkouts: dict[int, Path]) -> Iterator[dict[int, Result]]:
    claim_slots((A, B), sandbox.env)
    results: dict[int, Result] = {}

    def start(slot: int) -> None:
        results[slot] = sandbox.inv("up", f"--slot={slot}", f"--source={checkouts[slot]}")

    # The first `up` builds (or reuses) the dependency image; the second starts alongside.
    start(A)
    other = threading.Thread(target=start, args=(B,))
    try:
        other.start()
        other.join()
        yield results
    finally:
        for slot in (A, B):
            sandbox.inv("down", f"--slot={slot}", "--volumes")


def test_two_branches_run_their_own_code(branches: dict[int, Result]) -> None:
    for slot in (A, B):
        assert_ok(branches[slot])
        assert "Migrations (alembic upgrade head)" in branches[slot].stdout or (
            "migrations passed" in branches[slot].stdout
        )
    assert health(A)["version"] == "branch-a"
    assert health(B)["version"] == "branch-b"


def test_the_fixture_serves_metrics_like_ktrdr(branches: dict[int, Result]) -> None:
    """A scrape target of a fixture slot is up (shared observability scrapes these)."""
    ports = slots.ports(A)
    backend = f"http://127.0.0.1:{ports['KTRDR_API_PORT']}/metrics"
    worker = f"http://127.0.0.1:{ports['KTRDR_WORKER_PORT_1']}/metrics"
    with urllib.request.urlopen(backend, timeout=5) as response:
        text = response.read().decode()
    assert 'ktrdr_fixture_info{version="branch-a"} 1' in text
    assert "ktrdr_fixture_workers_registered 4" in text
    with urllib.request.urlopen(worker, timeout=5) as response:
        assert response.read().decode() == "ktrdr_fixture_worker_registered 1\n"


def test_each_slot_ran_its_migration_in_its_own_database(
    branches: dict[int, Result], sandbox: Sandbox
) -> None:
    for slot in (A, B):
        assert health(slot)["schema"] == "0001_fixture_operations"
        result = sandbox.inv(
            "psql", f"--slot={slot}", input_text="SELECT version_num FROM alembic_version;\n"
        )
        assert_ok(result)
        assert "0001_fixture_operations" in result.stdout


def test_status_shows_each_slot_source(branches: dict[int, Result], sandbox: Sandbox) -> None:
    result = sandbox.inv("status")
    assert_ok(result)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1].isdigit()}
    for slot, name in ((A, "branch-a"), (B, "branch-b")):
        assert "ktrdr: " in rows[str(slot)] and name in rows[str(slot)]
        assert "no torch" in rows[str(slot)]


def test_env_sandbox_is_written_into_each_checkout(
    branches: dict[int, Result], checkouts: dict[int, Path]
) -> None:
    for slot in (A, B):
        text = (checkouts[slot] / ".env.sandbox").read_text()
        assert f"KTRDR_API_PORT={slots.ports(slot)['KTRDR_API_PORT']}" in text
        assert f"COMPOSE_PROJECT_NAME={slots.project_name(slot)}" in text


def test_an_edit_reloads_only_its_own_slot(
    branches: dict[int, Result], checkouts: dict[int, Path], sandbox: Sandbox
) -> None:
    before = started_at(B, sandbox.env)
    (checkouts[A] / "ktrdr" / "version.py").write_text('VERSION = "branch-a-edited"\n')
    took = version_after(A, "branch-a-edited")
    print(f"slot {A} reloaded the edit in {took:.1f}s")
    assert health(B)["version"] == "branch-b"
    assert started_at(B, sandbox.env) == before


def test_another_source_is_refused_on_a_running_slot(
    branches: dict[int, Result], checkouts: dict[int, Path], sandbox: Sandbox
) -> None:
    result = sandbox.inv("up", f"--slot={A}", f"--source={checkouts[B]}")
    assert result.returncode == 11
    [line] = error_lines(result)
    assert f"slot {A} runs ktrdr: {checkouts[A]}" in line
    assert f"`inv down --slot={A}` first" in line
    assert health(A)["version"] == "branch-a-edited"


def test_down_with_volumes_removes_env_sandbox_and_nothing_else(
    branches: dict[int, Result], checkouts: dict[int, Path], sandbox: Sandbox
) -> None:
    files_before = sorted(p.relative_to(checkouts[B]) for p in checkouts[B].rglob("*"))
    assert_ok(sandbox.inv("down", f"--slot={B}"))
    assert (checkouts[B] / ".env.sandbox").exists()  # the slot's database is kept: so is this
    assert_ok(sandbox.inv("down", f"--slot={B}", "--volumes"))
    assert not (checkouts[B] / ".env.sandbox").exists()
    files_after = sorted(p.relative_to(checkouts[B]) for p in checkouts[B].rglob("*"))
    assert files_after == [f for f in files_before if f.name != ".env.sandbox"]


# --- the reference app from a source: its own reloader ---------------------------------------


def test_the_reference_app_reloads_from_a_source(
    branches: dict[int, Result], sandbox: Sandbox, tmp_path: Path
) -> None:
    # Slot B is free again after the test above.
    source = tmp_path / "reference"
    shutil.copytree(REFERENCE, source, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    try:
        assert_ok(sandbox.inv("up", f"--slot={B}", f"--source={source}"))
        init = source / "ktrdr_reference" / "__init__.py"
        init.write_text(init.read_text().replace('__version__ = "', '__version__ = "edited-'))
        took = version_after(B, f"edited-{health(B)['version']}")
        print(f"reference app reloaded the edit in {took:.1f}s")
        assert not (source / ".env.sandbox").exists()  # only KTRDR's CLI reads it
    finally:
        sandbox.inv("down", f"--slot={B}", "--volumes")


# --- bad input: one line, a non-zero exit, nothing created -----------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is not an app checkout"),
        (
            lambda p: (
                (shutil.copytree(FIXTURE, p / "nolock"), (p / "nolock" / "uv.lock").unlink())
                and p / "nolock"
            ),
            "looks like a KTRDR checkout but has no uv.lock",
        ),
    ],
    ids=["missing", "not-a-checkout", "no-uv-lock"],
)
def test_a_bad_source_is_one_line_and_creates_nothing(
    sandbox: Sandbox, tmp_path: Path, make: object, expected: str
) -> None:
    claim_slots((B,), sandbox.env)
    assert callable(make)
    path = make(tmp_path)
    result = sandbox.inv("up", f"--slot={B}", f"--source={path}")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert expected in line
    assert "Traceback" not in result.stderr + result.stdout
    assert project_containers(B) == []


def test_a_failed_migration_fails_up_fast_with_its_output(sandbox: Sandbox, tmp_path: Path) -> None:
    claim_slots((B,), sandbox.env)
    checkout = copy_fixture(tmp_path, "broken")
    migration = next((checkout / "alembic" / "versions").glob("0001_*.py"))
    migration.write_text(
        migration.read_text().replace(
            "def upgrade() -> None:",
            "def upgrade() -> None:\n"
            "    raise RuntimeError('this migration is broken on purpose')\n\n\n"
            "def _unused() -> None:",
        )
    )
    try:
        started = time.monotonic()
        result = sandbox.inv("up", f"--slot={B}", f"--source={checkout}", "--timeout=240")
        took = time.monotonic() - started
        assert result.returncode == 1
        assert "this migration is broken on purpose" in result.stdout
        [line] = error_lines(result)
        assert f"slot {B} did not become ready" in line
        assert took < 200, f"failed after {took:.0f}s: the gate should stop at the migration"
        # The next `up` is not tripped: the slot is there to fix, or to take down.
        status = sandbox.inv("status", f"--slot={B}")
        assert_ok(status)
        assert f"ktrdr: {checkout}" in status.stdout
    finally:
        sandbox.inv("down", f"--slot={B}", "--volumes")
