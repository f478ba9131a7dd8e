"""MCP fixtures: a real listening bridge (the SDK client needs a URL) and raw JSON-RPC helpers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.config import Settings

MCP_ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"


def legacy_headers(key: str, session: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "X-API-Key": key}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    headers.update(extra)
    return headers


def modern_headers(key: str, method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "X-API-Key": key,
               "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    headers.update(extra)
    return headers


def modern_body(method: str, params: dict[str, Any] | None = None, *, msg_id: int | str = 1,
                version: str = MODERN) -> dict[str, Any]:
    p = dict(params or {})
    p["_meta"] = {META_VERSION: version, META_CAPS: {},
                  "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "0"}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": p}


def rpc(method: str, params: dict[str, Any] | None = None, msg_id: int | str | None = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if msg_id is not None:
        body["id"] = msg_id
    if params is not None:
        body["params"] = params
    return body


async def initialize(client: TestClient[Any, Any], key: str, version: str = "2025-11-25") -> str:
    """The handshake; returns the session id."""
    resp = await client.post("/mcp", json=rpc("initialize", {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw-test", "version": "0"}}),
        headers=legacy_headers(key))
    assert resp.status == 200, await resp.text()
    session = resp.headers["Mcp-Session-Id"]
    resp = await client.post("/mcp", json=rpc("notifications/initialized", msg_id=None),
                             headers=legacy_headers(key, session, **{"MCP-Protocol-Version": version}))
    assert resp.status == 202
    return session


McpClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def mcp_client(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]) -> McpClientFactory:
    """``await mcp_client(**setting_overrides)``: a test client for a bridge with those settings."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(**overrides)))
        return client

    return make


ServerFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def mcp_server(aiohttp_server: Callable[..., Any], make_settings: Callable[..., Settings]) -> ServerFactory:
    """``await mcp_server(**setting_overrides)``: a bridge listening on a free 127.0.0.1 port; its /mcp URL."""

    async def make(**overrides: Any) -> str:
        server: TestServer = await aiohttp_server(create_app(make_settings(**overrides)))
        return str(server.make_url("/mcp"))

    return make


def unique_agent(prefix: str = "t") -> tuple[str, str]:
    """A fresh agent id and an API key of it (with the root token of the tests, any agent has a namespace of its
    own, empty at first): ``API_KEYS_JSON`` entries the test adds."""
    agent = f"{prefix}-{uuid.uuid4().hex[:10]}"
    return agent, f"{agent}-key-" + "k" * 24


class Rpc:
    """Raw JSON-RPC to ``/mcp`` in one era: ``modern`` (2026-07-28 headers and ``_meta``) or the handshake
    (``initialize`` once, then the session id)."""

    def __init__(self, client: TestClient[Any, Any], key: str, *, modern: bool) -> None:
        self.client = client
        self.key = key
        self.modern = modern
        self.session: str | None = None
        self._ids = 0

    async def call(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        self._ids += 1
        if self.modern:
            name = (params or {}).get("uri" if method == "resources/read" else "name")
            headers = modern_headers(self.key, method, name if method in ("tools/call", "prompts/get",
                                                                          "resources/read") else None)
            body = modern_body(method, params, msg_id=self._ids)
        else:
            if self.session is None:
                self.session = await initialize(self.client, self.key)
            headers = legacy_headers(self.key, self.session, **{"MCP-Protocol-Version": "2025-11-25"})
            body = rpc(method, params, msg_id=self._ids)
        resp = await self.client.post("/mcp", json=body, headers=headers)
        data: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, data

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        status, body = await self.call(method, params)
        assert status == 200, (method, status, body)
        assert "result" in body, (method, body)
        result: dict[str, Any] = body["result"]
        return result

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.result("tools/call", {"name": name, "arguments": arguments})
        assert not result["isError"], result
        structured: dict[str, Any] = result["structuredContent"]
        return structured
