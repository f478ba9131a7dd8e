"""Per-agent child tokens against a real OpenBao, with a bridge token that cannot read any secret itself."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from bridge.app import create_app
from bridge.config import Settings
from bridge.keys import CHILD_TOKENS
from bridge.provision import ProvisionOptions, provision
from bridge.vault.auth import AppRoleLogin, StaticToken, secret_id_value
from bridge.vault.childtokens import ChildTokenBroker, ChildTokenError
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultPermissionDeniedError
from bridge.vault.lifetime import TokenKeeper
from bridge.vault.models import KvVersion
from bridge.vault.tokens import with_token
from devtools.devvault import DevVault, find_bao, free_port, vault_reachable
from tests.conftest import API_KEY_ALICE, API_KEY_BOB
from tests.support.approle import BridgeCreds

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
BOB = {"X-API-Key": API_KEY_BOB}


async def lookup(vault: VaultClient, bao: DevVault, token: str) -> dict[str, Any] | None:
    """The token's data as root sees it; ``None`` once it is revoked or expired."""
    try:
        resp = await vault.request("POST", "auth/token/lookup", operation="test.lookup", token=bao.root_token,
                                   json_body={"token": token})
    except (VaultInvalidRequestError, VaultPermissionDeniedError):
        return None
    return resp.data or {}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def vault(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as client:
        yield client


@pytest.fixture
async def keeper(vault: VaultClient, bridge_creds: BridgeCreds) -> TokenKeeper:
    keeper = TokenKeeper(vault, AppRoleLogin(bridge_creds.role_id, secret_id_value(SecretStr(bridge_creds.secret_id))))
    await keeper.ensure()
    return keeper


async def test_bridge_token_alone_cannot_read_secrets(vault: VaultClient, keeper: TokenKeeper,
                                                      bao: DevVault) -> None:
    await vault.kv.write("secret", "mcp/alice/probe", {"v": 1}, cas=None, token=bao.root_token)
    bridge_token = await keeper.ensure()
    with pytest.raises(VaultPermissionDeniedError):
        await vault.kv.read("secret", "mcp/alice/probe", token=bridge_token)
    with pytest.raises(VaultPermissionDeniedError):
        await vault.transit.call("transit", "encrypt", "mcp.alice.k", {"plaintext": "aGk="}, token=bridge_token)


async def test_without_child_tokens_the_minimal_bridge_is_refused(
        aiohttp_client: Callable[..., Any], child_settings: Callable[..., Settings]) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings(child_token_enabled=False)))
    resp = await client.put("/secrets/ct/db", json={"data": {"pw": "x"}}, headers=ALICE)
    assert resp.status == 403, await resp.text()


async def test_agents_work_on_their_own_paths_with_child_tokens(
        aiohttp_client: Callable[..., Any], child_settings: Callable[..., Settings]) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings()))
    for headers, value in ((ALICE, "a"), (BOB, "b")):
        resp = await client.put("/secrets/ct/db", json={"data": {"pw": value}}, headers=headers)
        assert resp.status == 200, await resp.text()
        resp = await client.get("/secrets/ct/db", headers=headers)
        assert (await resp.json())["data"] == {"pw": value}
    resp = await client.post("/transit/encrypt", json={"key": "ct", "plaintext": "aGk="}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    ciphertext = (await resp.json())["ciphertext"]
    resp = await client.post("/transit/decrypt", json={"key": "ct", "ciphertext": ciphertext}, headers=ALICE)
    assert (await resp.json())["plaintext"] == "aGk="
    broker = client.app.get(CHILD_TOKENS)
    assert broker is not None
    assert broker.stats.mints == 2


async def test_child_token_is_refused_on_another_agents_path(vault: VaultClient, keeper: TokenKeeper,
                                                            bao: DevVault) -> None:
    await vault.kv.write("secret", "mcp/bob/private", {"v": 1}, cas=None, token=bao.root_token)
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent-batch", ttl=90)
    entry = await broker.acquire("alice", "api_key")
    try:
        with pytest.raises(VaultPermissionDeniedError) as denied:
            await vault.kv.read("secret", "mcp/bob/private", token=entry.token)
        assert denied.value.errors != ["permission denied"]  # a policy denial, not a bad token
        with pytest.raises(VaultPermissionDeniedError):
            await vault.kv.list("secret", "mcp/bob", token=entry.token)
        with pytest.raises(VaultPermissionDeniedError):
            await vault.transit.call("transit", "encrypt", "mcp.bob.k", {"plaintext": "aGk="}, token=entry.token)
        await vault.kv.write("secret", "mcp/alice/own", {"v": 2}, cas=None, token=entry.token)
    finally:
        broker.release(entry)
        await broker.close()


async def test_child_token_carries_agent_metadata_type_and_ttl(vault: VaultClient, keeper: TokenKeeper,
                                                               bao: DevVault) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent-batch", ttl=60)
    entry = await broker.acquire("bob", "jwt")
    broker.release(entry)
    data = await lookup(vault, bao, entry.token)
    assert data is not None
    assert data["meta"]["agent"] == "bob"
    assert data["meta"]["auth_method"] == "jwt"
    assert data["type"] == "batch"
    assert 0 < data["ttl"] <= 60
    assert data["policies"] == ["mcp-agent-bob"]
    await broker.close()


async def test_concurrent_requests_share_one_mint(vault: VaultClient, keeper: TokenKeeper) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent-batch", ttl=90, reuse_seconds=0)
    entries = await asyncio.gather(*(broker.acquire("alice", "api_key") for _ in range(10)))
    assert broker.stats.mints == 1
    assert len({e.token for e in entries}) == 1
    for entry in entries:
        broker.release(entry)
    later = await broker.acquire("alice", "api_key")  # no reuse window: a new token
    broker.release(later)
    assert broker.stats.mints == 2
    assert later.token != entries[0].token
    await broker.close()


async def test_batch_reuse_window_follows_the_clock(vault: VaultClient, keeper: TokenKeeper) -> None:
    clock = FakeClock()
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent-batch", ttl=90, clock=clock)
    assert broker.reuse_seconds == 30
    first = await broker.acquire("alice", "api_key")
    broker.release(first)
    clock.now += 29
    again = await broker.acquire("alice", "api_key")
    broker.release(again)
    assert again is first
    assert broker.stats.reuses == 1
    clock.now += 2
    fresh = await broker.acquire("alice", "api_key")
    broker.release(fresh)
    assert fresh.token != first.token
    assert broker.stats.mints == 2
    await broker.close()


async def test_service_tokens_are_cached_replaced_and_revoked(vault: VaultClient, keeper: TokenKeeper,
                                                              bao: DevVault) -> None:
    clock = FakeClock()
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent", token_type="service", ttl=90, clock=clock)
    first = await broker.acquire("alice", "api_key")
    assert first.token_type == "service"
    clock.now += 50
    in_use = await broker.acquire("alice", "api_key")
    assert in_use is first
    assert broker.stats.mints == 1
    clock.now += 11  # less than a third of the TTL left: replaced
    second = await broker.acquire("alice", "api_key")
    assert second is not first
    assert broker.stats.mints == 2
    # the old token is still in use twice: not revoked yet
    assert await lookup(vault, bao, first.token) is not None
    broker.release(first)
    broker.release(in_use)  # last user gone: revoke-self
    await asyncio.gather(*broker._revoking)
    assert await lookup(vault, bao, first.token) is None
    broker.release(second)
    await broker.close()  # revokes the cached one
    assert await lookup(vault, bao, second.token) is None
    assert broker.stats.revocations == 2


async def test_evicted_service_token_is_revoked(vault: VaultClient, keeper: TokenKeeper, bao: DevVault) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent", token_type="service", ttl=90, cache_size=1)
    alice = await broker.acquire("alice", "api_key")
    broker.release(alice)
    bob = await broker.acquire("bob", "api_key")
    broker.release(bob)
    await asyncio.gather(*broker._revoking)
    assert await lookup(vault, bao, alice.token) is None
    assert broker.cached("alice") is None
    assert broker.cached("bob") is bob
    await broker.close()


async def test_a_revoked_child_token_is_replaced_and_the_call_retried(vault: VaultClient,
                                                                      keeper: TokenKeeper) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent", token_type="service", ttl=90)
    first = await broker.acquire("alice", "api_key")
    broker.release(first)
    await vault.auth_token.revoke_self(token=first.token)
    tokens: list[str] = []

    async def op(token: str) -> KvVersion:
        tokens.append(token)
        return await vault.kv.write("secret", "mcp/alice/retry", {"v": 1}, cas=None, token=token)

    await with_token(broker, "alice", "api_key", op)
    assert len(tokens) == 2
    assert tokens[0] == first.token
    assert tokens[1] != first.token
    assert broker.stats.rejected == 1
    await broker.close()


async def test_role_minting_the_wrong_type_is_refused(vault: VaultClient, keeper: TokenKeeper) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent", token_type="batch", ttl=90)
    with pytest.raises(ChildTokenError, match="service token, not batch"):
        await broker.acquire("alice", "api_key")
    await asyncio.gather(*broker._revoking)
    await broker.close()


async def test_a_role_outside_the_bridge_policy_is_refused(vault: VaultClient, keeper: TokenKeeper) -> None:
    broker = ChildTokenBroker(vault, keeper, role="no-such-role", ttl=90)
    with pytest.raises(ChildTokenError, match="may not mint"):
        await broker.acquire("alice", "api_key")
    await broker.close()


async def test_a_policy_outside_the_role_glob_is_refused(vault: VaultClient, keeper: TokenKeeper) -> None:
    broker = ChildTokenBroker(vault, keeper, role="mcp-agent-batch", ttl=90, policy_prefix="admin-")
    with pytest.raises(ChildTokenError, match="refused"):
        await broker.acquire("alice", "api_key")
    await broker.close()


async def test_misconfigured_role_gives_a_502(aiohttp_client: Callable[..., Any],
                                              child_settings: Callable[..., Settings]) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings(child_token_role="mcp-agent")))
    resp = await client.get("/secrets/ct/db", headers=ALICE)
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "child_token_unavailable"


async def test_service_mode_end_to_end_revokes_at_shutdown(
        aiohttp_client: Callable[..., Any], child_settings: Callable[..., Settings], vault: VaultClient,
        bao: DevVault) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings(child_token_type="service")))
    resp = await client.put("/secrets/svc/db", json={"data": {"pw": "x"}}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    resp = await client.get("/secrets/svc/db", headers=ALICE)
    assert resp.status == 200
    broker = client.app.get(CHILD_TOKENS)
    assert broker is not None
    assert broker.stats.mints == 1
    cached = broker.cached("alice")
    assert cached is not None
    token = cached.token
    assert await lookup(vault, bao, token) is not None
    await client.close()
    assert await lookup(vault, bao, token) is None


async def test_the_bridge_cannot_mint_root_or_without_ttl_cap(vault: VaultClient, keeper: TokenKeeper) -> None:
    parent = await keeper.ensure()
    with pytest.raises(VaultInvalidRequestError):
        await vault.auth_token.create_with_role("mcp-agent-batch", {"policies": ["root"], "ttl": "90s"},
                                                token=parent)
    resp = await vault.auth_token.create_with_role("mcp-agent", {"policies": ["mcp-agent-alice"], "ttl": "1h"},
                                                   token=parent)
    assert resp.auth is not None
    assert resp.auth.lease_duration <= 120  # the service role caps the TTL
    await vault.auth_token.revoke_self(token=resp.auth.client_token.get_secret_value())


async def test_renewable_service_tokens_are_renewed_then_replaced_near_their_max_ttl(
        vault: VaultClient, bao: DevVault) -> None:
    await vault.request("POST", "auth/token/roles/mcp-agent-renewable", operation="test.role", json_body={
        "allowed_policies_glob": ["mcp-agent-*"], "disallowed_policies": ["root"], "orphan": False,
        "renewable": True, "token_type": "service", "token_no_default_policy": False,
        "token_explicit_max_ttl": 100}, token=bao.root_token)
    root_keeper = TokenKeeper(vault, StaticToken(SecretStr(bao.root_token)))
    clock = FakeClock()
    broker = ChildTokenBroker(vault, root_keeper, role="mcp-agent-renewable", token_type="service", ttl=60,
                              clock=clock)
    first = await broker.acquire("alice", "api_key")
    broker.release(first)
    assert first.renewable
    clock.now += 45  # a third of the TTL left: renew (the explicit max TTL still allows a full TTL)
    again = await broker.acquire("alice", "api_key")
    broker.release(again)
    assert again is first
    assert broker.stats.renewals == 1
    assert broker.stats.mints == 1
    await broker.close()

    # a max TTL below half the TTL: renewal would grant too little, so the token is replaced (and revoked)
    await vault.request("POST", "auth/token/roles/mcp-agent-renewable", operation="test.role", json_body={
        "allowed_policies_glob": ["mcp-agent-*"], "renewable": True, "token_type": "service",
        "token_explicit_max_ttl": 25}, token=bao.root_token)
    broker = ChildTokenBroker(vault, root_keeper, role="mcp-agent-renewable", token_type="service", ttl=60,
                              clock=clock)
    short = await broker.acquire("alice", "api_key")
    broker.release(short)
    assert short.ttl <= 25
    clock.now += 6  # less than a third of the TTL (20 s) left
    replaced = await broker.acquire("alice", "api_key")
    broker.release(replaced)
    assert replaced is not short
    assert broker.stats.renewals == 0
    assert broker.stats.mints == 2
    await asyncio.gather(*broker._revoking)
    assert await lookup(vault, bao, short.token) is None
    await broker.close()



@pytest.fixture
def audited_bao(tmp_path: Path) -> Iterator[tuple[DevVault, Path]]:
    """A second dev OpenBao with a file audit device (OpenBao only takes audit devices from its config)."""
    log_path = tmp_path / "audit.log"
    config = tmp_path / "audit.hcl"
    config.write_text(f'audit "file" "trust" {{\n  options {{\n    file_path = "{log_path}"\n  }}\n}}\n')
    port = free_port()
    root = "root-" + os.urandom(8).hex()
    proc = subprocess.Popen([find_bao(), "server", "-dev", f"-dev-root-token-id={root}",
                             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token", f"-config={config}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    vault = DevVault(addr=f"http://127.0.0.1:{port}", root_token=root, process=proc)
    try:
        for _ in range(200):
            if vault_reachable(vault.addr, timeout=0.5):
                break
            assert proc.poll() is None, "bao exited"
            time.sleep(0.05)
        yield vault, log_path
    finally:
        vault.stop()


async def test_vault_audit_log_names_the_agent(aiohttp_client: Callable[..., Any],
                                               audited_bao: tuple[DevVault, Path],
                                               make_settings: Callable[..., Settings]) -> None:
    audited, log_path = audited_bao
    creds = await provision(audited.addr, audited.root_token, ProvisionOptions(agents=["bob"]))
    settings = make_settings(vault_addr=audited.addr, vault_token=None, vault_role_id=creds.role_id,
                             vault_secret_id=creds.secret_id, child_token_enabled=True)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    resp = await client.put("/secrets/audited/db", json={"data": {"pw": "audited-value"}}, headers=BOB)
    assert resp.status == 200, await resp.text()
    text = log_path.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    writes = [e for e in entries if e.get("type") == "response"
              and (e.get("request") or {}).get("path") == "secret/data/mcp/bob/audited/db"]
    assert writes, "the write is in Vault's audit log"
    auth = writes[-1]["auth"]
    assert auth["metadata"]["agent"] == "bob"
    assert auth["metadata"]["auth_method"] == "api_key"
    assert auth["policies"] == ["mcp-agent-bob"]
    assert auth["token_type"] == "batch"
    assert "audited-value" not in text  # Vault HMACs the values
