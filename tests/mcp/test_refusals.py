"""Every refusal on ``/mcp`` is a JSON-RPC error an MCP client can show (issue 10), and the 401 challenge names
the API-key scheme; ``WWW-Authenticate`` and the RFC 9728 metadata never carry a raw ``Host`` (issue 9).

Each non-2xx answer keeps its HTTP status and headers and carries
``{"jsonrpc": "2.0", "id": <the request's id or null>, "error": {"code", "message", "data": {"code",
"retry_after"?}}}``: the middlewares' refusals (Origin, authentication, rate limit, body size, router) as well
as the handler's own. Raw HTTP against a real listening bridge and the real OpenBao; the official SDK shows
the bridge's messages in its exception text.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bridge.app import create_app
from bridge.config import Settings
from bridge.errors import BridgeError
from devtools.devvault import free_port
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY
from tests.mcp.conftest import (
    MCP_ACCEPT,
    McpClientFactory,
    ServerFactory,
    legacy_headers,
    modern_body,
    modern_headers,
    rpc,
)

pytestmark = pytest.mark.integration

API_KEY_CHALLENGE = 'ApiKey realm="vault-mcp-bridge", header="X-API-Key"'
ISSUER = "https://issuer.example"


@dataclass
class Refusal:
    """One request that the bridge refuses on /mcp, and what the answer must carry."""

    status: int
    rpc_code: int
    data_code: str
    body: Any = None  # a dict is sent as JSON; bytes as is
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    settings: dict[str, Any] = field(default_factory=dict)
    msg_id: int | str | None = 7  # the id the answer must carry
    kept_headers: tuple[str, ...] = ()
    message: str = ""  # a fragment of the bridge's message
    before: int = 0  # requests to spend first (rate limit)


def _call(name: str = "whoami", args: dict[str, Any] | None = None, msg_id: int | str = 7) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": args or {}}, msg_id=msg_id)


REFUSALS: dict[str, Refusal] = {
    "401 no credential": Refusal(
        401, -31401, "unauthenticated", _call(), {"Accept": MCP_ACCEPT, "Content-Type": "application/json"},
        kept_headers=("WWW-Authenticate",), message="X-API-Key"),
    "401 wrong API key": Refusal(
        401, -31401, "unauthenticated", _call(msg_id="req-a"), legacy_headers("wrong-key-" + "x" * 20),
        msg_id="req-a", kept_headers=("WWW-Authenticate",), message="invalid API key"),
    "403 Origin": Refusal(
        403, -31403, "origin_not_allowed", _call(), {**legacy_headers(API_KEY_ALICE), "Origin": "http://evil.example"},
        message="Origin not allowed"),
    "403 scope": Refusal(
        403, -31403, "insufficient_scope", modern_body("tools/call", {"name": "kv_write", "arguments": {}}, msg_id=7),
        modern_headers(API_KEY_READONLY, "tools/call", "kv_write"), kept_headers=("WWW-Authenticate",),
        message="'write' scope"),
    "404 route": Refusal(404, -31404, "not_found", _call(), legacy_headers(API_KEY_ALICE), message="No such route"),
    "404 session": Refusal(
        404, -32600, "session_not_found", _call(), legacy_headers(API_KEY_ALICE, "v1.forged"),
        message="Session not found"),
    "405 GET": Refusal(405, -31405, "method_not_allowed", None, legacy_headers(API_KEY_ALICE), method="GET",
                       msg_id=None, kept_headers=("Allow",), message="GET"),
    "406 Accept": Refusal(
        406, -32600, "not_acceptable", _call(), {**legacy_headers(API_KEY_ALICE), "Accept": "application/json"},
        message="Accept"),
    "413 body": Refusal(
        413, -31413, "payload_too_large", _call("kv_write", {"path": "x", "data": {"v": "a" * 4096}}),
        legacy_headers(API_KEY_ALICE), settings={"max_body_bytes": 2048}, msg_id=None, message="2048 bytes"),
    "415 Content-Type": Refusal(
        415, -32600, "unsupported_media_type", json.dumps(_call()).encode(),
        {**legacy_headers(API_KEY_ALICE), "Content-Type": "text/plain"}, message="Content-Type"),
    "429 rate limit": Refusal(
        429, -31429, "rate_limited", _call(), legacy_headers(API_KEY_ALICE),
        settings={"rate_limit_requests": 2, "rate_limit_window_seconds": "60s"}, before=2,
        kept_headers=("Retry-After", "RateLimit-Limit"), message="Rate limit"),
    "503 limiter down": Refusal(
        503, -31503, "rate_limiter_unavailable", _call(), legacy_headers(API_KEY_ALICE),
        settings={"rate_limit_backend": "redis", "redis_url": "redis://127.0.0.1:{free_port}/0",
                  "rate_limit_fail_mode": "closed", "redis_timeout": "0.3s"},
        kept_headers=("Retry-After",), message="rate limiter"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
async def test_every_refusal_is_a_jsonrpc_error(mcp_client: McpClientFactory, name: str) -> None:
    case = REFUSALS[name]
    overrides = {k: v.format(free_port=free_port()) if isinstance(v, str) else v for k, v in case.settings.items()}
    client = await mcp_client(**overrides)
    url = "/mcp/" if name == "404 route" else "/mcp"  # /mcp/ is not routed: the router's 404
    payload = json.dumps(case.body).encode() if isinstance(case.body, dict) else case.body
    for _ in range(case.before):
        spent = await client.post(url, data=json.dumps(_call(msg_id=1)), headers=case.headers)
        assert spent.status != 429
    resp = await client.request(case.method, url, data=payload, headers=case.headers)
    assert resp.status == case.status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"jsonrpc", "id", "error"}
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == case.msg_id
    error = body["error"]
    assert error["code"] == case.rpc_code
    assert case.message in error["message"]
    assert error["data"]["code"] == case.data_code
    for header in case.kept_headers:
        assert resp.headers.get(header), header
    if "Retry-After" in resp.headers:
        assert error["data"]["retry_after"] == int(resp.headers["Retry-After"])
    else:
        assert "retry_after" not in error["data"]
    assert resp.headers["X-Request-Id"]


@pytest.mark.parametrize(("status", "code", "rpc_code", "retry"), [
    (400, "invalid_request", -32600, None),  # e.g. a body check of another middleware
    (421, "invalid_host", -31421, None),
    (503, "vault_unavailable", -31503, "5"),
    (504, "vault_timeout", -31504, "5"),
])
async def test_a_middleware_of_any_helper_is_rendered_too(aiohttp_client: Callable[..., Awaitable[Any]],
                                                          make_settings: Callable[..., Settings], status: int,
                                                          code: str, rpc_code: int, retry: str | None) -> None:
    """Rendering is one place: a refusal raised by any middleware (here a stand-in for those of other parts of
    the bridge) is a JSON-RPC error on /mcp and REST JSON elsewhere, with no work on its side."""
    app = create_app(make_settings())

    @web.middleware
    async def stand_in(request: web.Request, handler: Any) -> web.StreamResponse:
        raise BridgeError("Refused by a middleware.", status=status, code=code,
                          headers={"Retry-After": retry} if retry else None)

    app.middlewares.append(stand_in)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    resp = await client.post("/mcp", json=rpc("tools/list", msg_id=41), headers=legacy_headers(API_KEY_ALICE))
    assert resp.status == status
    assert resp.headers.get("Retry-After") == retry
    data: dict[str, Any] = {"code": code, **({"retry_after": int(retry)} if retry else {})}
    assert await resp.json() == {"jsonrpc": "2.0", "id": 41, "error": {
        "code": rpc_code, "message": "Refused by a middleware.", "data": data}}
    rest = await client.get("/whoami", headers={"X-API-Key": API_KEY_ALICE})
    assert rest.status == status
    assert await rest.json() == {"error": {"code": code, "message": "Refused by a middleware."}}


async def test_the_id_is_peeked_only_from_small_bodies(mcp_client: McpClientFactory) -> None:
    """The id of a request refused before its handler read the body comes from a bounded peek: a body over
    the peek limit (or chunked, with no Content-Length) is not read, and the answer's id is null."""
    client = await mcp_client()
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json"}
    small = await client.post("/mcp", data=json.dumps(rpc("ping", msg_id=99)), headers=headers)
    assert (small.status, (await small.json())["id"]) == (401, 99)
    padded = rpc("tools/call", {"name": "kv_write", "arguments": {"path": "x", "data": {"v": "a" * 70_000}}},
                 msg_id=99)
    big = await client.post("/mcp", data=json.dumps(padded), headers=headers)
    assert (big.status, (await big.json())["id"]) == (401, None)

    async def chunks() -> Any:
        yield json.dumps(rpc("ping", msg_id=99)).encode()

    chunked = await client.post("/mcp", data=chunks(), headers=headers)
    assert (chunked.status, (await chunked.json())["id"]) == (401, None)


# -- the 401 challenge -----------------------------------------------------------------------------------

async def test_a_wrong_api_key_is_never_an_oauth_challenge(mcp_client: McpClientFactory) -> None:
    """Without JWT + issuer, every 401 names the API-key scheme; with an issuer, a wrong *API key* still does
    (only a missing credential or a bad bearer token points at the RFC 9728 metadata)."""
    client = await mcp_client()
    for headers in ({"Accept": MCP_ACCEPT, "Content-Type": "application/json"},
                    legacy_headers("wrong-key-" + "x" * 20)):
        resp = await client.post("/mcp", json=rpc("ping"), headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == API_KEY_CHALLENGE
    resp = await client.post("/mcp", json=rpc("ping"), headers=legacy_headers("wrong-key-" + "x" * 20))
    assert (await resp.json())["error"]["message"].startswith("invalid API key")

    client = await mcp_client(jwt_issuer=ISSUER)
    resp = await client.post("/mcp", json=rpc("ping"), headers=legacy_headers("wrong-key-" + "x" * 20))
    assert resp.headers["WWW-Authenticate"] == API_KEY_CHALLENGE
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": MCP_ACCEPT})
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="vault-mcp-bridge", resource_metadata="')
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": MCP_ACCEPT, "Authorization": "Bearer x.y.z"})
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="vault-mcp-bridge", error="invalid_token"')


@pytest.mark.parametrize("host", ['evil.example", error="x', 'a"b:80', "evil.example/x?", "two words"])
async def test_a_raw_host_never_reaches_the_challenge_or_the_metadata(mcp_client: McpClientFactory,
                                                                      host: str) -> None:
    # ALLOWED_HOSTS=* (a proxy in front checks Host): the edge lets every Host through, so the challenge and
    # the metadata document must be safe on their own. (With the default ALLOWED_HOSTS such a Host is 421.)
    client = await mcp_client(jwt_issuer=ISSUER, host="127.0.0.1", port=8089, allowed_hosts="*")
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": MCP_ACCEPT, "Host": host})
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge == ('Bearer realm="vault-mcp-bridge", '
                         'resource_metadata="http://127.0.0.1:8089/.well-known/oauth-protected-resource/mcp"')
    doc = await (await client.get("/.well-known/oauth-protected-resource/mcp", headers={"Host": host})).json()
    assert doc["resource"] == "http://127.0.0.1:8089/mcp"
    # a plain host[:port] is still used as the client reached it; MCP_RESOURCE_URL wins over any Host
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": MCP_ACCEPT, "Host": "bridge.example:8443"})
    assert 'resource_metadata="http://bridge.example:8443/.well-known/' in resp.headers["WWW-Authenticate"]
    client = await mcp_client(jwt_issuer=ISSUER, mcp_resource_url="https://mcp.example.com/mcp", allowed_hosts="*")
    resp = await client.post("/mcp", json=rpc("ping"), headers={"Accept": MCP_ACCEPT, "Host": host})
    assert ('resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
            in resp.headers["WWW-Authenticate"])


# -- the official SDK shows the bridge's message ---------------------------------------------------------

def _mcp_error(exc: BaseException) -> MCPError:
    """The SDK's ``MCPError``: raised as is by a call, or inside its task groups' ``ExceptionGroup``s when the
    connection itself is refused (the printed traceback shows it)."""
    while isinstance(exc, BaseExceptionGroup):
        assert len(exc.exceptions) == 1, exc.exceptions
        exc = exc.exceptions[0]
    assert isinstance(exc, MCPError), repr(exc)
    return exc


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_shows_401_and_429_messages(mcp_server: ServerFactory, mode: str) -> None:
    url = await mcp_server(rate_limit_requests=4, rate_limit_window_seconds="60s")
    with pytest.raises(BaseException) as wrong:  # noqa: PT011 - an MCPError, possibly inside ExceptionGroups
        async with (httpx2.AsyncClient(headers={"X-API-Key": "wrong-key-" + "x" * 20}, timeout=10) as http,
                    Client(streamable_http_client(url, http_client=http), mode=mode) as client):
            await client.list_tools()
    error = _mcp_error(wrong.value)
    assert str(error) == "invalid API key: the X-API-Key header matches no key configured on this bridge."
    assert error.error.data == {"code": "unauthenticated"}
    assert "invalid API key" in "".join(traceback.format_exception(wrong.value))

    async with (httpx2.AsyncClient(headers={"X-API-Key": API_KEY_ALICE}, timeout=10) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode) as client):
        limited: MCPError | None = None
        for _ in range(5):  # the handshake spent one or two of the four
            try:
                await client.call_tool("whoami", {})
            except MCPError as exc:
                limited = exc
                break
    assert limited is not None
    assert str(limited).startswith("Rate limit exceeded for this request: 4 requests per 60s")
    assert limited.error.data["code"] == "rate_limited"
    assert limited.error.data["retry_after"] >= 1
