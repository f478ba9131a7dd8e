"""Every REST route against a real OpenBao: success shapes, error codes, scopes, cross-agent isolation,
rate limiting, request ids, health and readiness."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.ratelimit import MemoryRateLimiter, Quota
from bridge.vault.client import VaultClient
from devtools.devvault import DevVault
from tests.auth.conftest import hs256
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
BOB = {"X-API-Key": API_KEY_BOB}
READONLY = {"X-API-Key": API_KEY_READONLY}
Client = TestClient[Any, Any]
MakeBridge = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_bridge(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]) -> MakeBridge:
    async def make(**overrides: Any) -> Client:
        app = create_app(make_settings(**overrides))
        client: Client = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def api(make_bridge: MakeBridge) -> Client:
    return await make_bridge()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def vault_read(bao: DevVault, path: str) -> int:
    """Status of a direct read of ``secret/data/{path}`` with the root token (404 = nothing written)."""
    async with VaultClient(bao.addr) as c:
        try:
            await c.kv.read("secret", path, token=bao.root_token)
        except Exception as exc:
            return int(getattr(exc, "status", 0))
        return 200


# -- success shapes ----------------------------------------------------------------------------------

async def test_write_and_read(api: Client) -> None:
    p = unique("db") + "/creds"
    resp = await api.put(f"/secrets/{p}", json={"data": {"user": "u", "n": 1, "nested": {"a": [1, 2]}}},
                         headers=ALICE)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"path", "version", "created_time"}  # never the data
    assert body["path"] == p
    assert body["version"] == 1
    assert body["created_time"]

    await api.put(f"/secrets/{p}", json={"data": {"user": "v2"}}, headers=ALICE)
    resp = await api.get(f"/secrets/{p}", headers=ALICE)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"path", "data", "version", "created_time", "custom_metadata"}
    assert body["data"] == {"user": "v2"}
    assert body["version"] == 2
    old = await (await api.get(f"/secrets/{p}?version=1", headers=ALICE)).json()
    assert old["version"] == 1
    assert old["data"]["user"] == "u"
    latest = await (await api.get(f"/secrets/{p}?version=0", headers=ALICE)).json()
    assert latest["version"] == 2


async def test_write_lands_in_the_agents_namespace(api: Client, bao: DevVault) -> None:
    p = unique()
    assert (await api.put(f"/secrets/{p}", json={"data": {"k": "v"}}, headers=ALICE)).status == 200
    assert await vault_read(bao, f"mcp/alice/{p}") == 200
    assert await vault_read(bao, p) == 404


async def test_check_and_set(api: Client) -> None:
    p = unique()
    assert (await api.put(f"/secrets/{p}", json={"data": {"a": 1}, "cas": 0}, headers=ALICE)).status == 200
    resp = await api.put(f"/secrets/{p}", json={"data": {"a": 2}, "cas": 0}, headers=ALICE)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "cas_mismatch"
    resp = await api.put(f"/secrets/{p}", json={"data": {"a": 3}, "cas": 5}, headers=ALICE)
    assert resp.status == 409
    assert (await (await api.get(f"/secrets/{p}", headers=ALICE)).json())["data"] == {"a": 1}
    resp = await api.put(f"/secrets/{p}", json={"data": {"a": 4}, "cas": 1}, headers=ALICE)
    assert resp.status == 200
    assert (await resp.json())["version"] == 2


async def test_patch_merges_and_null_removes(api: Client) -> None:
    p = unique()
    await api.put(f"/secrets/{p}", json={"data": {"keep": 1, "drop": 2, "change": 3}}, headers=ALICE)
    resp = await api.patch(f"/secrets/{p}", json={"data": {"drop": None, "change": 33, "new": 4}}, headers=ALICE)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"path", "version", "created_time"}
    assert body["version"] == 2
    assert body["path"] == p
    data = (await (await api.get(f"/secrets/{p}", headers=ALICE)).json())["data"]
    assert data == {"keep": 1, "change": 33, "new": 4}
    resp = await api.patch(f"/secrets/{p}", json={"data": {"x": 1}, "cas": 1}, headers=ALICE)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "cas_mismatch"
    resp = await api.patch(f"/secrets/{unique('missing')}", json={"data": {"x": 1}}, headers=ALICE)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_delete_undelete_destroy_and_their_404s(api: Client) -> None:
    p = unique()
    await api.put(f"/secrets/{p}", json={"data": {"v": 1}}, headers=ALICE)
    await api.put(f"/secrets/{p}", json={"data": {"v": 2}}, headers=ALICE)
    resp = await api.delete(f"/secrets/{p}", headers=ALICE)
    assert resp.status == 204
    assert await resp.read() == b""

    resp = await api.get(f"/secrets/{p}", headers=ALICE)
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["code"] == "secret_deleted"
    assert err["version"] == 2
    assert err["deletion_time"]
    assert "undelete" in err["message"]
    assert (await (await api.get(f"/secrets/{p}?version=1", headers=ALICE)).json())["data"] == {"v": 1}

    resp = await api.post(f"/secrets/{p}:undelete", json={"versions": [2]}, headers=ALICE)
    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    assert (await (await api.get(f"/secrets/{p}", headers=ALICE)).json())["data"] == {"v": 2}

    resp = await api.post(f"/secrets/{p}:destroy", json={"versions": [1]}, headers=ALICE)
    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    resp = await api.get(f"/secrets/{p}?version=1", headers=ALICE)
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["code"] == "secret_destroyed"
    assert err["version"] == 1
    assert "deletion_time" in err

    resp = await api.get(f"/secrets/{unique('nothing')}", headers=ALICE)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await api.get(f"/secrets/{p}?version=99", headers=ALICE)
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["code"] == "version_not_found"  # the secret exists, that version does not
    assert (err["version"], err["current_version"], err["oldest_version"]) == (99, 2, 1)


async def test_list(api: Client) -> None:
    base = unique("dir")
    for sub in ("a", "b", "nested/c"):
        await api.put(f"/secrets/{base}/{sub}", json={"data": {"x": 1}}, headers=ALICE)
    for prefix in (base, base + "/"):
        resp = await api.get("/secrets", params={"prefix": prefix}, headers=ALICE)
        assert resp.status == 200
        assert await resp.json() == {"prefix": prefix, "keys": ["a", "b", "nested/"]}
    resp = await api.get("/secrets", params={"prefix": f"{base}/nested/"}, headers=ALICE)
    assert (await resp.json())["keys"] == ["c"]
    resp = await api.get("/secrets", params={"prefix": unique("empty") + "/"}, headers=ALICE)
    assert resp.status == 200
    assert (await resp.json())["keys"] == []
    for url in ("/secrets", "/secrets?prefix="):
        root = await (await api.get(url, headers=ALICE)).json()
        assert root["prefix"] == ""
        assert base + "/" in root["keys"]


async def test_metadata(api: Client) -> None:
    p = unique()
    await api.put(f"/secrets/{p}", json={"data": {"v": 1}}, headers=ALICE)
    await api.put(f"/secrets/{p}", json={"data": {"v": 2}}, headers=ALICE)
    resp = await api.get(f"/secrets/{p}:metadata", headers=ALICE)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"current_version", "oldest_version", "created_time", "updated_time", "versions",
                         "custom_metadata"}
    assert body["current_version"] == 2
    assert body["oldest_version"] in (0, 1)
    assert set(body["versions"]) == {"1", "2"}
    assert set(body["versions"]["1"]) >= {"created_time", "deletion_time", "destroyed"}
    resp = await api.get(f"/secrets/{unique('none')}:metadata", headers=ALICE)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_transit_round_trip_and_key_naming(api: Client, bao: DevVault) -> None:
    key = unique("k")
    plaintext = base64.b64encode(b"attack at dawn").decode()
    resp = await api.post("/transit/encrypt", json={"key": key, "plaintext": plaintext}, headers=ALICE)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"ciphertext", "key_version"}
    assert body["ciphertext"].startswith("vault:v1:")
    assert body["key_version"] == 1
    resp = await api.post("/transit/decrypt", json={"key": key, "ciphertext": body["ciphertext"]}, headers=ALICE)
    assert resp.status == 200
    assert await resp.json() == {"plaintext": plaintext}
    async with VaultClient(bao.addr) as c:  # the Vault key is {DEFAULT_PREFIX}.{agent}.{key}
        assert (await c.request("GET", f"transit/keys/mcp.alice.{key}", operation="t", token=bao.root_token)).data
    # bob's key of the same name is another Vault key: alice's ciphertext does not decrypt with it
    resp = await api.post("/transit/decrypt", json={"key": key, "ciphertext": body["ciphertext"]}, headers=BOB)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "key_not_found"  # bob has no key of that name


async def test_whoami_and_echo_headers(api: Client) -> None:
    resp = await api.get("/whoami", headers=ALICE)
    body = await resp.json()
    assert "kv_write" in body.pop("capabilities")  # the capability check: tests/mcp/test_capabilities.py
    assert body == {"subject": "alice", "auth_method": "api_key", "scopes": ["delete", "list", "read", "write"],
                    "vault_path_prefix": "secret/data/mcp/alice/"}
    token = hs256({"sub": "alice"})
    resp = await api.get("/echo-headers", headers={**ALICE, "Authorization": f"Bearer {token}",
                                                   "Cookie": "session=abc", "X-Vault-Token": "s.leak",
                                                   "X-Custom": "visible"})
    assert resp.status == 200
    headers = (await resp.json())["headers"]
    for name in ("Authorization", "X-API-Key", "Cookie", "X-Vault-Token"):
        assert headers[name] == "[redacted]"
    assert headers["X-Custom"] == "visible"
    text = await resp.text()
    for secret in (API_KEY_ALICE, token, "session=abc", "s.leak"):
        assert secret not in text


async def test_health_and_readiness(api: Client, make_bridge: MakeBridge) -> None:
    resp = await api.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["vault"]["reachable"] is True
    assert body["vault"]["sealed"] is False
    assert body["vault"]["version"].startswith("2.")
    resp = await api.get("/readyz")
    assert resp.status == 200

    bad = await make_bridge(vault_token="s.this-token-does-not-exist")
    resp = await bad.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["token_valid"] is False
    assert (await bad.get("/healthz")).status == 200  # liveness is not readiness


# -- errors --------------------------------------------------------------------------------------------

async def test_unknown_route_and_method(api: Client) -> None:
    resp = await api.get("/nope", headers=ALICE)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await api.put("/secrets/x:metadata", json={"data": {}}, headers=ALICE)
    assert resp.status == 405
    resp = await api.post("/secrets/x", json={"data": {}}, headers=ALICE)
    assert resp.status == 405
    assert "PUT" in (await resp.json())["error"]["message"]


async def test_payload_too_large(make_bridge: MakeBridge, bao: DevVault) -> None:
    api = await make_bridge(max_body_bytes=1024)
    p = unique()
    big = json.dumps({"data": {"blob": "x" * 2000}}).encode()
    resp = await api.put(f"/secrets/{p}", data=big, headers={**ALICE, "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(4):
            yield b" " * 600
        yield big

    resp = await api.put(f"/secrets/{p}", data=chunks(), headers={**ALICE, "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    resp = await api.post("/transit/encrypt", data=big, headers={**ALICE, "Content-Type": "application/json"})
    assert resp.status == 413
    assert await vault_read(bao, f"mcp/alice/{p}") == 404


async def test_unsupported_media_type(api: Client, bao: DevVault) -> None:
    p = unique()
    body = json.dumps({"data": {"a": 1}})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = dict(ALICE)
        if ctype:
            headers["Content-Type"] = ctype
        resp = await api.put(f"/secrets/{p}", data=body.encode(), headers=headers)
        assert resp.status == 415, ctype
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert await vault_read(bao, f"mcp/alice/{p}") == 404


BAD_BODIES: list[tuple[str, str, Any]] = [
    ("PUT", "", "{not json"),
    ("PUT", "", "[]"),
    ("PUT", "", '"str"'),
    ("PUT", "", "{}"),
    ("PUT", "", '{"data": "string"}'),
    ("PUT", "", '{"data": [1, 2]}'),
    ("PUT", "", '{"data": {"a": 1}, "extra": 1}'),
    ("PUT", "", '{"data": {"a": 1}, "cas": -1}'),
    ("PUT", "", '{"data": {"a": 1}, "cas": "1"}'),
    ("PATCH", "", '{"data": null}'),
    ("PATCH", "", '{"patch": {"a": 1}}'),
    ("POST", ":undelete", "{}"),
    ("POST", ":undelete", '{"versions": []}'),
    ("POST", ":undelete", '{"versions": [0]}'),
    ("POST", ":destroy", '{"versions": ["1"]}'),
    ("POST", ":destroy", '{"versions": 1}'),
]


@pytest.mark.parametrize(("method", "suffix", "body"), BAD_BODIES)
async def test_bad_bodies_are_400_and_write_nothing(api: Client, bao: DevVault, method: str, suffix: str,
                                                    body: str) -> None:
    p = unique()
    resp = await api.request(method, f"/secrets/{p}{suffix}", data=body.encode(),
                             headers={**ALICE, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_request"
    assert err["message"]
    assert await vault_read(bao, f"mcp/alice/{p}") == 404


@pytest.mark.parametrize("body", [
    {"key": "Bad.Key", "plaintext": "eA=="},
    {"key": "k", "plaintext": "not base64!"},
    {"key": "k"},
    {"key": "../k", "plaintext": "eA=="},
    {"key": "k\n", "plaintext": "eA=="},
    {"key": "k", "plaintext": "eA==", "context": "x"},
])
async def test_bad_transit_bodies(api: Client, body: dict[str, Any]) -> None:
    resp = await api.post("/transit/encrypt", json=body, headers=ALICE)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    resp = await api.post("/transit/decrypt", json={"key": body["key"], "ciphertext": ""}, headers=ALICE)
    assert resp.status == 400


async def test_bad_version_parameter(api: Client) -> None:
    for v in ("abc", "-1", "1.5", "9999999999"):
        resp = await api.get("/secrets/x", params={"version": v}, headers=ALICE)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"


# -- scopes and isolation ------------------------------------------------------------------------------

async def test_scope_denials_name_the_scope(api: Client) -> None:
    p = unique()
    await api.put(f"/secrets/{p}", json={"data": {"a": 1}}, headers=ALICE)
    assert (await api.get(f"/secrets/{p}", headers=READONLY)).status == 200  # same agent, read scope
    checks = [("PUT", f"/secrets/{p}", {"data": {"a": 2}}, "write"),
              ("PATCH", f"/secrets/{p}", {"data": {"a": 2}}, "write"),
              ("DELETE", f"/secrets/{p}", None, "delete"),
              ("POST", f"/secrets/{p}:undelete", {"versions": [1]}, "write"),
              ("POST", f"/secrets/{p}:destroy", {"versions": [1]}, "delete"),
              ("POST", "/transit/encrypt", {"key": "k", "plaintext": "eA=="}, "write")]
    for method, url, body, scope in checks:
        resp = await api.request(method, url, json=body, headers=READONLY)
        assert resp.status == 403, (method, url)
        err = (await resp.json())["error"]
        assert err["code"] == "forbidden"
        assert f"'{scope}'" in err["message"]
    writer = {"Authorization": f"Bearer {hs256({'sub': 'alice', 'scopes': ['write']})}"}
    for method, url, scope in [("GET", f"/secrets/{p}", "read"), ("GET", f"/secrets/{p}:metadata", "read"),
                               ("GET", "/secrets?prefix=", "list"), ("DELETE", f"/secrets/{p}", "delete")]:
        resp = await api.request(method, url, headers=writer)
        assert resp.status == 403
        assert f"'{scope}'" in (await resp.json())["error"]["message"]
    assert (await (await api.get(f"/secrets/{p}", headers=ALICE)).json())["version"] == 1


async def test_cross_agent_isolation_on_every_route(api: Client) -> None:
    p = unique("shared-name")
    await api.put(f"/secrets/{p}", json={"data": {"owner": "alice"}}, headers=ALICE)
    await api.put(f"/secrets/{p}", json={"data": {"owner": "alice", "v": 2}}, headers=ALICE)

    assert (await api.get(f"/secrets/{p}", headers=BOB)).status == 404
    assert (await api.get(f"/secrets/{p}?version=1", headers=BOB)).status == 404
    assert (await api.get(f"/secrets/{p}:metadata", headers=BOB)).status == 404
    assert (await api.patch(f"/secrets/{p}", json={"data": {"owner": "bob"}}, headers=BOB)).status == 404
    bob_root = await (await api.get("/secrets", headers=BOB)).json()
    assert p not in bob_root["keys"]
    # bob's writes, deletes and destroys of the same name touch only bob's own secret
    assert (await api.put(f"/secrets/{p}", json={"data": {"owner": "bob"}}, headers=BOB)).status == 200
    assert (await api.delete(f"/secrets/{p}", headers=BOB)).status == 204
    assert (await api.post(f"/secrets/{p}:destroy", json={"versions": [1, 2]}, headers=BOB)).status == 200
    assert (await api.post(f"/secrets/{p}:undelete", json={"versions": [1]}, headers=BOB)).status == 200
    # traversal out of bob's namespace is refused
    for target in (f"/secrets/..%2Falice%2F{p}", f"/secrets/%252E%252E%252Falice%252F{p}"):  # (see test_paths)
        resp = await api.get(target, headers=BOB)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_path"
    resp = await api.get("/secrets", params={"prefix": "../alice/"}, headers=BOB)
    assert resp.status == 400

    mine = await (await api.get(f"/secrets/{p}", headers=ALICE)).json()
    assert mine["data"] == {"owner": "alice", "v": 2}
    assert mine["version"] == 2
    assert (await (await api.get(f"/secrets/{p}?version=1", headers=ALICE)).json())["data"] == {"owner": "alice"}
    meta = await (await api.get(f"/secrets/{p}:metadata", headers=ALICE)).json()
    assert meta["current_version"] == 2
    assert not meta["versions"]["1"]["destroyed"]
    assert p in (await (await api.get("/secrets", headers=ALICE)).json())["keys"]


# -- rate limiting, request ids ------------------------------------------------------------------------

async def test_rate_limit(make_bridge: MakeBridge) -> None:
    api = await make_bridge(rate_limit_requests=3, rate_limit_window_seconds="60s")
    for remaining in (2, 1, 0):
        resp = await api.get("/whoami", headers=ALICE)
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
        assert 0 < int(resp.headers["RateLimit-Reset"]) <= 60
    resp = await api.get("/whoami", headers=ALICE)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert resp.headers["X-Request-Id"]
    assert (await api.get("/whoami", headers=BOB)).status == 200  # per agent
    assert (await api.get("/healthz")).status == 200  # unauthenticated routes are not limited


async def test_rate_limit_is_a_bucket_with_a_burst_through_rest(aiohttp_client: Callable[..., Any],
                                                                make_settings: Callable[..., Settings]) -> None:
    now = [100.0]
    app = create_app(make_settings(rate_limit_requests=60, rate_limit_window_seconds=60, rate_limit_burst=2),
                     limiter=MemoryRateLimiter(Quota(60, 60.0, 2), clock=lambda: now[0]))
    api: Client = await aiohttp_client(app)
    assert [(await api.get("/whoami", headers=ALICE)).status for _ in range(2)] == [200, 200]
    resp = await api.get("/whoami", headers=ALICE)
    assert resp.status == 429
    assert (resp.headers["Retry-After"], resp.headers["RateLimit-Reset"]) == ("1", "1")
    now[0] += 1.0  # one token a second
    resp = await api.get("/whoami", headers=ALICE)
    assert resp.status == 200
    assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("2", "0")
    assert resp.headers["RateLimit-Reset"] == "2"  # full again in two seconds


async def test_an_api_key_carries_its_own_limit_and_a_jwt_cannot_raise_its_own(make_bridge: MakeBridge) -> None:
    own_key, plain_key = "own-limit-key-" + "o" * 16, "plain-limit-key-" + "p" * 16
    keys = {own_key: {"agent": "carol", "rate_limit": {"requests": 3, "window_seconds": "1h"}},
            plain_key: {"agent": "carol"}}
    api = await make_bridge(api_keys_json=json.dumps(keys), rate_limit_requests=100, rate_limit_window_seconds="1h",
                            rate_limit_burst=10)
    resp = await api.get("/whoami", headers={"X-API-Key": own_key})
    # its own limit, and its own burst (its own requests, not RATE_LIMIT_BURST)
    assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("3", "2")
    assert [(await api.get("/whoami", headers={"X-API-Key": own_key})).status for _ in range(3)] == [200, 200, 429]
    # carol's key without a limit of its own spends carol's default bucket, untouched by the other key's
    resp = await api.get("/whoami", headers={"X-API-Key": plain_key})
    assert (resp.status, resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == (200, "10", "9")
    # a JWT that claims a bigger limit gets the default all the same
    token = hs256({"sub": "dave", "rate_limit": {"requests": 1_000_000, "window_seconds": 1, "burst": 1_000_000},
                   "rate_limit_requests": 1_000_000})
    resp = await api.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("10", "9")


async def test_request_id(api: Client) -> None:
    # the request id is always the bridge's own; a client's id is logged and audited beside it
    resp = await api.get("/whoami", headers={**ALICE, "X-Request-Id": "trace-123.abc:7"})
    assert resp.headers["X-Request-Id"] != "trace-123.abc:7"
    assert len(resp.headers["X-Request-Id"]) == 32
    for bad in ("has spaces", "x" * 200, "semi;colon"):
        resp = await api.get("/whoami", headers={**ALICE, "X-Request-Id": bad})
        assert resp.headers["X-Request-Id"] != bad
        assert len(resp.headers["X-Request-Id"]) == 32
    made = {(await api.get(url, headers=ALICE)).headers["X-Request-Id"]
            for url in ("/whoami", "/healthz", "/nope", "/secrets/..")}
    assert len(made) == 4
    assert all(len(m) == 32 for m in made)
    resp = await api.get("/whoami")  # 401 responses carry one too
    assert resp.status == 401
    assert resp.headers["X-Request-Id"]
