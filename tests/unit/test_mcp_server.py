"""The MCP server without an engine: its documents, its refusals, its tool list, its guards.

Each tool is called through the SDK's own `MCPServer.call_tool` (what a client's `tools/call`
reaches), with `runner.execute` replaced, so a refused destructive call is shown to have run no
command at all. The stdio session against a real engine is tests/e2e/test_mcp.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from mcp_types import CallToolResult, TextContent

from sandbox import ROOT, checks, runner
from sandbox.branches import flow as branchflow
from sandbox.branches import git as branches
from sandbox.branches import worktrees
from sandbox.errors import Exit, SandboxError
from sandbox.mcp import docs as mcpdocs
from sandbox.mcp import server as mcpserver
from sandbox.mcp import tools as mcptools
from tests.unit.support.engine import FakeEngine

TOOLS = {"new", "up", "status", "verify", "logs", "exec", "snapshot", "restore", "done", "down"}


class Recorder(FakeEngine):
    """The scripted engine answering every command with `answer`'s code and output (by
    default: success, saying nothing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: runner.Result | None = None):
        super().__init__()
        given = answer or runner.Result((), 0, "")
        self.on(answer=runner.Result((), given.returncode, given.stdout))
        self.install(monkeypatch)

    @property
    def calls(self) -> list[list[str]]:
        return [list(c) for c in self.commands]


def call(name: str, arguments: dict[str, Any]) -> CallToolResult:
    async def go() -> CallToolResult:
        result = await mcpserver.build().call_tool(name, arguments)
        assert isinstance(result, CallToolResult)
        return result

    return anyio.run(go)


def texts(result: CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, TextContent)]


def test_the_server_lists_the_ten_tools_and_marks_the_destructive_ones() -> None:
    async def go() -> dict[str, Any]:
        return {t.name: t for t in await mcpserver.build().list_tools()}

    tools = anyio.run(go)
    assert set(tools) == TOOLS
    for name in ("restore", "done"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.destructive_hint is True
        assert "confirm" in tools[name].input_schema["properties"]
    assert "confirm" in tools["down"].input_schema["properties"]
    assert tools["exec"].input_schema["required"] == ["slot", "argv"]
    assert tools["new"].input_schema["required"] == ["branch", "repo"]
    # The SDK's Context is injected, never asked of the client.
    assert "ctx" not in tools["up"].input_schema["properties"]
    # An agent's slot trains as `inv up`'s does: the same torch default, the same models choice.
    for name in ("up", "new"):
        properties = tools[name].input_schema["properties"]
        assert properties["torch"].get("default") is None
        assert properties["models"]["default"] == "shared"


def test_a_sandbox_error_is_a_tool_error_with_its_line_and_exit_code() -> None:
    result = call("logs", {"slot": 42})
    assert result.is_error
    assert texts(result)[0] == "error: slot 42 is outside 0-10: pick a slot from 0 to 10 (exit 2)"
    assert result.structured_content == {
        "schema": "ktrdr-sandbox/error",
        "version": 1,
        "error": "slot 42 is outside 0-10: pick a slot from 0 to 10",
        "exit_code": 2,
        "details": "",
        "result": None,
    }
    assert json.loads(texts(result)[1]) == result.structured_content
    assert not any("Traceback" in t for t in texts(result))


@pytest.mark.parametrize(
    ("tool", "arguments", "words"),
    [
        ("down", {"slot": 8, "volumes": True}, "down with volumes deletes slot 8's database"),
        ("restore", {"slot": 8, "name": "snap"}, "restore replaces slot 8's database"),
    ],
)
def test_destructive_calls_without_confirm_run_nothing(
    monkeypatch: pytest.MonkeyPatch, tool: str, arguments: dict[str, Any], words: str
) -> None:
    recorder = Recorder(monkeypatch)
    result = call(tool, arguments)
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == Exit.USAGE
    assert result.structured_content["error"].startswith(words)
    assert "confirm=true" in result.structured_content["error"]
    assert recorder.calls == []


def test_done_without_confirm_names_a_clone_as_a_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    clone = branches.DoneTarget(
        Path("/repo"), worktrees.Worktree(Path("/repo-feature"), "abc", "feature"), 8, clone=True
    )
    monkeypatch.setattr(branchflow, "done_target", lambda *a, **k: clone)
    monkeypatch.setattr(branchflow, "check_done", lambda *a, **k: None)
    recorder = Recorder(monkeypatch)
    result = call("done", {"branch": "feature"})
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == Exit.USAGE
    assert "removes the clone /repo-feature" in result.structured_content["error"]
    assert recorder.calls == []


def test_done_keeps_its_unsaved_work_guard_before_asking_for_confirm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent that confirms still cannot throw away work: the guard comes first."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise SandboxError("the worktree holds work that exists nowhere else", Exit.UNSAVED_WORK)

    monkeypatch.setattr(branchflow, "done_target", lambda *a, **k: object())
    monkeypatch.setattr(branchflow, "check_done", refuse)
    recorder = Recorder(monkeypatch)
    result = call("done", {"branch": "feature", "confirm": True})
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == Exit.UNSAVED_WORK
    assert recorder.calls == []


def test_exec_runs_the_argv_without_a_terminal_and_returns_its_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(monkeypatch, runner.Result((), 3, "hi\n"))
    monkeypatch.setattr(mcptools, "_compose", lambda environ: ["docker", "compose"])
    result = call("exec", {"slot": 7, "argv": ["sh", "-c", "echo hi; exit 3"]})
    assert not result.is_error
    assert recorder.calls == [
        [
            "docker", "compose", "--project-name", "ktrdr-sandbox-7", "--project-directory",
            str(ROOT), "--env-file", str(ROOT / "env" / "slot-7.env"), "-f",
            str(ROOT / "docker-compose.sandbox.yml"), "exec", "-T", "backend",
            "sh", "-c", "echo hi; exit 3",
        ]
    ]  # fmt: skip
    assert result.structured_content == {
        "schema": "ktrdr-sandbox/exec",
        "version": 1,
        "slot": 7,
        "service": "backend",
        "argv": ["sh", "-c", "echo hi; exit 3"],
        "exit_code": 3,
        "stdout": "hi\n",
        "stderr": "",
    }


def test_exec_of_nothing_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    result = call("exec", {"slot": 7, "argv": []})
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == Exit.USAGE
    assert recorder.calls == []


def test_an_oserror_is_one_line_too() -> None:
    def work() -> dict[str, Any]:
        raise PermissionError(13, "Permission denied", "/root/.ktrdr")

    result = mcpserver.answered(work)
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == Exit.FAILED
    assert "Permission denied" in result.structured_content["error"]


def test_a_failed_gate_comes_back_as_an_error_carrying_its_document() -> None:
    document = {"schema": "ktrdr-sandbox/up", "ready": False}

    def work() -> dict[str, Any]:
        raise mcptools.Failed(SandboxError("slot 7 did not become ready"), document)

    result = mcpserver.answered(work)
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["result"] == document
    assert result.structured_content["exit_code"] == Exit.FAILED


def check(name: str, state: checks.State, elapsed: float | None = None) -> checks.CheckResult:
    return checks.CheckResult(name, name.title(), state, "HTTP 200", elapsed, name)


def test_gate_rounds_become_one_line_each() -> None:
    waiting = [check("database", checks.State.PASSED, 0.1), check("backend", checks.State.WAITING)]
    assert mcptools.gate_round(waiting) == "gate: 1/2 passed; waiting for backend"
    failed = [check("database", checks.State.FAILED), check("backend", checks.State.WAITING)]
    assert mcptools.gate_round(failed) == (
        "gate: 0/2 passed; failed: database; waiting for backend"
    )


def test_a_start_waiting_in_line_reports_its_place_as_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up`/`new` through the server: the admission line's place reaches the agent."""
    from sandbox import admission, upsteps
    from tests.unit.support.clock import FakeClock
    from tests.unit.support.flocks import held_elsewhere

    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path))
    said: list[str] = []
    hooks = mcptools.up_hooks(said.append, {}, [])
    clock = FakeClock()
    monkeypatch.setattr("time.sleep", clock.sleep)
    ahead = contextlib.ExitStack()  # another start ahead in line; closed: it ended
    clock.then(2, ahead.close)
    ahead.enter_context(
        held_elsewhere(tmp_path / admission.SUBDIR / admission.entry_name(1), "3 4242")
    )
    with ahead, contextlib.ExitStack() as heavy:
        upsteps.wait_turn(8, {"KTRDR_MAX_STARTS": "1"}, hooks.queue, heavy)
    assert said[0] == (
        "slot 8 waits for its turn to start: number 1 in line (starting now: slot 3; at most "
        "1 at once, KTRDR_MAX_STARTS sets it)"
    )
    assert said[-1].startswith("slot 8: its turn to start after ")


class FakeContext:
    """Stands in for the SDK's Context: only `report_progress` is used."""

    async def report_progress(self, progress: float, total: float | None, message: str) -> None:
        return None


def test_progress_without_a_client_context_or_a_change_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[float, str]] = []

    def send(fn: Any) -> None:  # anyio.from_thread.run, here on the test's own thread
        sent.append((fn.args[0], fn.args[2]))

    monkeypatch.setattr(anyio.from_thread, "run", send)
    quiet = mcpserver.Reporter(None)
    quiet("preflight")
    assert sent == [] and quiet.count == 0

    reporter = mcpserver.Reporter(FakeContext())  # type: ignore[arg-type]
    for line in ("gate: 0/2", "gate: 0/2", "gate: 1/2", "gate: 2/2"):
        reporter(line)
    assert sent == [(1, "gate: 0/2"), (2, "gate: 1/2"), (3, "gate: 2/2")]


def test_documents_name_their_schema_and_version() -> None:
    gate = checks.GateResult(
        7, True, [check("backend", checks.State.PASSED, 0.25)], 1.5, {"Backend API": "u"}
    )
    up = mcpdocs.up(7, True, gate, [("engine", "ok")], {}, {"schema": "ktrdr-sandbox/status"})
    assert up == {
        "schema": "ktrdr-sandbox/up",
        "version": 1,
        "slot": 7,
        "started": True,
        "ready": True,
        "preflight": [{"name": "engine", "detail": "ok"}],
        "gate": {
            "passed": True,
            "seconds": 1.5,
            "checks": [
                {
                    "name": "backend",
                    "label": "Backend",
                    "state": "passed",
                    "detail": "HTTP 200",
                    "seconds": 0.25,
                }
            ],
        },
        "urls": {"Backend API": "u"},
        "logs": {},
        "status": {"schema": "ktrdr-sandbox/status"},
    }
    assert mcpdocs.new("b", "/w", up)["slot"] == 7
    assert mcpdocs.down(7, True) == {
        "schema": "ktrdr-sandbox/down",
        "version": 1,
        "slot": 7,
        "volumes": True,
        "removed": [],
    }
    assert mcpdocs.clip("x" * 10, 4) == "xxxx"


# `inv status` (any task but `inv mcp`) must not pay for the SDK's import.
NO_SDK = """
import sys
import tasks
print("mcp" in sys.modules, "pydantic" in sys.modules)
"""


def test_the_tasks_do_not_import_the_sdk() -> None:
    result = runner.run([sys.executable, "-c", NO_SDK], env=dict(os.environ), cwd=ROOT)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_inv_mcp_starts_and_ends_with_its_input() -> None:
    """`inv mcp` imports the SDK as `mcp`: a module by that name beside tasks.py would shadow
    it (invoke puts that directory on sys.path), and the server would die."""
    inv = Path(sys.executable).parent / "inv"
    result = runner.run([inv, "--search-root", ROOT, "mcp"], input_text="", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
