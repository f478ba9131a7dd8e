"""The tool table is the only place a tool is declared: one new entry is listed, gated, validated and called."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from bridge.auth.identity import Identity
from bridge.mcp import tools
from bridge.mcp.tools import PathArgs, ToolSpec, hints
from bridge.models import ListOut
from bridge.service import SecretService
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY
from tests.mcp.conftest import McpClientFactory, modern_body, modern_headers

pytestmark = pytest.mark.integration


async def _echo(svc: SecretService, who: Identity, args: PathArgs) -> BaseModel:
    return ListOut(prefix=args.path, keys=[who.subject])


async def _boom(svc: SecretService, who: Identity, args: PathArgs) -> BaseModel:
    raise RuntimeError("internal detail that must not leak")


EXTRA = [
    ToolSpec(name="kv_echo", title="Echo", operation="kv_write", description="Test tool: echoes its path back.",
             input_model=PathArgs, output_model=ListOut, annotations=hints(read_only=True, idempotent=True),
             call=_echo),
    ToolSpec(name="kv_boom", title="Boom", operation="kv_read", description="Test tool: always crashes.",
             input_model=PathArgs, output_model=ListOut, annotations=hints(read_only=True, idempotent=True),
             call=_boom),
]


async def _post(client: Any, key: str, method: str, params: dict[str, Any], name: str | None = None) -> Any:
    return await client.post("/mcp", json=modern_body(method, params), headers=modern_headers(key, method, name))


async def test_one_entry_adds_a_tool(mcp_client: McpClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "TOOLS", [*tools.TOOLS, *EXTRA])
    client = await mcp_client()
    listed = (await (await _post(client, API_KEY_ALICE, "tools/list", {})).json())["result"]["tools"]
    echo = next(t for t in listed if t["name"] == "kv_echo")
    assert echo["inputSchema"]["required"] == ["path"]
    assert set(echo["outputSchema"]["properties"]) == {"prefix", "keys", "error"}
    readonly = (await (await _post(client, API_KEY_READONLY, "tools/list", {})).json())["result"]["tools"]
    assert "kv_echo" not in {t["name"] for t in readonly}           # needs 'write' (its operation's scope)

    resp = await _post(client, API_KEY_ALICE, "tools/call", {"name": "kv_echo", "arguments": {"path": "a/b"}},
                       "kv_echo")
    result = (await resp.json())["result"]
    assert result["structuredContent"] == {"prefix": "a/b", "keys": ["alice"]}
    assert result["isError"] is False
    resp = await _post(client, API_KEY_ALICE, "tools/call", {"name": "kv_echo", "arguments": {}}, "kv_echo")
    assert (await resp.json())["result"]["structuredContent"]["error"]["code"] == "invalid_request"
    resp = await _post(client, API_KEY_READONLY, "tools/call", {"name": "kv_echo", "arguments": {"path": "a"}},
                       "kv_echo")
    assert resp.status == 403


async def test_unexpected_fault_is_32603(mcp_client: McpClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "TOOLS", [*tools.TOOLS, *EXTRA])
    client = await mcp_client()
    resp = await _post(client, API_KEY_ALICE, "tools/call", {"name": "kv_boom", "arguments": {"path": "a"}},
                       "kv_boom")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == -32603
    assert body["id"] == 1
    assert "internal detail" not in await resp.text()
