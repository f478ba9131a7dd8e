"""Scopes on tools (403 insufficient_scope, nothing runs), RFC 9728 metadata, JWT audience on /mcp."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from tests.conftest import API_KEY_ALICE, API_KEY_READONLY, JWT_SECRET
from tests.mcp.conftest import McpClientFactory, initialize, legacy_headers, modern_body, modern_headers, rpc

pytestmark = pytest.mark.integration

ISSUER = "https://issuer.example"


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iat": now, "exp": now + 300, "iss": ISSUER, **claims}
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, body, OctKey.import_key(JWT_SECRET))


async def test_out_of_scope_tool_is_403_and_nothing_runs(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    path = f"ro-{uuid.uuid4().hex[:8]}/x"
    args = {"name": "kv_write", "arguments": {"path": path, "data": {"a": 1}}}
    session = await initialize(client, API_KEY_READONLY)
    legacy = await client.post("/mcp", json=rpc("tools/call", args), headers=legacy_headers(API_KEY_READONLY, session))
    modern = await client.post("/mcp", json=modern_body("tools/call", args),
                               headers=modern_headers(API_KEY_READONLY, "tools/call", "kv_write"))
    for resp in (legacy, modern):
        assert resp.status == 403
        assert resp.headers["WWW-Authenticate"] == \
            'Bearer realm="vault-mcp-bridge", error="insufficient_scope", scope="write"'
        body = await resp.json()
        assert body["id"] == 1
        assert body["error"]["code"] == -31403
    # nothing was written
    check = await client.get(f"/secrets/{path}", headers={"X-API-Key": API_KEY_ALICE})
    assert check.status == 404
    # unknown tool stays -32602 (not 403) even for a narrow identity
    resp = await client.post("/mcp", json=rpc("tools/call", {"name": "kv_nope"}),
                             headers=legacy_headers(API_KEY_READONLY, session))
    assert resp.status == 200
    assert (await resp.json())["error"]["code"] == -32602


@pytest.mark.parametrize("params", [{"arguments": {}}, {"name": 5}, {"name": "whoami", "arguments": [1]}])
async def test_malformed_tools_call_is_32602(mcp_client: McpClientFactory, params: dict[str, Any]) -> None:
    client = await mcp_client()
    session = await initialize(client, API_KEY_ALICE)
    resp = await client.post("/mcp", json=rpc("tools/call", params), headers=legacy_headers(API_KEY_ALICE, session))
    assert (await resp.json())["error"]["code"] == -32602


async def test_protected_resource_metadata(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(jwt_issuer=ISSUER)
    base = str(client.make_url("")).rstrip("/")
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        resp = await client.get(path)
        assert resp.status == 200
        doc = await resp.json()
        assert doc["resource"] == base + "/mcp"
        assert doc["authorization_servers"] == [ISSUER]
        assert doc["scopes_supported"] == ["read", "write", "delete", "list", "use"]
        assert doc["bearer_methods_supported"] == ["header"]
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": "application/json, text/event-stream"})
    assert resp.status == 401
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in resp.headers["WWW-Authenticate"]
    # the insufficient-scope challenge points at the metadata too (step-up)
    narrow = token(scope="read")
    headers = modern_headers("unused", "tools/call", "kv_write")
    del headers["X-API-Key"]
    headers["Authorization"] = f"Bearer {narrow}"
    resp = await client.post("/mcp", json=modern_body("tools/call", {"name": "kv_write", "arguments": {}}),
                             headers=headers)
    assert resp.status == 403
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="write"' in challenge
    assert "resource_metadata=" in challenge


async def test_metadata_follows_the_configured_resource_url(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(jwt_issuer=ISSUER, mcp_resource_url="https://bridge.example.com/tenant-a/mcp")
    resp = await client.get("/.well-known/oauth-protected-resource/mcp")
    assert (await resp.json())["resource"] == "https://bridge.example.com/tenant-a/mcp"
    resp = await client.post("/mcp", json=rpc("ping"))
    assert ('resource_metadata="https://bridge.example.com/.well-known/oauth-protected-resource/tenant-a/mcp"'
            in resp.headers["WWW-Authenticate"])


async def test_metadata_absent_without_issuer(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    assert (await client.get("/.well-known/oauth-protected-resource/mcp")).status == 404


async def test_jwt_audience_is_validated_on_mcp(mcp_client: McpClientFactory) -> None:
    resource = "https://bridge.example.com/mcp"
    client = await mcp_client(jwt_issuer=ISSUER, jwt_audience=resource, mcp_resource_url=resource)
    headers = modern_headers("unused", "server/discover")
    del headers["X-API-Key"]
    for aud, status in ((resource, 200), ("https://other-service.example", 401), (None, 401)):
        claims = {"aud": aud} if aud else {}
        resp = await client.post("/mcp", json=modern_body("server/discover"),
                                 headers={**headers, "Authorization": f"Bearer {token(**claims)}"})
        assert resp.status == status, aud
