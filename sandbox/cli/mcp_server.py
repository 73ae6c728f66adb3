"""`inv mcp`: the slot life cycle as MCP tools, for agents."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from sandbox.cli.common import handled


@task(name="mcp")
@handled
def mcp_server(c: Context) -> None:
    """An MCP server on stdin/stdout: the slot life cycle as tools (README: registering it)."""
    from sandbox.mcp import server  # loads the MCP SDK (pydantic, starlette): only here

    server.serve()
