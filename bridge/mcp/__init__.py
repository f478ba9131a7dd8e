"""MCP (Model Context Protocol) over Streamable HTTP: a hand-written JSON-RPC 2.0 handler."""
