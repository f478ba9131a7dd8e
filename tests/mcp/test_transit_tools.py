"""The new Transit operations as MCP tools (``transit_<op>``, ``transit_create_key``), through the real
/mcp endpoint, with per-agent child tokens against OpenBao."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from tests.conftest import API_KEY_ALICE
from tests.mcp.conftest import initialize, legacy_headers, rpc

pytestmark = pytest.mark.integration


async def call_tool(client: TestClient[Any, Any], session: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/mcp", json=rpc("tools/call", {"name": name, "arguments": args}),
                             headers=legacy_headers(API_KEY_ALICE, session, **{"MCP-Protocol-Version": "2025-11-25"}))
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    body = json.loads(text.split("data: ", 1)[1]) if text.startswith(("event:", "data:")) else json.loads(text)
    result: dict[str, Any] = body["result"]
    return result


async def test_sign_verify_hmac_random_rewrap_as_tools(aiohttp_client: Callable[..., Any],
                                                       child_settings: Callable[..., Settings]) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings()))
    session = await initialize(client, API_KEY_ALICE)
    key = await call_tool(client, session, "transit_create_key", {"key": "mcp-signer", "type": "ecdsa-p256"})
    assert key["isError"] is False
    assert key["structuredContent"]["public_keys"]["1"].startswith("-----BEGIN PUBLIC KEY")
    sig = await call_tool(client, session, "transit_sign", {"key": "mcp-signer", "input": "aGk="})
    signature = sig["structuredContent"]["signature"]
    ok = await call_tool(client, session, "transit_verify", {"key": "mcp-signer", "input": "aGk=",
                                                             "signature": signature})
    assert ok["structuredContent"]["valid"] is True
    mac = await call_tool(client, session, "transit_hmac", {"key": "mcp-mac", "input": "aGk="})
    assert mac["isError"] is True  # no such key yet: HMAC does not create one
    await call_tool(client, session, "transit_create_key", {"key": "mcp-mac"})
    mac = await call_tool(client, session, "transit_hmac", {"key": "mcp-mac", "input": "aGk="})
    assert mac["structuredContent"]["hmac"].startswith("vault:v1:")
    rnd = await call_tool(client, session, "transit_random", {"bytes": 8, "format": "hex"})
    assert len(rnd["structuredContent"]["random_bytes"]) == 16
    enc = await call_tool(client, session, "transit_encrypt", {"key": "mcp-mac", "batch_input": [
        {"plaintext": "aGk=", "reference": "x"}]})
    item = enc["structuredContent"]["batch_results"][0]
    rewrap = await call_tool(client, session, "transit_rewrap", {"key": "mcp-mac", "ciphertext": item["ciphertext"]})
    assert rewrap["structuredContent"]["ciphertext"].startswith("vault:v1:")
    bad = await call_tool(client, session, "transit_create_key", {"key": "mcp-signer", "type": "aes256-gcm96"})
    assert bad["isError"] is True
    assert bad["structuredContent"]["error"]["code"] == "key_type_mismatch"
