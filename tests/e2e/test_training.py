"""A KTRDR-shaped slot does the app's work with the defaults: train, then backtest.

The KTRDR-shaped fixture (our own app, not KTRDR) needs its `ml` extra to train, as KTRDR
does: its training worker imports a package only that extra installs and writes a model file
into the models directory; a backtest worker reads it. Driven through `inv` as a user would:
the default `inv up --source`, an exported shared directory with `--models=slot`, a worker
that raises at import, and ten builds of one lock at once.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import ROOT, slots
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
STRATEGY = "fixture_strategy"
INV = str(Path(sys.executable).parent / "inv")
CRASH_WITHIN = 15.0  # seconds from `compose up` to the failed gate, for a worker that died


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"


def copy_fixture(where: Path, name: str) -> Path:
    checkout = where / name
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__", ".env.sandbox"))
    return checkout


def post(slot: int, path: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    port = slots.ports(slot)["KTRDR_API_PORT"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def train(slot: int) -> dict[str, Any]:
    status, body = post(slot, "trainings", {"strategy": STRATEGY})
    assert status == 200, body
    return body


def backtest(slot: int, model_path: str) -> dict[str, Any]:
    status, body = post(slot, "backtests", {"model_path": model_path})
    assert status == 200, body
    return body


def inv(sandbox: Sandbox, *args: str, **extra_env: str) -> Result:
    cmd = [INV, "--search-root", str(ROOT), *args]
    return run(cmd, env={**sandbox.env, **extra_env}, cwd=ROOT, timeout=900)


def status_entry(sandbox: Sandbox, slot: int) -> dict[str, Any]:
    result = sandbox.inv("status", f"--slot={slot}", "--json")
    assert_ok(result)
    entries = json.loads(result.stdout)["slots"]
    assert [e["slot"] for e in entries] == [slot]
    entry: dict[str, Any] = entries[0]
    return entry


@pytest.fixture(scope="module")
def sandbox(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """The session's sandbox with a HOME of this module's own: its shared directory starts
    empty, as on a new machine (other modules' slots have seeded the session's)."""
    home = tmp_path_factory.mktemp("train-home")
    return Sandbox(home, {**sandbox.env, "HOME": str(home)})


@pytest.fixture(scope="module")
def default_slot(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    """Slot A runs a fixture checkout with no flag but --source."""
    claim_slots((A, B), sandbox.env)
    checkout = copy_fixture(tmp_path_factory.mktemp("train"), "ktrdr-train")
    try:
        yield sandbox.inv("up", f"--slot={A}", f"--source={checkout}")
    finally:
        sandbox.inv("down", f"--slot={A}", "--volumes")


def test_the_default_up_installs_the_extra_and_seeds_the_strategies(
    default_slot: Result, sandbox: Sandbox
) -> None:
    assert_ok(default_slot)
    out = default_slot.stdout
    assert "extras: ml" in out
    # The fixture's lock has no torch: no torch choice applies, and none is installed.
    assert "torch: none" in out
    assert re.search(r"seeded: 1 file\(s\) of strategies from .*ktrdr-train", out), out
    assert (sandbox.shared / "strategies" / f"{STRATEGY}.yaml").is_file()
    assert f"models: {sandbox.shared / 'models'} (shared by every slot" in out


def test_a_default_slot_trains_then_backtests_the_model(
    default_slot: Result, sandbox: Sandbox
) -> None:
    assert_ok(default_slot)
    trained = train(A)
    assert trained["worker_id"].startswith("training-worker-")
    model = sandbox.shared / trained["model_path"]
    assert model.is_file(), f"the model was not written into the shared models/: {model}"
    result = backtest(A, trained["model_path"])
    assert result["worker_id"].startswith("backtest-worker-")
    assert result["version"] == trained["version"]
    assert result["trades"] > 0
    # `latest` names the newest version, as KTRDR's `*_latest` does.
    again = train(A)
    latest = backtest(A, f"models/{STRATEGY}/latest/model.toml")
    assert latest["version"] == again["version"] == trained["version"] + 1


def test_status_shows_the_shared_directory_of_each_slot(
    default_slot: Result, sandbox: Sandbox
) -> None:
    assert_ok(default_slot)
    entry = status_entry(sandbox, A)
    assert entry["shared_dir"] == str(sandbox.shared)
    assert entry["models_dir"] == str(sandbox.shared / "models")
    table = sandbox.inv("status", f"--slot={A}")
    assert_ok(table)
    assert "~/.ktrdr/shared" in table.stdout  # HOME is the suite's own


def test_an_exported_shared_dir_is_used_and_models_slot_keeps_them_apart(
    default_slot: Result, sandbox: Sandbox, tmp_path: Path
) -> None:
    assert_ok(default_slot)
    other = tmp_path / "team-shared"
    checkout = copy_fixture(tmp_path, "ktrdr-own-models")
    up = inv(
        sandbox,
        "up",
        f"--slot={B}",
        f"--source={checkout}",
        "--models=slot",
        KTRDR_SHARED_DIR=str(other),
    )
    try:
        assert_ok(up)
        own = other / "slots" / f"slot-{B}" / "models"
        assert f"models: {own} (this slot's own" in up.stdout
        assert (other / "strategies" / f"{STRATEGY}.yaml").is_file()
        entry = status_entry(sandbox, B)
        assert entry["shared_dir"] == str(other)
        assert entry["models_dir"] == str(own)
        written = (checkout / ".env.sandbox").read_text()
        assert f"KTRDR_MODELS_DIR={own}\n" in written
        assert f"KTRDR_SHARED_DIR={other}\n" in written
        # Both slots train the same strategy: each `latest` is its own slot's model.
        mine = train(B)
        assert mine["version"] == 1
        assert (own / mine["model_path"].removeprefix("models/")).is_file()
        train(A)
        theirs = train(A)  # slot A's latest is at least its version 2 now
        assert backtest(B, f"models/{STRATEGY}/latest/model.toml")["version"] == 1
        assert backtest(A, f"models/{STRATEGY}/latest/model.toml")["version"] == (theirs["version"])
        assert sorted(p.name for p in (own / STRATEGY).glob("v*")) == ["v1"]
        assert not (sandbox.shared / "slots").exists()
    finally:
        inv(sandbox, "down", f"--slot={B}", "--volumes", KTRDR_SHARED_DIR=str(other))


def broken_up(sandbox: Sandbox, tmp_path: Path, module: str, error: str) -> str:
    """`inv up --source` of a fixture copy whose `module` (a path under the checkout) raises
    `error` at import: it must fail within CRASH_WITHIN seconds of its gate. All it said."""
    claim_slots((B,), sandbox.env)
    broken = copy_fixture(tmp_path, "ktrdr-broken")
    path = broken / module
    path.write_text(path.read_text() + f"\nraise {error}\n")
    try:
        result = sandbox.inv("up", f"--slot={B}", f"--source={broken}")
    finally:
        sandbox.inv("down", f"--slot={B}", "--volumes")
    said = result.stdout + result.stderr
    assert not result.ok, said[-3000:]
    assert module in said  # the frame it died in
    gate = re.search(r"is not ready after ([0-9.]+)s", said)
    assert gate is not None, said[-3000:]
    assert float(gate.group(1)) <= CRASH_WITHIN
    assert "Traceback" not in result.stderr  # ours: the worker's is in its log lines
    return said


def test_a_worker_that_raises_at_import_fails_up_at_once_quoting_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    error = 'RuntimeError("broken on purpose")'
    said = broken_up(sandbox, tmp_path, "ktrdr/training/training_worker.py", error)
    # A worker under a reloader (--reload=workers) "died"; without one its container
    # exited: either way its own error line is quoted.
    died = r"(process died|container exited \(Exited \(1\)[^)]*\))"
    assert re.search(died + r": RuntimeError: broken on purpose", said), said[-3000:]


def test_a_backend_that_raises_at_import_dies_under_its_reloader_and_fails_up(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    error = 'KeyError("backend broken on purpose")'
    said = broken_up(sandbox, tmp_path, "ktrdr/api/main.py", error)
    # uvicorn --reload keeps the backend's container running: only its log says.
    assert "process died: KeyError: 'backend broken on purpose'" in said, said[-3000:]


def _images(sandbox: Sandbox, checkout: Path) -> Result:
    return sandbox.inv("images", f"--source={checkout}")


def test_ten_commands_on_one_new_lock_build_its_image_once(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    checkout = copy_fixture(tmp_path, "ktrdr-lock")
    # A lock this machine has never built: its own image, not the suite's cached one.
    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write(f"# e2e {uuid.uuid4().hex}\n")
    results: list[Result] = []
    threads = [
        threading.Thread(target=lambda: results.append(_images(sandbox, checkout)))
        for _ in range(10)
    ]
    tags: set[str] = set()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            assert_ok(result)
        outputs = [r.stdout for r in results]
        tags = {m for out in outputs for m in re.findall(r"ktrdr-sandbox/uv-app-deps:\w+", out)}
        assert len(tags) == 1, tags
        built = [out for out in outputs if "image: built " in out]
        waited = [out for out in outputs if "built by the command waited for" in out]
        assert len(built) == 1, outputs
        assert len(waited) + len(built) + sum("not rebuilt" in o for o in outputs) == 10
        assert waited, "no command said it waited for the build"
        # Another branch changes its lock: one new image, the first one untouched.
        other = copy_fixture(tmp_path, "ktrdr-lock-2")
        shutil.copy2(checkout / "pyproject.toml", other / "pyproject.toml")
        with (other / "uv.lock").open("a") as lock:
            lock.write("# changed on this branch\n")
        second = _images(sandbox, other)
        assert_ok(second)
        assert "image: built " in second.stdout
        new = set(re.findall(r"ktrdr-sandbox/uv-app-deps:\w+", second.stdout))
        assert new and not new & tags
        tags |= new
        for tag in tags:
            assert run(["docker", "image", "inspect", tag], env=sandbox.env, timeout=60).ok
    finally:
        for tag in tags:  # test-only tags (their locks exist nowhere else)
            run(["docker", "rmi", tag], env=sandbox.env, timeout=120)
