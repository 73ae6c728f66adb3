"""Bad input through the real `inv` entry point: one line, a distinct exit code, no traceback.

None of these reach a Docker engine: input is checked before anything is called.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.errors import Exit
from sandbox.runner import Result, run


def inv(*args: str, **env: str) -> Result:
    cmd = [str(Path(sys.executable).parent / "inv"), "--search-root", str(ROOT), *args]
    return run(cmd, env={**os.environ, **env}, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["up", "--slot=abc"], Exit.USAGE, "slot must be a whole number from 0 to 10, not 'abc'"),
        (["up", "--slot=11"], Exit.USAGE, "slot 11 is outside 0-10"),
        (["up", "--slot=--1"], Exit.USAGE, "slot must be a whole number from 0 to 10, not '--1'"),
        (["up", "--slot=\u00b2"], Exit.USAGE, "slot must be a whole number from 0 to 10"),
        (["up", "--slot=1", "--timeout=nan"], Exit.USAGE, "timeout must be a positive number"),
        (["up", "--slot=1", "--timeout=inf"], Exit.USAGE, "timeout must be a positive number"),
        (["logs", "--slot=1", "--tail=\u00b2"], Exit.USAGE, "--tail takes a number of lines"),
        (["down", "--slot=-3"], Exit.USAGE, "slot -3 is outside 0-10"),
        (["up"], Exit.USAGE, "which slot? pass --slot=N"),
        (["logs", "--slot=1", "--service=api"], Exit.USAGE, "unknown service 'api'"),
        (["logs", "--slot=1", "--tail=x"], Exit.USAGE, "--tail takes a number of lines"),
        (["up", "--slot=1", "--timeout=soon"], Exit.USAGE, "timeout must be a positive number"),
        (["verify"], Exit.USAGE, "which slots?"),
        (["up", "--slot=1", "--workers=medium"], Exit.USAGE, "unknown worker profile 'medium'"),
        (["up", "--slot=1", "--observability=cloud"], Exit.USAGE, "unknown observability"),
        (["observability", "restart"], Exit.USAGE, "unknown action 'restart'"),
        (["status", "--slot=x"], Exit.USAGE, "slot must be a whole number"),
        (["init-shared", "--from=/nonexistent/ktrdr"], Exit.USAGE, "is not a directory"),
        (["new", "feature/x"], Exit.USAGE, "which repository? pass --repo=PATH"),
        (["new", "x", "--repo=/nonexistent"], Exit.USAGE, "is not a directory"),
        (["new", "x", "--repo=/", "--torch=cuda"], Exit.USAGE, "--torch must be one of"),
        (["done"], Exit.USAGE, "name one branch or one slot"),
        (["done", "--branch=x", "--slot=1"], Exit.USAGE, "name one branch or one slot"),
        (["done", "--slot=12"], Exit.USAGE, "slot 12 is outside 0-10"),
        (["exec", "--slot=1"], Exit.USAGE, "which command? put it after `--`"),
        (["exec", "--slot=1", "--service=api", "--", "ls"], Exit.USAGE, "unknown service"),
        (["shell", "--slot=1", "--service=api"], Exit.USAGE, "unknown service"),
        (["down", "--all", "--slot=1"], Exit.USAGE, "pass --slot=N or --all, not both"),
        (["up", "--slot=any"], Exit.USAGE, "slot must be a whole number"),
        (["new", "x", "--repo=/", "--slot=any"], Exit.USAGE, "--slot must be auto or a whole"),
        (["up", "--slot=1", "--source="], Exit.USAGE, "--source is empty (an unset variable?)"),
        (["up", "--slot=auto", "--source= "], Exit.USAGE, "--source is empty"),
    ],
)
def test_bad_input_is_one_line(args: list[str], code: Exit, message: str, tmp_path: Path) -> None:
    result = inv(*args, HOME=str(tmp_path))
    assert result.returncode == code, result.stderr
    assert not (tmp_path / ".ktrdr" / "shared").exists(), "refused input created something"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_no_engine_is_one_line(tmp_path: Path) -> None:
    result = inv("status", DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock", HOME=str(tmp_path))
    assert result.returncode == Exit.NO_ENGINE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Docker engine is not reachable" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "schema"),
    [
        (["status", "--json"], "ktrdr-sandbox/status"),
        (["status", "--json", "--slot=3"], "ktrdr-sandbox/status"),
        (["verify", "--json", "--slot=3"], "ktrdr-sandbox/verify"),
    ],
)
def test_json_without_an_engine_is_still_a_document(
    tmp_path: Path, args: list[str], schema: str
) -> None:
    result = inv(*args, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock", HOME=str(tmp_path))
    assert result.returncode == Exit.NO_ENGINE, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Docker engine is not reachable" in line
    document = json.loads(result.stdout)  # stdout is the document and nothing else
    assert (document["schema"], document["version"], document["slots"]) == (schema, 1, [])
    assert document["error"] == {"message": line.removeprefix("error: "), "code": 3}
    assert "Traceback" not in result.stderr + result.stdout


def test_json_with_bad_input_is_still_a_document(tmp_path: Path) -> None:
    result = inv("status", "--json", "--slot=x", HOME=str(tmp_path))
    assert result.returncode == Exit.USAGE
    assert json.loads(result.stdout)["error"]["code"] == Exit.USAGE


def test_env_prints_the_slot_file() -> None:
    result = inv("env", "--slot=3")
    assert result.ok
    assert "KTRDR_API_PORT=8003" in result.stdout


def test_env_export_lines() -> None:
    result = inv("env", "--slot=2", "--export", HOME="/home/some one")
    assert result.ok
    assert "export KTRDR_DB_PORT=5434" in result.stdout.splitlines()
    assert "export KTRDR_SHARED_DIR='/home/some one/.ktrdr/shared'" in result.stdout.splitlines()


def test_gate_timeout_precedence(tmp_path: Path) -> None:
    """--timeout beats the env file, which beats the shell, which beats the default."""
    from sandbox import compose, envfiles, stack

    envfiles.write_all(tmp_path)
    target = compose.load_target(tmp_path, 1)
    with_file = compose.Target(1, tmp_path, {**target.values, "KTRDR_GATE_TIMEOUT": "60"})
    shell = {"KTRDR_GATE_TIMEOUT": "90"}
    assert stack.gate_timeout("30", with_file, shell) == 30.0
    assert stack.gate_timeout(None, with_file, shell) == 60.0
    assert stack.gate_timeout(None, target, shell) == 90.0
    assert stack.gate_timeout(None, target, {}) == 180.0


def test_env_check_passes_on_the_committed_files() -> None:
    result = inv("env", "--check")
    assert result.ok, result.stdout
    assert "11 files valid" in result.stdout


def test_init_shared_creates_and_never_overwrites(tmp_path: Path) -> None:
    checkout = tmp_path / "ktrdr"
    (checkout / "data").mkdir(parents=True)
    (checkout / "data" / "AAPL_1d.csv").write_text("from checkout\n")
    (checkout / "strategies").mkdir()
    (checkout / "strategies" / "s.yaml").write_text("name: s\n")
    home = tmp_path / "home"
    shared = home / ".ktrdr" / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "AAPL_1d.csv").write_text("mine\n")

    result = inv("init-shared", f"--from={checkout}", HOME=str(home))
    assert result.ok, result.stderr
    assert (shared / "data" / "AAPL_1d.csv").read_text() == "mine\n"
    assert (shared / "strategies" / "s.yaml").read_text() == "name: s\n"
    assert (shared / "models").is_dir()
    assert "copied 1 file(s)" in result.stdout and "left 1 existing" in result.stdout


# `inv status` on a pipe, on an engine with no slots: what it imports of ours and of rich.
STATUS_IMPORTS = """
import sys
import tasks
from invoke.context import Context
from sandbox import runner
runner.execute = lambda cmd, **options: runner.Result(tuple(map(str, cmd)), 0, "")
tasks.observe.status(Context())
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("sandbox", "rich"))))
"""


def test_status_loads_only_what_it_uses() -> None:
    """Each module is milliseconds of every `inv status` (the budget: at most 1.2x importing
    invoke plus one `docker ps`): no rich on a pipe, nothing that runs Compose or HTTP."""
    result = run([sys.executable, "-c", STATUS_IMPORTS], env=dict(os.environ), cwd=ROOT)
    assert result.ok, result.stderr
    said, loaded = result.stdout.strip().splitlines()
    assert said == "no sandbox slots have containers"
    ours = {"checks", "docker", "engine", "errors", "lastup", "net", "runner", "ui", "ui.render"}
    # lock and the restore marker: one listing of the lock directory for an interrupted restore.
    ours |= {"settings", "shared", "slots", "status", "lock", "snapshots", "snapshots.marker"}
    assert set(loaded.split()) == {"sandbox", *(f"sandbox.{name}" for name in ours)}
