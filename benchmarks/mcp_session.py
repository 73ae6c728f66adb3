"""Drive `inv mcp` as an MCP client does: a branch slot made, read and removed through the tools.

    .venv/bin/python benchmarks/mcp_session.py --repo ~/src/ktrdr --branch agent/try-1 \
        --slot 7 [--then 'uv run python -m some.check'] [--out session.json]

Spawns `inv mcp` of this checkout over stdio with the SDK's own client, then calls `new`
(branch, repo, slot), `status`, `logs` (backend, last 20 lines), runs `--then` in the new
worktree (a shell command: say a prerequisite check of the app's own), and `done` (confirmed;
not forced unless --force, and then only after a refusal: unsaved work in the checkout stops
it first, as it should). One line per call: the
tool, its latency, ok or the error's exit code, and what came back; the documents themselves
go to `--out`. Exits non-zero when a call failed or `--then` did.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult

from sandbox.errors import Exit
from sandbox.runner import run

ROOT = Path(__file__).resolve().parent.parent


def summary(name: str, document: dict[str, Any]) -> str:
    """A few words of a document, for the one line a call gets."""
    if document.get("schema") == "ktrdr-sandbox/error":
        return f"error (exit {document['exit_code']}): {document['error']}"
    if name == "new":
        up = document["up"]
        gate = up["gate"] or {}
        return (
            f"slot {document['slot']}, worktree {document['worktree']}, ready {up['ready']}, "
            f"gate {gate.get('seconds')} s"
        )
    if name == "status":
        return "; ".join(f"slot {s['slot']}: {s['state']} ({s['app']})" for s in document["slots"])
    if name == "logs":
        return f"{len(document['text'].splitlines())} lines"
    if name == "done":
        return f"slot {document['slot']} down, worktree {document['worktree']} removed"
    return json.dumps(document)[:200]


async def session(args: argparse.Namespace) -> int:
    server = StdioServerParameters(
        command=str(Path(sys.executable).parent / "inv"),
        args=["--search-root", str(ROOT), "mcp"],
        cwd=ROOT,
    )
    failures = 0
    documents: dict[str, Any] = {}

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        if args.verbose:
            print(f"  progress {progress:.0f}: {message}", flush=True)

    async def call(client: ClientSession, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        nonlocal failures
        started = time.monotonic()
        result = await client.call_tool(
            name, arguments, read_timeout_seconds=args.timeout, progress_callback=progress
        )
        seconds = time.monotonic() - started
        assert isinstance(result, CallToolResult)
        document: dict[str, Any] = result.structured_content or {}
        documents[name] = document
        failures += bool(result.is_error)
        print(f"{name:7} {seconds * 1000:8.0f} ms  {summary(name, document)}", flush=True)
        return document

    async with (
        stdio_client(server) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        tools = await client.list_tools()
        print(f"tools: {', '.join(t.name for t in tools.tools)}")
        made = await call(
            client, "new", {"branch": args.branch, "repo": args.repo, "slot": args.slot}
        )
        if made.get("schema") != "ktrdr-sandbox/new":
            return 1
        slot = made["slot"]
        await call(client, "status", {"slot": slot})
        await call(client, "logs", {"slot": slot, "service": "backend", "tail": 20})
        if args.then:
            worktree = made["worktree"]
            ran = run(
                ["sh", "-c", args.then], env=dict(os.environ), cwd=Path(worktree), capture=False
            )
            print(f"then    exit {ran.returncode} in {worktree}: {args.then}")
            failures += ran.returncode != 0
        finish = {"branch": args.branch, "repo": args.repo, "confirm": True}
        refused = await call(client, "done", finish)
        if args.force and refused.get("exit_code") == Exit.UNSAVED_WORK:
            # What the refusal listed was seen above; the caller asked to throw it away.
            failures -= 1
            await call(client, "done", {**finish, "force": True})
    if args.out:
        Path(args.out).write_text(json.dumps(documents, indent=2) + "\n")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="the app repository (a KTRDR checkout)")
    parser.add_argument("--branch", required=True, help="a branch for the new worktree")
    parser.add_argument("--slot", default="auto", help="a free slot, or auto")
    parser.add_argument("--then", help="a shell command to run in the worktree before done")
    parser.add_argument("--out", help="write every document to this JSON file")
    parser.add_argument(
        "--force",
        action="store_true",
        help="when done refuses unsaved work (what --then left behind), call it again forced",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per call")
    parser.add_argument("--verbose", action="store_true", help="print progress notifications")
    return anyio.run(session, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
