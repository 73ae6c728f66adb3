"""`inv mcp`: the lifecycle as MCP tools over stdio (`server`) and the documents they return
(`docs`)."""
