"""The official MCP Python SDK client (``mcp`` 2.x) against a real listening bridge and the real OpenBao.

Both eras: ``mode="legacy"`` (initialize handshake at 2025-11-25, session id), a pinned ``2026-07-28`` and
``mode="auto"`` (the SDK probes ``server/discover`` first). Every tool is called; every ``structuredContent``
is validated against the tool's ``outputSchema``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import jsonschema  # type: ignore[import-untyped]
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from bridge.operations import default_registry
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY
from tests.mcp.conftest import ServerFactory

pytestmark = pytest.mark.integration

MODES = ["legacy", "2026-07-28", "auto"]
ALL_TOOLS = [op.name for op in default_registry().tools()]


@asynccontextmanager
async def connect(url: str, key: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=10) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


class Checked:
    """Calls tools and checks each result against the listed output schema."""

    def __init__(self, client: Client, schemas: dict[str, dict[str, Any]]) -> None:
        self.client = client
        self.schemas = schemas

    async def call(self, name: str, arguments: dict[str, Any], *, error: str | None = None) -> dict[str, Any]:
        result: CallToolResult = await self.client.call_tool(name, arguments)
        structured = result.structured_content
        assert isinstance(structured, dict)
        jsonschema.validate(structured, self.schemas[name], cls=jsonschema.Draft202012Validator)
        assert result.content[0].type == "text"
        assert json.loads(result.content[0].text) == structured
        if error is None:
            assert not result.is_error, structured
            assert "error" not in structured
        else:
            assert result.is_error
            assert structured["error"]["code"] == error, structured
            assert structured["error"]["message"]
        return structured


@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_through_the_sdk(mcp_server: ServerFactory, mode: str) -> None:
    url = await mcp_server()
    async with connect(url, API_KEY_ALICE, mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        if mode != "2026-07-28":  # a pinned version skips discover and initialize, so nothing named the server yet
            assert client.server_info is not None
            assert client.server_info.name == "vault-mcp-bridge"
            assert client.server_capabilities.tools is not None
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ALL_TOOLS
        for tool in listed.tools:
            assert tool.description
            assert len(tool.description) > 40
            assert tool.input_schema["type"] == "object"
            assert tool.output_schema is not None
            assert tool.output_schema["type"] == "object"
            jsonschema.Draft202012Validator.check_schema(tool.output_schema)
            jsonschema.Draft202012Validator.check_schema(tool.input_schema)
            assert tool.annotations is not None
            assert tool.annotations.read_only_hint is not None
            assert tool.annotations.idempotent_hint is not None
            assert tool.annotations.destructive_hint is not None
        t = Checked(client, {tool.name: tool.output_schema or {} for tool in listed.tools})
        folder = f"sdk-{mode.replace('-', '')}-{uuid.uuid4().hex[:8]}"
        path = f"{folder}/db"

        written = await t.call("kv_write", {"path": path, "data": {"user": "app", "pw": "s3cret"}, "cas": 0})
        assert written["version"] == 1
        await t.call("kv_write", {"path": path, "data": {"user": "x"}, "cas": 0}, error="cas_mismatch")
        read = await t.call("kv_read", {"path": path})
        assert read["data"] == {"user": "app", "pw": "s3cret"}
        assert read["version"] == 1
        patched = await t.call("kv_patch", {"path": path, "data": {"pw": None, "port": 5432}})
        assert patched["version"] == 2
        assert (await t.call("kv_read", {"path": path}))["data"] == {"user": "app", "port": 5432}
        assert (await t.call("kv_read", {"path": path, "version": 1}))["data"]["pw"] == "s3cret"
        assert (await t.call("kv_list", {"prefix": folder + "/"}))["keys"] == ["db"]
        meta = await t.call("kv_metadata", {"path": path})
        assert meta["current_version"] == 2
        assert set(meta["versions"]) == {"1", "2"}
        assert (await t.call("kv_delete", {"path": path}))["ok"] is True
        await t.call("kv_read", {"path": path}, error="secret_deleted")
        assert (await t.call("kv_undelete", {"path": path, "versions": [2]}))["ok"] is True
        assert (await t.call("kv_read", {"path": path}))["version"] == 2
        assert (await t.call("kv_destroy", {"path": path, "versions": [1]}))["ok"] is True
        await t.call("kv_read", {"path": path, "version": 1}, error="secret_destroyed")

        plaintext = base64.b64encode(b"attack at dawn").decode()
        enc = await t.call("transit_encrypt", {"key": "sdk-key", "plaintext": plaintext})
        assert enc["ciphertext"].startswith("vault:v1:")
        dec = await t.call("transit_decrypt", {"key": "sdk-key", "ciphertext": enc["ciphertext"]})
        assert dec["plaintext"] == plaintext

        me = await t.call("whoami", {})
        assert me["subject"] == "alice"
        assert me["auth_method"] == "api_key"

        # tool failures: isError results with the REST error codes
        await t.call("kv_read", {"path": f"{folder}/missing"}, error="not_found")
        await t.call("kv_read", {"path": "../bob/db"}, error="invalid_path")
        await t.call("kv_write", {"path": path}, error="invalid_request")            # 'data' missing
        await t.call("kv_write", {"path": path, "data": {}, "extra": 1}, error="invalid_request")
        await t.call("kv_read", {"path": path, "version": "1"}, error="invalid_request")  # strict types
        await t.call("transit_encrypt", {"key": "sdk-key", "plaintext": "not base64!"}, error="invalid_request")
        await t.call("transit_decrypt", {"key": "sdk-key", "ciphertext": "vault:v1:AAAA"}, error="invalid_request")

        with pytest.raises(MCPError) as exc:
            await client.call_tool("no_such_tool", {})
        assert exc.value.code == -32602


@pytest.mark.parametrize("mode", MODES)
async def test_scopes_filter_the_list_and_gate_the_call(mcp_server: ServerFactory, mode: str) -> None:
    url = await mcp_server()
    async with connect(url, API_KEY_READONLY, mode) as client:
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["kv_read", "kv_list", "kv_metadata", "transit_decrypt",
                                                  "transit_verify", "transit_random", "http_request", "whoami",
                                                  "db_creds", "pki_issue", "pki_sign", "ssh_sign", "lease_list",
                                                  "lease_renew"]
        with pytest.raises(MCPError) as exc:
            await client.call_tool("kv_write", {"path": "ro/x", "data": {"a": 1}})
        assert exc.value.code == -31403
        assert exc.value.error.data == {"code": "insufficient_scope", "required_scope": "write"}


async def test_vault_down_is_an_error_result(mcp_server: ServerFactory, unused_tcp_port: int) -> None:
    url = await mcp_server(vault_addr=f"http://127.0.0.1:{unused_tcp_port}", vault_timeout="2s")
    async with connect(url, API_KEY_ALICE, "2026-07-28") as client:
        result = await client.call_tool("kv_read", {"path": "anything"})
        assert result.is_error
        assert isinstance(result.structured_content, dict)
        assert result.structured_content["error"]["code"] == "vault_unavailable"
