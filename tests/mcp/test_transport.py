"""Raw HTTP against /mcp: every status and JSON-RPC code of the transport, both eras, against the real OpenBao."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import pytest

from bridge.mcp.session import SessionCodec
from bridge.operations import default_registry
from tests.conftest import API_KEY_ALICE, API_KEY_BOB
from tests.mcp.conftest import (
    MCP_ACCEPT,
    McpClientFactory,
    initialize,
    legacy_headers,
    modern_body,
    modern_headers,
    rpc,
)

TOOLS = [op.name for op in default_registry().tools()]

pytestmark = pytest.mark.integration


async def _json(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json", resp.content_type
    body: dict[str, Any] = await resp.json()
    return body


# -- Origin, authentication, rate limit: HTTP statuses before any JSON-RPC -------------------------------

@pytest.mark.parametrize("origin", ["http://evil.example", "http://evil.example:8089", "null", "file://x"])
async def test_bad_origin_is_403_before_authentication(mcp_client: McpClientFactory, origin: str) -> None:
    client = await mcp_client()
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "Origin": origin}
    resp = await client.post("/mcp", data="not even json", headers=headers)  # no credentials at all
    assert resp.status == 403
    body = await _json(resp)
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == -31403
    assert "WWW-Authenticate" not in resp.headers
    resp = await client.post("/mcp", json=rpc("ping"), headers={**legacy_headers(API_KEY_ALICE), "Origin": origin})
    assert resp.status == 403
    resp = await client.get("/mcp", headers={"Origin": origin})
    assert resp.status == 403


@pytest.mark.parametrize("origin", ["http://localhost:6274", "http://127.0.0.1", "https://[::1]:9000"])
async def test_local_origins_allowed_by_default(mcp_client: McpClientFactory, origin: str) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=modern_body("server/discover"),
                             headers={**modern_headers(API_KEY_ALICE, "server/discover"), "Origin": origin})
    assert resp.status == 200, await resp.text()


async def test_configured_origins_replace_the_default(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(mcp_allowed_origins="https://app.example.com, https://other.example")
    headers = modern_headers(API_KEY_ALICE, "server/discover")
    ok = await client.post("/mcp", json=modern_body("server/discover"),
                           headers={**headers, "Origin": "https://app.example.com"})
    assert ok.status == 200
    for origin in ("http://localhost:6274", "https://app.example.com.evil.example", "http://app.example.com"):
        resp = await client.post("/mcp", json=modern_body("server/discover"), headers={**headers, "Origin": origin})
        assert resp.status == 403, origin


async def test_own_host_is_an_allowed_origin(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(host="bridge.internal", mcp_resource_url="https://mcp.example.com/mcp")
    headers = modern_headers(API_KEY_ALICE, "server/discover")
    for origin in ("http://bridge.internal:8089", "https://mcp.example.com"):
        resp = await client.post("/mcp", json=modern_body("server/discover"), headers={**headers, "Origin": origin})
        assert resp.status == 200, origin


async def test_no_credentials_is_401_before_jsonrpc(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", data="garbage", headers={"Accept": MCP_ACCEPT,
                                                               "Content-Type": "application/json"})
    assert resp.status == 401
    # no JWT issuer here: the challenge names the API-key scheme (a Bearer challenge would start OAuth)
    assert resp.headers["WWW-Authenticate"] == 'ApiKey realm="vault-mcp-bridge", header="X-API-Key"'
    assert (await _json(resp))["error"]["data"] == {"code": "unauthenticated"}
    resp = await client.post("/mcp", json=rpc("ping"), headers=legacy_headers("wrong-key-xxxxxxxx"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'ApiKey realm="vault-mcp-bridge", header="X-API-Key"'


async def test_every_tools_call_counts_against_the_rate_limit(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(rate_limit_requests=3, rate_limit_window_seconds="60s")
    headers = modern_headers(API_KEY_BOB, "tools/call", "whoami")
    for _ in range(3):
        resp = await client.post("/mcp", json=modern_body("tools/call", {"name": "whoami", "arguments": {}}),
                                 headers=headers)
        assert resp.status == 200
        assert "RateLimit-Remaining" in resp.headers
    resp = await client.post("/mcp", data="not json", headers=headers)  # 429 comes before any parsing
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    error = (await resp.json())["error"]
    assert error["code"] == -31429
    assert error["data"] == {"code": "rate_limited", "retry_after": int(resp.headers["Retry-After"]), "cost": 1}


async def test_delete_and_sessionless_get_are_405(mcp_client: McpClientFactory) -> None:
    """DELETE ends nothing (405); GET is a session's notification stream (tests/mcp/test_subscriptions.py), so a
    GET without a session id, or of the 2026-07-28 era, is 405 too."""
    client = await mcp_client()
    session = await initialize(client, API_KEY_ALICE)
    modern = {**legacy_headers(API_KEY_ALICE), "MCP-Protocol-Version": "2026-07-28"}
    for method, headers in (("DELETE", legacy_headers(API_KEY_ALICE, session)), ("GET", legacy_headers(API_KEY_ALICE)),
                            ("GET", modern)):
        resp = await client.request(method, "/mcp", headers=headers)
        assert resp.status == 405, (method, headers)
        assert "POST" in resp.headers["Allow"]
        assert (await resp.json())["error"]["code"] == -31405
    # DELETE ends nothing: the session still works
    resp = await client.post("/mcp", json=rpc("ping", msg_id=2), headers=legacy_headers(API_KEY_ALICE, session))
    assert resp.status == 200


# -- Accept, content type, JSON-RPC envelope ----------------------------------------------------------------

@pytest.mark.parametrize("accept", [None, "application/json", "text/event-stream", "text/html",
                                    "application/json, text/event-stream;q=0"])
async def test_accept_must_list_json_and_sse(mcp_client: McpClientFactory, accept: str | None) -> None:
    client = await mcp_client()
    headers = modern_headers(API_KEY_ALICE, "server/discover")
    del headers["Accept"]
    if accept is not None:
        headers["Accept"] = accept
    resp = await client.post("/mcp", json=modern_body("server/discover"), headers=headers,
                             skip_auto_headers={"Accept"})  # aiohttp would add "Accept: */*"
    assert resp.status == 406
    assert (await _json(resp))["error"]["code"] == -32600


@pytest.mark.parametrize("accept", ["*/*", "application/*, text/*", "text/event-stream, application/json;q=0.9"])
async def test_accept_wildcards(mcp_client: McpClientFactory, accept: str) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=modern_body("server/discover"),
                             headers={**modern_headers(API_KEY_ALICE, "server/discover"), "Accept": accept})
    assert resp.status == 200


async def test_content_type_must_be_json(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", data=json.dumps(rpc("ping")),
                             headers={**legacy_headers(API_KEY_ALICE), "Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await _json(resp))["error"]["code"] == -32600


async def test_params_must_be_an_object(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "ping", "params": [1]},
                             headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == 400
    body = await _json(resp)
    assert body["id"] == 7
    assert body["error"]["code"] == -32602


async def test_body_too_large_is_413(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(max_body_bytes=2048)
    big = rpc("tools/call", {"name": "kv_write", "arguments": {"path": "x", "data": {"v": "a" * 4096}}})
    resp = await client.post("/mcp", json=big, headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == 413


async def test_parse_error(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", data='{"jsonrpc": "2.0", "id": 1,', headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == 400
    body = await _json(resp)
    assert body == {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": body["error"]["message"],
                                                            "data": {"code": "parse_error"}}}


@pytest.mark.parametrize("payload", [
    [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],          # batch
    {"id": 1, "method": "ping"},                               # no jsonrpc
    {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": True, "method": "ping"},          # id must be string or integer
    {"jsonrpc": "2.0", "id": None, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "method": 7},
    {"jsonrpc": "2.0", "id": 1},                               # neither request nor response
    "just a string",
])
async def test_invalid_request(mcp_client: McpClientFactory, payload: Any) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=payload, headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == 400
    assert (await _json(resp))["error"]["code"] == -32600


# -- handshake era --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("requested", "answered"), [
    ("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"),
    ("2024-11-05", "2025-11-25"), ("1999-01-01", "2025-11-25"),
])
async def test_initialize_negotiates_the_version(mcp_client: McpClientFactory, requested: str, answered: str) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=rpc("initialize", {"protocolVersion": requested, "capabilities": {},
                                                             "clientInfo": {"name": "t", "version": "1"}}),
                             headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == 200
    result = (await _json(resp))["result"]
    assert result["protocolVersion"] == answered
    assert result["capabilities"] == {**MODERN_CAPABILITIES, "logging": {}}  # logging/setLevel: handshake era only
    assert result["serverInfo"]["name"] == "vault-mcp-bridge"
    session = resp.headers["Mcp-Session-Id"]
    assert all(0x21 <= ord(c) <= 0x7E for c in session)


async def test_initialize_needs_a_protocol_version(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=rpc("initialize", {"capabilities": {}}),
                             headers=legacy_headers(API_KEY_ALICE))
    assert (await _json(resp))["error"]["code"] == -32602


async def test_handshake_era_flow(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    session = await initialize(client, API_KEY_ALICE)
    h = legacy_headers(API_KEY_ALICE, session, **{"MCP-Protocol-Version": "2025-11-25"})
    resp = await client.post("/mcp", json=rpc("ping", msg_id="p-1"), headers=h)
    assert await _json(resp) == {"jsonrpc": "2.0", "id": "p-1", "result": {}}
    # a JSON-RPC response from the client, and a notification: 202, no body
    for message in ({"jsonrpc": "2.0", "id": 9, "result": {}}, rpc("notifications/cancelled", {"requestId": 1}, None)):
        resp = await client.post("/mcp", json=message, headers=h)
        assert resp.status == 202
        assert await resp.read() == b""
    for method in ("resources/frobnicate", "subscriptions/listen"):  # unknown, or 2026-07-28 only
        resp = await client.post("/mcp", json=rpc(method, msg_id=3), headers=h)
        assert resp.status == 200
        assert (await _json(resp))["error"]["code"] == -32601
    resp = await client.post("/mcp", json=rpc("tools/list", msg_id=4), headers=h)
    tools = (await _json(resp))["result"]["tools"]
    assert len(tools) == len(TOOLS)
    assert "resultType" not in (await _json(resp))["result"]
    # no MCP-Protocol-Version header: taken as 2025-03-26, still served
    resp = await client.post("/mcp", json=rpc("ping", msg_id=5), headers=legacy_headers(API_KEY_ALICE, session))
    assert resp.status == 200


async def test_logging_set_level_in_the_handshake_era(mcp_client: McpClientFactory) -> None:
    """Accepted with exactly {} (the bridge sends no log notifications); an unknown level is -32602. The
    2026-07-28 era removed the method: 404 (test_modern_unknown_and_removed_methods_are_404)."""
    client = await mcp_client()
    session = await initialize(client, API_KEY_ALICE)
    h = legacy_headers(API_KEY_ALICE, session, **{"MCP-Protocol-Version": "2025-11-25"})
    for level in ("debug", "info", "emergency"):
        resp = await client.post("/mcp", json=rpc("logging/setLevel", {"level": level}), headers=h)
        assert await _json(resp) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    resp = await client.post("/mcp", json=rpc("logging/setLevel", {"level": "loud"}), headers=h)
    assert (await _json(resp))["error"]["code"] == -32602


async def test_unsupported_protocol_version_header_is_400(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    session = await initialize(client, API_KEY_ALICE)
    resp = await client.post("/mcp", json=rpc("ping"),
                             headers=legacy_headers(API_KEY_ALICE, session, **{"MCP-Protocol-Version": "1999-01-01"}))
    assert resp.status == 400
    body = await _json(resp)
    assert body["id"] == 1
    assert body["error"]["data"]["requested"] == "1999-01-01"


async def test_missing_session_is_400(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    for message in (rpc("tools/list"), rpc("notifications/initialized", msg_id=None)):
        resp = await client.post("/mcp", json=message, headers=legacy_headers(API_KEY_ALICE))
        assert resp.status == 400
        assert (await _json(resp))["error"]["code"] == -32600


async def test_forged_and_foreign_sessions_are_404(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    alice = await initialize(client, API_KEY_ALICE)
    bob = await initialize(client, API_KEY_BOB)
    body, mac = alice.rsplit(".", 1)
    forged_owner = "v1.bob" + body[len("v1.alice"):] + "." + mac          # re-labelled, old MAC
    flipped = body + "." + ("A" if mac[0] != "A" else "B") + mac[1:]       # tampered MAC
    for session in (bob, forged_owner, flipped, "not-a-session", alice + "x"):
        resp = await client.post("/mcp", json=rpc("tools/list"), headers=legacy_headers(API_KEY_ALICE, session))
        assert resp.status == 404, session
        assert (await _json(resp))["id"] == 1
    resp = await client.post("/mcp", json=rpc("tools/list"), headers=legacy_headers(API_KEY_ALICE, alice))
    assert resp.status == 200


async def test_expired_session_is_404(mcp_client: McpClientFactory) -> None:
    secret = "shared-session-secret-" + "z" * 16
    client = await mcp_client(mcp_session_secret=secret, mcp_session_ttl="1h")
    key = hashlib.sha256(secret.encode()).digest()
    old = SessionCodec(key, 3600, clock=lambda: time.time() - 3601).issue("alice", "2025-11-25")
    fresh = SessionCodec(key, 3600, clock=lambda: time.time() - 3500).issue("alice", "2025-11-25")
    resp = await client.post("/mcp", json=rpc("ping"), headers=legacy_headers(API_KEY_ALICE, old))
    assert resp.status == 404
    resp = await client.post("/mcp", json=rpc("ping"), headers=legacy_headers(API_KEY_ALICE, fresh))
    assert resp.status == 200


async def test_replicas_sharing_the_secret_accept_each_others_sessions(mcp_client: McpClientFactory) -> None:
    secret = "shared-session-secret-" + "q" * 16
    one = await mcp_client(mcp_session_secret=secret)
    two = await mcp_client(mcp_session_secret=secret)
    other = await mcp_client(mcp_session_secret="another-secret-" + "w" * 20)
    session = await initialize(one, API_KEY_ALICE)
    resp = await two.post("/mcp", json=rpc("tools/list"), headers=legacy_headers(API_KEY_ALICE, session))
    assert resp.status == 200
    resp = await other.post("/mcp", json=rpc("tools/list"), headers=legacy_headers(API_KEY_ALICE, session))
    assert resp.status == 404


# -- 2026-07-28 -------------------------------------------------------------------------------------------------

MODERN_CAPABILITIES = {"tools": {"listChanged": False}, "resources": {"subscribe": True, "listChanged": False},
                       "prompts": {"listChanged": False}, "completions": {}}

async def test_discover(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=modern_body("server/discover"),
                             headers={**modern_headers(API_KEY_ALICE, "server/discover"), "Mcp-Session-Id": "ignored"})
    assert resp.status == 200
    assert "Mcp-Session-Id" not in resp.headers
    result = (await _json(resp))["result"]
    assert result["supportedVersions"] == ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"]
    assert result["capabilities"] == MODERN_CAPABILITIES
    assert result["resultType"] == "complete"
    assert result["ttlMs"] >= 0
    assert result["cacheScope"] in ("public", "private")
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "vault-mcp-bridge"
    assert result["instructions"]


async def test_modern_tools_list_has_cache_hints(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=modern_body("tools/list"),
                             headers=modern_headers(API_KEY_ALICE, "tools/list"))
    result = (await _json(resp))["result"]
    assert result["resultType"] == "complete"
    assert result["cacheScope"] == "private"
    assert result["ttlMs"] >= 0
    assert "nextCursor" not in result


async def test_protocol_version_header_rules(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    headers = modern_headers(API_KEY_ALICE, "tools/list")
    missing = {k: v for k, v in headers.items() if k != "MCP-Protocol-Version"}
    resp = await client.post("/mcp", json=modern_body("tools/list"), headers=missing)
    assert resp.status == 400
    assert (await _json(resp))["error"]["code"] == -32020
    resp = await client.post("/mcp", json=modern_body("tools/list"),
                             headers={**headers, "MCP-Protocol-Version": "2025-11-25"})
    assert resp.status == 400
    assert (await _json(resp))["error"]["code"] == -32020


@pytest.mark.parametrize("version", ["2099-01-01", "2025-11-25"])
async def test_unsupported_version_is_32022(mcp_client: McpClientFactory, version: str) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=modern_body("tools/list", version=version),
                             headers={**modern_headers(API_KEY_ALICE, "tools/list"), "MCP-Protocol-Version": version})
    assert resp.status == 400
    error = (await _json(resp))["error"]
    assert error["code"] == -32022
    assert error["data"] == {"code": "unsupported_protocol_version",
                             "supported": ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"],
                             "requested": version}


async def test_missing_meta_is_32602(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    resp = await client.post("/mcp", json=rpc("tools/list"), headers=modern_headers(API_KEY_ALICE, "tools/list"))
    assert resp.status == 400
    assert (await _json(resp))["error"]["code"] == -32602
    body = modern_body("tools/list")
    del body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    resp = await client.post("/mcp", json=body, headers=modern_headers(API_KEY_ALICE, "tools/list"))
    assert resp.status == 400
    assert (await _json(resp))["error"]["code"] == -32602


async def test_mcp_method_header_rules(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    headers = modern_headers(API_KEY_ALICE, "tools/list")
    del headers["Mcp-Method"]
    for h in (headers, {**headers, "Mcp-Method": "tools/call"}, {**headers, "Mcp-Method": "TOOLS/LIST"}):
        resp = await client.post("/mcp", json=modern_body("tools/list"), headers=h)
        assert resp.status == 400
        assert (await _json(resp))["error"]["code"] == -32020


async def test_mcp_name_header_rules(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    body = modern_body("tools/call", {"name": "whoami", "arguments": {}})
    for name in (None, "kv_read", "=?base64?a3ZfcmVhZA==?=", "=?base64?!!!?="):
        resp = await client.post("/mcp", json=body, headers=modern_headers(API_KEY_ALICE, "tools/call", name))
        assert resp.status == 400, name
        assert (await _json(resp))["error"]["code"] == -32020
    encoded = "=?base64?" + base64.b64encode(b"whoami").decode() + "?="
    for name in ("whoami", encoded):
        resp = await client.post("/mcp", json=body, headers=modern_headers(API_KEY_ALICE, "tools/call", name))
        assert resp.status == 200, name
        assert (await _json(resp))["result"]["structuredContent"]["subject"] == "alice"


async def test_modern_unknown_and_removed_methods_are_404(mcp_client: McpClientFactory) -> None:
    """Methods 2026-07-28 removed (initialize included, when it carries the era's _meta) are HTTP 404 with -32601,
    as unknown ones; so are the removed notifications (without an id: the schema forbids "id": null)."""
    client = await mcp_client()
    for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe",
                   "initialize-ish"):
        resp = await client.post("/mcp", json=modern_body(method, msg_id=500),
                                 headers=modern_headers(API_KEY_ALICE, method))
        assert resp.status == 404, method
        body = await _json(resp)
        assert body["id"] == 500
        assert body["error"]["code"] == -32601
    for method in ("notifications/initialized", "notifications/roots/list_changed"):
        note = modern_body(method)
        del note["id"]
        resp = await client.post("/mcp", json=note, headers=modern_headers(API_KEY_ALICE, method))
        assert resp.status == 404, method
        body = await _json(resp)
        assert "id" not in body
        assert body["error"]["code"] == -32601


async def test_modern_notification_is_202_and_response_is_400(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    note = modern_body("notifications/cancelled", {"requestId": 1})
    del note["id"]
    resp = await client.post("/mcp", json=note, headers=modern_headers(API_KEY_ALICE, "notifications/cancelled"))
    assert resp.status == 202
    assert await resp.read() == b""
    resp = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 3, "result": {}},
                             headers=modern_headers(API_KEY_ALICE, "x"))
    assert resp.status == 400


async def test_pagination(mcp_client: McpClientFactory) -> None:
    client = await mcp_client(mcp_page_size=4)
    session = await initialize(client, API_KEY_ALICE)
    names: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"cursor": cursor} if cursor else {}
        resp = await client.post("/mcp", json=rpc("tools/list", params), headers=legacy_headers(API_KEY_ALICE, session))
        result = (await _json(resp))["result"]
        names += [t["name"] for t in result["tools"]]
        pages += 1
        cursor = result.get("nextCursor")
        if cursor is None or pages > 10:
            break
    assert pages == -(-len(TOOLS) // 4)
    assert names == TOOLS  # the registry's order
    modern = modern_body("tools/list", {"cursor": "bogus!"})
    resp = await client.post("/mcp", json=modern, headers=modern_headers(API_KEY_ALICE, "tools/list"))
    assert (await _json(resp))["error"]["code"] == -32602
