"""``Host`` (421 ``invalid_host``) and ``Origin`` (403 ``origin_not_allowed``) on every route, before
authentication: the DNS-rebinding defence (``bridge/edge.py``), against a real listening bridge and OpenBao."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from tests.conftest import API_KEY_ALICE
from tests.mcp.conftest import modern_body, modern_headers

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
# every kind of route: public, authenticated, operations, MCP, unknown
ROUTES = ["/healthz", "/readyz", "/whoami", "/secrets/db", "/secrets", "/metrics", "/status", "/openapi.json",
          "/nope"]


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        client: Client = await aiohttp_client(create_app(make_settings(**overrides)))
        return client

    return make


async def _raw(client: Client, head: str) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, without the final blank line) as is; status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head.encode() + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- Host ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
async def test_foreign_host_is_421_on_every_route_before_authentication(make_client: MakeClient,
                                                                         route: str) -> None:
    client = await make_client()
    for headers in ({}, ALICE):  # with or without a credential: 421, never 401 / 200
        resp = await client.get(route, headers={"Host": "rebind.attacker.example", **headers})
        assert resp.status == 421, (route, await resp.text())
        body = await resp.json()
        assert body["error"]["code"] == "invalid_host"
        assert "WWW-Authenticate" not in resp.headers
        assert "rebind.attacker.example" not in await resp.text()


async def test_rebinding_request_with_a_valid_key_does_not_reach_vault(make_client: MakeClient) -> None:
    """The attack: a page whose name now points at the bridge sends an agent's request; the browser says
    ``Host: <attacker's name>``. Today's code answered it (200, the secret)."""
    client = await make_client()
    assert (await client.put("/secrets/rebind", json={"data": {"v": "s3cret"}}, headers=ALICE)).status == 200
    resp = await client.get("/secrets/rebind", headers={**ALICE, "Host": "evil.example:8089"})
    assert resp.status == 421
    assert "s3cret" not in await resp.text()


async def test_foreign_host_on_mcp_is_a_jsonrpc_error(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/mcp", json=modern_body("server/discover"),
                             headers={**modern_headers(API_KEY_ALICE, "server/discover"), "Host": "evil.example"})
    assert resp.status == 421
    body = await resp.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == 1  # peeked from the (small) body by the one error renderer
    assert body["error"]["data"]["code"] == "invalid_host"


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8089", "localhost.", "127.0.0.1", "127.0.0.1:1",
                                  "[::1]", "[::1]:8089", "bridge.internal:9999", "mcp.example.com"])
async def test_default_hosts(make_client: MakeClient, host: str) -> None:
    client = await make_client(host="bridge.internal", mcp_resource_url="https://mcp.example.com/mcp")
    resp = await client.get("/whoami", headers={**ALICE, "Host": host})
    assert resp.status == 200, (host, await resp.text())


@pytest.mark.parametrize("host", ["0.0.0.0", "0.0.0.0:8089", "10.0.0.5", "bridge.internal.evil.example",
                                  "a b", "evil.example:99999", "[::1", "[nope]", "", "local host"])
async def test_other_and_malformed_hosts(make_client: MakeClient, host: str) -> None:
    client = await make_client(host="0.0.0.0")  # a wildcard bind address is not a name clients use
    status, _ = await _raw(client, f"GET /healthz HTTP/1.1\r\nHost: {host}")
    assert status in (421, 400), host  # 400: aiohttp's parser refused it first (no echo: tests/test_log_canary.py)
    if host and " " not in host:
        resp = await client.get("/healthz", headers={"Host": host})
        assert resp.status == 421, host


async def test_allowed_hosts_ports_networks_and_wildcard(make_client: MakeClient) -> None:
    client = await make_client(allowed_hosts="api.example, edge.example:8443, 10.0.0.0/8, fd00::/8")
    cases = {
        "api.example": 200, "api.example:1234": 200, "API.EXAMPLE.:443": 200,  # no port in the entry: any port
        "edge.example:8443": 200, "edge.example": 421, "edge.example:443": 421,  # a port: exactly that one
        "10.1.2.3:8089": 200, "10.255.0.1": 200, "11.0.0.1:8089": 421, "[fd00::1]:8089": 200,
        "10.1.2.3.nip.io": 421,  # a name is never matched by a network entry
        "localhost:8089": 200,  # the defaults stay
        "evil.example": 421,
    }
    for host, want in cases.items():
        resp = await client.get("/healthz", headers={"Host": host})
        assert resp.status == want, host
    anyhost = await make_client(allowed_hosts="*")
    assert (await anyhost.get("/whoami", headers={**ALICE, "Host": "whatever.example"})).status == 200


async def test_no_host_passes_and_two_hosts_do_not(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await _raw(client, "GET /healthz HTTP/1.0")  # HTTP/1.0 without Host: not a browser
    assert status == 200, body
    status, body = await _raw(client, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example")
    assert status in (400, 421), body
    assert b"evil.example" not in body


async def test_allowed_hosts_ipv6_port_and_case(make_client: MakeClient) -> None:
    client = await make_client(allowed_hosts="[::2]:80,Example.ORG")
    cases = {"[::2]:80": 200, "[::2]": 421, "[0:0::2]:80": 200, "example.org:1": 200, "EXAMPLE.org": 200,
             "example.org..": 421, "example.org:0": 421}
    for host, want in cases.items():
        assert (await client.get("/healthz", headers={"Host": host})).status == want, host


# -- Origin ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
async def test_foreign_origin_is_403_on_every_route(make_client: MakeClient, route: str) -> None:
    client = await make_client()
    for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
        resp = await client.get(route, headers={**ALICE, "Origin": origin})
        assert resp.status == 403, (route, origin, await resp.text())
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"


async def test_origin_checked_on_rest_writes(make_client: MakeClient) -> None:
    """A page on another origin could POST a 'simple' request with an agent's key it obtained; refused, and
    nothing is written."""
    client = await make_client()
    resp = await client.put("/secrets/origin-test", data=json.dumps({"data": {"v": 1}}),
                            headers={**ALICE, "Content-Type": "application/json", "Origin": "https://evil.example"})
    assert resp.status == 403
    assert (await client.get("/secrets/origin-test", headers=ALICE)).status == 404


async def test_allowed_and_absent_origin(make_client: MakeClient) -> None:
    client = await make_client()
    for headers in ({}, {"Origin": "http://localhost:6274"}, {"Origin": "http://127.0.0.1"}):
        assert (await client.get("/whoami", headers={**ALICE, **headers})).status == 200, headers
    configured = await make_client(mcp_allowed_origins="https://app.example.com")
    ok = await configured.get("/whoami", headers={**ALICE, "Origin": "https://app.example.com"})
    assert ok.status == 200
    refused = await configured.get("/whoami", headers={**ALICE, "Origin": "http://localhost:6274"})
    assert refused.status == 403


async def test_origin_on_mcp_stays_a_jsonrpc_error(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/mcp", json=modern_body("server/discover"),
                             headers={**modern_headers(API_KEY_ALICE, "server/discover"),
                                      "Origin": "http://evil.example"})
    assert resp.status == 403
    body = await resp.json()
    assert body["error"]["code"] == -31403
    assert body["error"]["data"]["code"] == "origin_not_allowed"
