"""Vault faults, injected with the in-process fake Vault, through the client and through the bridge.

Timeouts → 504 ``vault_timeout``; 5xx → never a 500; sealed → 503 ``vault_sealed``; 403 → 403; 429 → 429
``vault_rate_limited`` with ``Retry-After``; connection refused → 503 ``vault_unavailable``; and the bridge
starts while Vault is unreachable, answers 503, and works once Vault is back (with AppRole it logs in then).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from bridge.app import create_app
from bridge.config import Settings
from bridge.vault.client import VaultClient
from bridge.vault.errors import (
    VaultConnectionError,
    VaultPermissionDeniedError,
    VaultRateLimitedError,
    VaultSealedError,
    VaultServerError,
    VaultTimeoutError,
    VaultUnavailableError,
)
from devtools.devvault import free_port
from devtools.fakevault import POLICY_DENIED_BODY, FakeVault
from tests.conftest import API_KEY_ALICE, API_KEYS, until, until_status
from tests.mcp.conftest import modern_body, modern_headers

ALICE = {"X-API-Key": API_KEY_ALICE}
Client = TestClient[Any, Any]
MakeBridge = Callable[..., Awaitable[Client]]


def settings_for(addr: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"vault_addr": addr, "api_keys_json": json.dumps(API_KEYS), "rate_limit_enabled": False,
                            "ready_probe_interval": 0.1}
    if "vault_breaker_threshold" in Settings.model_fields:
        base["vault_breaker_threshold"] = 0  # these tests are about each single fault, not the breaker
    base.update(overrides)
    return Settings.from_env({}, **base)


@pytest.fixture
def make_bridge(fake_vault: FakeVault, aiohttp_client: Callable[..., Any]) -> MakeBridge:
    async def make(**overrides: Any) -> Client:
        overrides.setdefault("vault_token", fake_vault.root_token)
        client: Client = await aiohttp_client(create_app(settings_for(fake_vault.addr, **overrides)))
        return client

    return make


@pytest.fixture
async def vault(fake_vault: FakeVault) -> AsyncIterator[VaultClient]:
    # 1 s: generous for a loaded CI machine, yet well below the 3 s the slow fake takes
    async with VaultClient(fake_vault.addr, timeout=1.0, retry_backoff=0.01) as c:
        yield c


# -- through the client ----------------------------------------------------------------------------------

async def test_client_timeout(fake_vault: FakeVault, vault: VaultClient) -> None:
    fake_vault.slow("secret/*", 3.0)
    started = time.perf_counter()
    with pytest.raises(VaultTimeoutError) as info:
        await vault.kv.read("secret", "mcp/alice/db", token=fake_vault.root_token)
    assert time.perf_counter() - started < 2.5
    assert "alice" not in str(info.value)
    assert fake_vault.root_token not in str(info.value)


@pytest.mark.parametrize(("status", "body", "exc"), [
    (500, {"errors": ["internal error"]}, VaultServerError),
    (500, "<html>oops</html>", VaultServerError),
    (501, {"errors": []}, VaultServerError),
    (502, "bad gateway", VaultUnavailableError),
    (503, {"errors": ["standby"]}, VaultUnavailableError),
    (504, None, VaultUnavailableError),
    (503, {"errors": ["Vault is sealed"]}, VaultSealedError),
    (403, POLICY_DENIED_BODY, VaultPermissionDeniedError),
    (429, {"errors": ["rate limit quota exceeded"]}, VaultRateLimitedError),
])
async def test_client_maps_status(fake_vault: FakeVault, vault: VaultClient, status: int, body: Any,
                                  exc: type[Exception]) -> None:
    fake_vault.set("secret/*", status=status, body=body, headers={"Retry-After": "7"} if status == 429 else None)
    with pytest.raises(exc) as info:
        await vault.kv.write("secret", "mcp/alice/db", {"pw": "hunter2"}, token=fake_vault.root_token)
    assert "hunter2" not in str(info.value)
    assert fake_vault.root_token not in str(info.value)
    if status == 429:
        assert info.value.retry_after == 7.0  # type: ignore[attr-defined]


async def test_client_connection_refused(aiohttp_server: Any) -> None:
    async with VaultClient(f"http://127.0.0.1:{free_port()}", timeout=1, retry_backoff=0.01) as c:
        with pytest.raises(VaultConnectionError) as info:
            await c.kv.read("secret", "mcp/alice/db", token="s.secret-token")
    assert "s.secret-token" not in str(info.value)


async def test_connection_error_never_names_the_user_info_of_vault_addr() -> None:
    port = free_port()
    async with VaultClient(f"http://vaultuser:pa55word@127.0.0.1:{port}", timeout=1, retry_backoff=0.01) as c:
        with pytest.raises(VaultConnectionError) as info:
            await c.sys.health()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "pa55word" not in str(info.value)
    assert "vaultuser" not in str(info.value)


async def test_reads_retry_once_after_a_dropped_connection_writes_never(fake_vault: FakeVault,
                                                                         vault: VaultClient) -> None:
    await vault.kv.write("secret", "mcp/alice/db", {"a": 1}, token=fake_vault.root_token)
    fake_vault.set("secret/data/*", method="GET", close=True, times=1)
    assert (await vault.kv.read("secret", "mcp/alice/db", token=fake_vault.root_token)).data == {"a": 1}
    assert len(fake_vault.calls("secret/data/", method="GET")) == 2

    fake_vault.set("secret/data/*", method="POST", close=True, times=1)
    with pytest.raises(VaultConnectionError):
        await vault.kv.write("secret", "mcp/alice/db", {"a": 2}, token=fake_vault.root_token)
    assert len(fake_vault.calls("secret/data/", method="POST")) == 2  # the first write + this one, no retry


# -- through the bridge ----------------------------------------------------------------------------------

async def test_timeout_is_504(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    api = await make_bridge(vault_timeout="300ms")
    fake_vault.slow("secret/*", 1.0)
    for method, url, body in [("GET", "/secrets/db", None), ("PUT", "/secrets/db", {"data": {"a": 1}})]:
        resp = await api.request(method, url, json=body, headers=ALICE)
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "vault_timeout"


@pytest.mark.parametrize(("status", "body", "expected", "code"), [
    (500, {"errors": ["internal error"]}, 502, "vault_error"),
    (500, "<html>oops</html>", 502, "vault_error"),
    (501, None, 502, "vault_error"),
    (502, "bad gateway", 503, "vault_unavailable"),
    (503, {"errors": ["standby"]}, 503, "vault_unavailable"),
    (504, None, 503, "vault_unavailable"),
    (599, None, 502, "vault_error"),
    (503, {"errors": ["Vault is sealed"]}, 503, "vault_sealed"),
    (403, POLICY_DENIED_BODY, 403, "forbidden"),
    (404, {"errors": []}, 404, "not_found"),
    (400, {"errors": ["no data provided"]}, 400, "invalid_request"),
])
async def test_vault_statuses_through_the_bridge(fake_vault: FakeVault, make_bridge: MakeBridge, status: int,
                                                 body: Any, expected: int, code: str) -> None:
    api = await make_bridge()
    fake_vault.set("secret/*", status=status, body=body)
    fake_vault.set("transit/encrypt/*", status=status, body=body)  # not transit/keys: the key-count lookup
    fake_vault.set("transit/decrypt/*", status=status, body=body)  # before a first encrypt is tested elsewhere
    for method, url, payload in [("GET", "/secrets/db", None), ("PUT", "/secrets/db", {"data": {"a": 1}}),
                                 ("PATCH", "/secrets/db", {"data": {"a": 1}}), ("DELETE", "/secrets/db", None),
                                 ("GET", "/secrets", None), ("GET", "/secrets/db:metadata", None),
                                 ("POST", "/secrets/db:undelete", {"versions": [1]}),
                                 ("POST", "/secrets/db:destroy", {"versions": [1]}),
                                 ("POST", "/transit/encrypt", {"key": "k", "plaintext": "eA=="}),
                                 ("POST", "/transit/decrypt", {"key": "k", "ciphertext": "vault:v1:x"})]:
        resp = await api.request(method, url, json=payload, headers=ALICE)
        if status == 404 and url == "/secrets":
            assert resp.status == 200  # an empty listing is not an error
            continue
        assert resp.status != 500
        assert resp.status == expected, (method, url, resp.status)
        err = (await resp.json())["error"]
        assert err["code"] == code
        assert "internal error" not in err["message"] or code == "invalid_request"
        if status == 503 and code == "vault_sealed":
            assert resp.headers["Retry-After"]


async def test_vault_rate_limit_is_429_with_retry_after(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    api = await make_bridge()
    fake_vault.set("secret/*", status=429, body={"errors": ["rate limit quota exceeded"]},
                   headers={"Retry-After": "7"})
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "vault_rate_limited"
    assert resp.headers["Retry-After"] == "7"
    fake_vault.set("secret/*", status=429, body={"errors": ["rate limit quota exceeded"]})
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"


async def test_dropped_connections_are_503(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    api = await make_bridge()
    fake_vault.set("secret/*", close=True)
    resp = await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "vault_unavailable"


async def test_sealed_vault(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    api = await make_bridge()
    await until_status(api, "/readyz", 200)
    fake_vault.seal()
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "vault_sealed"
    status, body = await until(api, "/healthz", lambda _status, body: body["status"] == "degraded")
    assert status == 200
    assert body["vault"]["sealed"] is True
    assert body["vault"]["reachable"]
    await until_status(api, "/readyz", 503)
    fake_vault.unseal()
    await until_status(api, "/readyz", 200)
    assert (await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)).status == 200


async def test_bare_403_on_a_static_token_is_forbidden_not_500(fake_vault: FakeVault,
                                                                make_bridge: MakeBridge) -> None:
    api = await make_bridge()
    fake_vault.revoke(fake_vault.root_token)  # the bridge token is gone: Vault answers a bare 403
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    await until_status(api, "/readyz", 503)


async def test_starts_while_vault_is_down_then_recovers(fake_vault: FakeVault, aiohttp_client: Callable[..., Any],
                                                        aiohttp_server: Any) -> None:
    """Static token: 503 while nothing listens, 200 once Vault is back, with no restart."""
    port = fake_vault.port
    await fake_vault.stop()
    api: Client = await aiohttp_client(create_app(settings_for(fake_vault.addr, vault_token=fake_vault.root_token)))
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "vault_unavailable"
    resp = await api.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "degraded"
    assert (await resp.json())["vault"]["reachable"] is False
    assert (await api.get("/readyz")).status == 503

    await fake_vault.start(aiohttp_server, port=port)
    assert (await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)).status == 200
    await until_status(api, "/readyz", 200)


async def test_approle_logs_in_once_vault_is_back(fake_vault: FakeVault, aiohttp_client: Callable[..., Any],
                                                  aiohttp_server: Any) -> None:
    port = fake_vault.port
    await fake_vault.stop()
    settings = settings_for(fake_vault.addr, vault_role_id=fake_vault.role_id, vault_secret_id=fake_vault.secret_id)
    api: Client = await aiohttp_client(create_app(settings))
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "vault_unavailable"
    assert (await api.get("/readyz")).status == 503

    await fake_vault.start(aiohttp_server, port=port)
    resp = await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)
    assert resp.status == 200
    logins = fake_vault.calls("auth/approle/login")
    assert len(logins) >= 1
    assert logins[0].json == {"role_id": fake_vault.role_id, "secret_id": fake_vault.secret_id}
    write = fake_vault.calls("secret/data/", method="POST")[-1]
    assert write.token in fake_vault.tokens
    assert write.token != fake_vault.root_token
    await until_status(api, "/readyz", 200)


async def test_approle_token_revoked_outside_is_replaced(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    api = await make_bridge(vault_token=None, vault_role_id=fake_vault.role_id,
                            vault_secret_id=fake_vault.secret_id)
    assert (await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)).status == 200
    first = fake_vault.calls("secret/data/", method="POST")[-1].token
    assert first is not None
    fake_vault.revoke(first)
    resp = await api.get("/secrets/db", headers=ALICE)
    assert resp.status == 200
    assert (await resp.json())["data"] == {"a": 1}
    assert fake_vault.calls("secret/data/", method="GET")[-1].token != first


# -- errors and contracts (docs/hardening-tests.md) ------------------------------------------------------

@pytest.mark.parametrize("message", [
    "local node not active but active cluster node not found",  # OpenBao 2.7.2 (Raft) right after an unseal
    "Vault is in standby mode",
    "node is not the leader",
    "leadership lost while committing log",
    "1 error occurred:\n\t* context canceled\n\n",  # OpenBao 2.7.2: a write in flight while it seals
])
async def test_a_node_that_is_not_active_is_503_with_retry_after(fake_vault: FakeVault, make_bridge: MakeBridge,
                                                                 message: str) -> None:
    """A Vault 5xx while it starts or steps down is 503 vault_unavailable with Retry-After, as a refused
    connection is; never a 502 (the 502 of the no-lost-write fault test on a loaded machine)."""
    api = await make_bridge()
    fake_vault.set("secret/*", status=500, body={"errors": [message]})
    for method, url, payload in [("GET", "/secrets/db", None), ("PUT", "/secrets/db", {"data": {"a": 1}})]:
        resp = await api.request(method, url, json=payload, headers=ALICE)
        assert resp.status == 503, (method, message)
        assert (await resp.json())["error"]["code"] == "vault_unavailable"
        assert int(resp.headers["Retry-After"]) >= 1
        assert message not in await resp.text()


async def test_a_redirect_is_never_a_success(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    """A standby's redirect that is not (or cannot be) followed: the write did not happen, so never a 200."""
    api = await make_bridge()
    fake_vault.set("secret/*", status=307, headers={"Location": f"{fake_vault.addr}/v1/secret/data/elsewhere"})
    resp = await api.put("/secrets/db", json={"data": {"a": 1}}, headers=ALICE)
    assert resp.status == 503, await resp.text()
    assert (await resp.json())["error"]["code"] == "vault_unavailable"


@pytest.mark.parametrize("body", [{"errors": ["pq: password authentication failed for canary-5xx-text"]},
                                  "<html>canary-5xx-text at 10.1.2.3</html>"])
async def test_vault_5xx_text_is_logged_never_relayed(fake_vault: FakeVault, make_bridge: MakeBridge,
                                                      body: Any) -> None:
    api = await make_bridge()
    fake_vault.set("secret/*", status=500, body=body)
    fake_vault.set("transit/*", status=503, body=body)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        rest = await api.get("/secrets/db", headers=ALICE)
        transit = await api.post("/transit/encrypt", json={"key": "k", "plaintext": "eA=="}, headers=ALICE)
        mcp = await api.post("/mcp", json=modern_body("tools/call", {"name": "kv_read", "arguments": {"path": "db"}}),
                             headers=modern_headers(API_KEY_ALICE, "tools/call", "kv_read"))
    for resp, status, code in ((rest, 502, "vault_error"), (transit, 503, "vault_unavailable"),
                               (mcp, 200, "vault_error")):
        assert resp.status == status
        text = await resp.text()
        assert "canary-5xx-text" not in text
        assert "10.1.2.3" not in text
        body_json = await resp.json()
        err = body_json["result"]["structuredContent"]["error"] if resp is mcp else body_json["error"]
        assert err["code"] == code
        assert resp.headers["X-Request-Id"] in err["message"]  # the id that finds Vault's answer in the log
    logged = [e for e in logs if e["event"] in ("vault.server_error", "vault.unavailable")]
    assert len(logged) == 3
    assert all("canary-5xx-text" in str(e["vault_errors"]) for e in logged)
    assert {e["request_id"] for e in logged} == {r.headers["X-Request-Id"] for r in (rest, transit, mcp)}
