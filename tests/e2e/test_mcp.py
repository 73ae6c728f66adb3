"""The MCP server on a real engine, driven by the SDK's own client over stdio.

The client spawns `inv mcp` as an MCP client would (tests/e2e/conftest.py's environment: a
private HOME), lists the tools, brings a light slot up with `up` (progress notifications from
the gate's rounds), reads `status`, runs `exec`, asks for something wrong (a structured tool
error, no traceback), refuses `down` with volumes until confirmed, and takes the slot down.
Each call's latency is printed (`-s` shows them) for the closing note's figures.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult, TextContent

from sandbox import ROOT, slots
from sandbox.runner import run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers, remove_project
from tests.e2e.test_branches import IDENTITY
from tests.e2e.test_sources import FIXTURE

pytestmark = pytest.mark.docker

A = E2E_SLOTS[0]
TOOLS = {"new", "up", "status", "verify", "logs", "exec", "snapshot", "restore", "done", "down"}


@pytest.fixture
def slot(sandbox: Sandbox) -> Iterator[int]:
    claim_slots((A,), sandbox.env)
    try:
        yield A
    finally:
        if project_containers(A):
            remove_project(A, sandbox.env)


def server(sandbox: Sandbox) -> StdioServerParameters:
    inv = Path(sys.executable).parent / "inv"
    return StdioServerParameters(
        command=str(inv), args=["--search-root", str(ROOT), "mcp"], env=sandbox.env, cwd=ROOT
    )


def structured(result: CallToolResult) -> dict[str, Any]:
    document: dict[str, Any] | None = result.structured_content
    assert document is not None, result.content
    return document


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    return structured(result)


def test_an_mcp_client_drives_a_slot(sandbox: Sandbox, slot: int) -> None:
    timings: dict[str, float] = {}
    notes: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async def timed(session: ClientSession, name: str, args: dict[str, Any]) -> CallToolResult:
        started = time.monotonic()
        result = await session.call_tool(
            name, args, read_timeout_seconds=600, progress_callback=on_progress
        )
        assert isinstance(result, CallToolResult)
        timings.setdefault(name, time.monotonic() - started)
        return result

    async def scenario() -> None:
        async with (
            stdio_client(server(sandbox)) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == TOOLS

            up = ok(await timed(session, "up", {"slot": str(slot), "workers": "light"}))
            assert up["schema"] == "ktrdr-sandbox/up" and up["version"] == 1
            assert up["ready"] is True and up["gate"]["passed"] is True
            assert up["status"]["slots"][0]["state"] == "running"
            assert any(line.startswith("preflight: ") for line in notes), notes
            assert any(line.startswith("gate: ") for line in notes), notes
            assert notes[-1].startswith("gate: ") and "waiting" not in notes[-1]

            status = ok(await timed(session, "status", {"slot": slot}))
            assert status["schema"] == "ktrdr-sandbox/status"
            (entry,) = status["slots"]
            assert entry["slot"] == slot and entry["state"] == "running"
            api = slots.ports(slot)["KTRDR_API_PORT"]
            assert entry["urls"]["backend"].startswith(f"http://127.0.0.1:{api}")

            argv = ["sh", "-c", 'echo "slot $SLOT_NUMBER"; exit 3']
            ran = ok(await timed(session, "exec", {"slot": slot, "argv": argv}))
            assert (ran["exit_code"], ran["stdout"]) == (3, f"slot {slot}\n")

            logs = ok(await timed(session, "logs", {"slot": slot, "service": "backend", "tail": 5}))
            assert 0 < len(logs["text"].splitlines()) <= 5

            wrong = await timed(session, "verify", {"slot": [42]})
            assert wrong.is_error
            error = structured(wrong)
            assert error["schema"] == "ktrdr-sandbox/error" and error["exit_code"] == 2
            first = wrong.content[0]
            assert isinstance(first, TextContent)
            assert first.text.startswith("error: slot 42 is outside 0-10")
            assert "Traceback" not in str(wrong.content)

            refused = await session.call_tool("down", {"slot": slot, "volumes": True})
            assert refused.is_error and "confirm=true" in structured(refused)["error"]
            assert project_containers(slot), "a refused down took the slot down"

            args = {"slot": slot, "volumes": True, "confirm": True}
            down = ok(await timed(session, "down", args))
            assert down == {
                "schema": "ktrdr-sandbox/down",
                "version": 1,
                "slot": slot,
                "volumes": True,
                "removed": [],
            }
            assert not project_containers(slot)
            after = ok(await session.call_tool("status", {"slot": slot}))
            assert after["slots"] == []

    anyio.run(scenario)
    print(
        "mcp tool latencies: "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items())
        + f"; {len(notes)} progress notifications"
    )


def test_an_mcp_client_makes_and_removes_a_branch_slot(
    sandbox: Sandbox, slot: int, tmp_path: Path
) -> None:
    """`new`, `status`, `logs`, `done` on a KTRDR-shaped repository, through
    benchmarks/mcp_session.py (the driver the closing check with a real checkout uses)."""
    env = {**sandbox.env, **IDENTITY}
    origin, main = tmp_path / "origin.git", tmp_path / "src" / "app"

    def git(cwd: Path, *args: str) -> None:
        result = run(["git", "-C", str(cwd), *args], env=env, timeout=120)
        assert result.ok, result.tail()

    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "clone", "-q", str(origin), str(main))
    git(main, "checkout", "-q", "-b", "main")
    shutil.copytree(FIXTURE, main, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    git(main, "add", "-A")
    git(main, "commit", "-q", "-m", "the fixture app")
    git(main, "push", "-q", "origin", "main")

    out = tmp_path / "session.json"
    script = ROOT / "benchmarks" / "mcp_session.py"
    cmd = [sys.executable, str(script), f"--repo={main}", "--branch=agent/try-1"]
    cmd += [f"--slot={slot}", "--then=test -f .env.sandbox", f"--out={out}"]
    result = run(cmd, env=env, cwd=ROOT, timeout=1200)
    print(result.stdout)
    assert result.ok, result.stdout + result.stderr
    documents = json.loads(out.read_text())
    assert [d["schema"] for d in documents.values()] == [
        "ktrdr-sandbox/new", "ktrdr-sandbox/status", "ktrdr-sandbox/logs", "ktrdr-sandbox/done",
    ]  # fmt: skip
    assert documents["new"]["up"]["ready"] is True
    assert documents["status"]["slots"][0]["app"] == "ktrdr"
    assert documents["done"]["slot"] == slot
    assert not Path(documents["new"]["worktree"]).exists()
    assert not project_containers(slot)
