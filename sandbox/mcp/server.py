"""`inv mcp`: the slot life cycle as MCP tools over stdio, for coding agents.

Built on the official `mcp` SDK (its `MCPServer`), never a protocol of our own. Each tool is a
function of sandbox/mcp/tools.py: the library calls the Invoke task of the same name makes,
answering with one JSON document (sandbox/mcp/docs.py; `status` and `verify` with the `--json`
documents themselves). A
`SandboxError` becomes a tool error carrying the task's one line and exit code (an `error`
document in the structured content), never a traceback. `up` and `new` report each preflight
step, the Compose start and each change of the gate's round as MCP progress notifications.

Destructive tools ask for `confirm=true` on top of the tasks' own guards: `down` with
`volumes`, `restore` and `done`; `done` still refuses unsaved work unless `force`.

The SDK runs a tool that is a plain function in a worker thread, so the blocking library calls
stay as they are; progress goes back to the event loop with `anyio.from_thread`. Importing this
module loads the SDK (pydantic, starlette, ...): sandbox/cli/mcp_server.py imports it only inside
`inv mcp`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from sandbox import shared
from sandbox.errors import Exit, SandboxError
from sandbox.mcp import docs as mcpdocs
from sandbox.mcp import tools
from sandbox.mcp.tools import Failed
from sandbox.ui import statusjson

NAME = "ktrdr-sandbox"
INSTRUCTIONS = (
    "Run isolated copies of the KTRDR stack (slots 0-10) with Docker Compose. Every tool "
    "answers with one JSON document naming its schema and version; a refused call is a tool "
    "error whose structured content is an 'error' document (message, exit_code). Destructive "
    "tools (down with volumes, restore, done) need confirm=true."
)


# ------------------------------------------------------------------------- answers


def answer(document: Mapping[str, Any]) -> CallToolResult:
    """A document as the tool's result: structured, and as JSON text for older clients."""
    return CallToolResult(
        content=[TextContent(type="text", text=statusjson.dumps(document))],
        structured_content=dict(document),
    )


def refusal(exc: SandboxError, document: Mapping[str, Any] | None = None) -> CallToolResult:
    """A SandboxError as a tool error: the task's line first, then the error document."""
    error = mcpdocs.error(exc, document)
    text = f"error: {exc} (exit {int(exc.code)})"
    return CallToolResult(
        content=[
            TextContent(type="text", text=text),
            TextContent(type="text", text=statusjson.dumps(error)),
        ],
        structured_content=error,
        is_error=True,
    )


def answered(work: Callable[[], Mapping[str, Any]]) -> CallToolResult:
    """Run one tool's work the way `tasks.handled` runs a task: expected failures (and a
    file the system refused us) become a tool error, everything else a document."""
    try:
        shared.settle_home(os.environ)
        return answer(work())
    except Failed as failed:
        return refusal(failed.error, failed.document)
    except SandboxError as exc:
        return refusal(exc)
    except OSError as exc:
        return refusal(SandboxError(str(exc), Exit.FAILED))


# ------------------------------------------------------------------------- progress


class Reporter:
    """Progress notifications from a tool running in the SDK's worker thread. The counter only
    grows (MCP wants increasing progress); a message equal to the last one is not sent again,
    so a gate polling every fraction of a second notifies only when a check changes."""

    def __init__(self, ctx: Context | None) -> None:
        self.ctx = ctx
        self.count = 0
        self.last = ""

    def __call__(self, message: str) -> None:
        if self.ctx is None or message == self.last:
            return
        self.last = message
        self.count += 1
        anyio.from_thread.run(
            functools.partial(self.ctx.report_progress, self.count, None, message)
        )


# ------------------------------------------------------------------------- the server


DESTRUCTIVE = ToolAnnotations(destructive_hint=True)
READ_ONLY = ToolAnnotations(read_only_hint=True)
Work = Callable[..., Mapping[str, Any]]


TOOLS: tuple[tuple[Work, ToolAnnotations | None], ...] = (
    (tools.new, None),
    (tools.up, None),
    (tools.status, READ_ONLY),
    (tools.verify, READ_ONLY),
    (tools.logs, READ_ONLY),
    (tools.exec_, None),
    (tools.snapshot, None),
    (tools.restore, DESTRUCTIVE),
    (tools.done, DESTRUCTIVE),
    (tools.down, None),
)


def as_tool(work: Work) -> Callable[..., CallToolResult]:
    """`work` as an MCP tool: its parameters after `environ` and `say` are the tool's
    arguments (the SDK builds their schema from this signature), its docstring the tool's
    description; `say` becomes progress notifications through the SDK's Context."""
    signature = inspect.signature(work, eval_str=True)
    reports = "say" in signature.parameters
    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in signature.parameters.items()
        if name not in ("environ", "say")
    ]
    if reports:
        params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))

    def tool(**arguments: Any) -> CallToolResult:
        extra = {"say": Reporter(arguments.pop("ctx", None))} if reports else {}
        return answered(lambda: work(dict(os.environ), **extra, **arguments))

    tool.__signature__ = inspect.Signature(params, return_annotation=CallToolResult)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params} | {"return": CallToolResult}
    tool.__doc__ = work.__doc__
    tool.__name__ = work.__name__.rstrip("_")
    return tool


def build() -> MCPServer:
    """The server with its ten tools, each a function of `tools` (`as_tool`)."""
    server: MCPServer = MCPServer(NAME, instructions=INSTRUCTIONS)
    for work, hints in TOOLS:
        tool = as_tool(work)
        server.tool(name=tool.__name__, annotations=hints)(tool)
    return server


def serve() -> None:
    """Serve the tools on stdin/stdout until the client closes them."""
    build().run("stdio")
