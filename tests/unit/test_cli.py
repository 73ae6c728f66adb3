"""Bad input through the `inv` entry point: one line, a distinct exit code, no traceback.

None of these reach a Docker engine: input is checked before anything is called. Each route
from an exception to the process's exit (a `SandboxError`, Ctrl-C, an `OSError`) is checked
once through a real process; the input cases run the same program in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.errors import Exit
from sandbox.runner import Result, run
from tests.unit.support.cli import Inv


def inv_process(*args: str, **env: str) -> Result:
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
        (["new", "x", "--repo=/", "--torch=cuda"], Exit.USAGE, "unknown --torch 'cuda'"),
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
def test_bad_input_is_one_line(
    args: list[str], code: Exit, message: str, tmp_path: Path, inv: Inv
) -> None:
    ran = inv(*args)
    assert ran.code == code, ran.stderr
    assert not (tmp_path / ".ktrdr" / "shared").exists(), "refused input created something"
    assert ran.commands == [], "input is checked before anything is run"
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in ran.stderr + ran.stdout


def test_no_engine_is_one_line(inv: Inv) -> None:
    ran = inv("status")
    assert ran.code == Exit.NO_ENGINE, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "Docker engine is not reachable" in lines[0], ran.stderr


@pytest.mark.parametrize(
    ("args", "schema"),
    [
        (["status", "--json"], "ktrdr-sandbox/status"),
        (["status", "--json", "--slot=3"], "ktrdr-sandbox/status"),
        (["verify", "--json", "--slot=3"], "ktrdr-sandbox/verify"),
    ],
)
def test_json_without_an_engine_is_still_a_document(inv: Inv, args: list[str], schema: str) -> None:
    ran = inv(*args)
    assert ran.code == Exit.NO_ENGINE, ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Docker engine is not reachable" in line
    document = json.loads(ran.stdout)  # stdout is the document and nothing else
    assert (document["schema"], document["version"], document["slots"]) == (schema, 1, [])
    assert document["error"] == {"message": line.removeprefix("error: "), "code": 3}
    assert "Traceback" not in ran.stderr + ran.stdout


def test_json_with_bad_input_is_still_a_document(inv: Inv) -> None:
    ran = inv("status", "--json", "--slot=x")
    assert ran.code == Exit.USAGE
    assert json.loads(ran.stdout)["error"]["code"] == Exit.USAGE


# --- each route from an exception to the exit of a real `inv` process, once ---------------


def test_a_sandbox_error_leaves_a_real_process_as_one_line_and_its_code(tmp_path: Path) -> None:
    result = inv_process("up", "--slot=abc", HOME=str(tmp_path))
    assert result.returncode == Exit.USAGE, result.stderr
    [line] = result.stderr.splitlines()  # one line, nothing else on stderr
    assert line.startswith("error: slot must be a whole number from 0 to 10, not 'abc'"), line
    assert result.stdout == ""


# `inv status` as the console script runs it (invoke.main.program), the first command it
# starts replaced by what the test needs to happen there.
ROUTE = """
import os, signal, sys, time
from sandbox import runner

def interrupted(cmd, **options):
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered as the shell would
    time.sleep(30)

def refused(cmd, **options):
    raise PermissionError(13, "Permission denied", "/home/dev/.ktrdr/locks")

# Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
# background job (a CI runner, `cmd &`) starts with SIGINT ignored: as at a terminal here.
signal.signal(signal.SIGINT, signal.default_int_handler)
runner.execute = {"interrupted": interrupted, "refused": refused}[sys.argv[1]]
from invoke.main import program
program.run(["inv", "--search-root", sys.argv[2], "status"])
"""


def route(case: str, home: Path) -> Result:
    env = {**os.environ, "HOME": str(home)}
    return run([sys.executable, "-c", ROUTE, case, str(ROOT)], env=env, cwd=ROOT, timeout=60)


def test_ctrl_c_leaves_a_real_process_with_130_and_one_word(tmp_path: Path) -> None:
    result = route("interrupted", tmp_path)
    assert result.returncode == int(Exit.INTERRUPTED) == 130, result.stderr
    assert result.stderr == "interrupted\n"


def test_an_os_error_leaves_a_real_process_as_one_line(tmp_path: Path) -> None:
    result = route("refused", tmp_path)
    assert result.returncode == Exit.FAILED, result.stderr
    assert result.stderr == "error: [Errno 13] Permission denied: '/home/dev/.ktrdr/locks'\n"


def test_env_prints_the_slot_file() -> None:
    result = inv_process("env", "--slot=3")
    assert result.ok
    assert "KTRDR_API_PORT=8003" in result.stdout


def test_env_export_lines() -> None:
    result = inv_process("env", "--slot=2", "--export", HOME="/home/some one")
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
    result = inv_process("env", "--check")
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

    result = inv_process("init-shared", f"--from={checkout}", HOME=str(home))
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
    # The tasks themselves: each imports the rest of what it uses inside its body.
    cli = ["common", "lifecycle", "branches", "observe", "access", "snapshots", "images"]
    ours |= {"cli", *(f"cli.{name}" for name in [*cli, "machine", "remote", "mcp_server"])}
    assert set(loaded.split()) == {"sandbox", *(f"sandbox.{name}" for name in ours)}


def test_the_task_package_keeps_every_command_name_flat() -> None:
    """sandbox/cli/ is one module per concern, merged by tasks.py into one namespace: `inv
    NAME` as ever, no `inv lifecycle.up`; a task left out of `COLLECTIONS` would be missing here."""
    import tasks

    assert sorted(tasks.ns.task_names) == [
        "clone", "done", "down", "env", "exec", "images", "init-shared", "logs", "mcp", "new",
        "observability", "pause", "psql", "restore", "resume", "shell", "snapshot", "snapshots",
        "status", "sync", "tunnel", "up", "verify",
    ]  # fmt: skip
    assert not tasks.ns.collections
    defined = {t.name for m in tasks.COLLECTIONS for t in vars(m).values() if hasattr(t, "body")}
    assert defined == set(tasks.ns.task_names)


def test_nothing_at_the_checkouts_top_shadows_a_module_the_tools_import() -> None:
    """Invoke puts the directory of tasks.py at the front of sys.path, so a module there named
    like one the tools import is what `import NAME` finds for the whole `inv` process (a task
    module named mcp once hid the MCP SDK and `inv mcp` died at import)."""
    import pkgutil

    ours = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    elsewhere = [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != ROOT]
    importable = {m.name for m in pkgutil.iter_modules(elsewhere)} | set(sys.stdlib_module_names)
    assert {"tasks", "sandbox"} <= ours and not ours & importable


def test_a_checkouts_tasks_drive_its_own_sandbox_package(tmp_path: Path) -> None:
    """Another checkout's `inv` (a worktree using this .venv, whose editable install points
    here) imports that checkout's sandbox package, so its ROOT, its slots, its ownership."""
    copy = tmp_path / "other"
    shutil.copytree(
        ROOT / "sandbox", copy / "sandbox", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "tasks.py", copy / "tasks.py")
    script = (
        "import sys\n"
        "from invoke.config import Config\n"
        "from invoke.loader import FilesystemLoader\n"
        f"FilesystemLoader(start={str(copy)!r}, config=Config()).load()\n"
        "import sandbox, sandbox.cli.common\n"
        "print(sandbox.ROOT, sandbox.cli.common.ROOT)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(copy), str(copy)]
