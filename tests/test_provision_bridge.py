"""What ``provision`` gives the bridge's own AppRole token beyond minting, checked against a real OpenBao: its
state subtree ``{mount}/data/{prefix}/_bridge/`` (which no agent reaches) and its fingerprint key (Transit HMAC,
its only Transit right), and what agents may not do (write the custom metadata that holds the bridge.* keys)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.provision import ProvisionOptions, ProvisionResult, provision
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError, VaultPermissionDeniedError
from bridge.vault.models import VaultResponse
from devtools.devvault import DevVault
from tests.support.vault import root_client

pytestmark = pytest.mark.integration

B64 = base64.b64encode(b"correct horse").decode()


async def _setup(bao: DevVault, namespace: str, **options: Any) -> tuple[ProvisionResult, str]:
    result = await provision(bao.addr, bao.root_token, ProvisionOptions(agents=["alice", "bob"], **options),
                             namespace=namespace)
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        auth = await vault.approle.login(result.role_id, str(result.secret_id))
    return result, auth.client_token.get_secret_value()


async def _call(bao: DevVault, namespace: str, token: str, method: str, path: str, body: Any = None,
                **kw: Any) -> VaultResponse:
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        return await vault.request(method, path, operation="test", token=token, json_body=body, **kw)


async def _child(bao: DevVault, namespace: str, bridge: str, agent: str) -> str:
    resp = await _call(bao, namespace, bridge, "POST", "auth/token/create/mcp-agent-batch",
                       {"policies": [f"mcp-agent-{agent}"], "ttl": "60s"})
    return str(((resp.raw or {}).get("auth") or {})["client_token"])


async def test_the_bridge_keeps_its_state_where_no_agent_reaches(bao: DevVault, fresh_namespace: str) -> None:
    _, bridge = await _setup(bao, fresh_namespace)
    ns = fresh_namespace
    state = "secret/data/mcp/_bridge/leases/alice"
    written = await _call(bao, ns, bridge, "POST", state, {"data": {"lease_ids": ["x"]}})
    assert (written.data or {})["version"] == 1
    await _call(bao, ns, bridge, "POST", state, {"options": {"cas": 1}, "data": {"lease_ids": ["x", "y"]}})
    await _call(bao, ns, bridge, "PATCH", state, {"data": {"quarantined": True}},
                content_type="application/merge-patch+json")
    read = await _call(bao, ns, bridge, "GET", state)
    assert (read.data or {})["data"] == {"lease_ids": ["x", "y"], "quarantined": True}
    listed = await _call(bao, ns, bridge, "GET", "secret/metadata/mcp/_bridge/", params={"list": "true"})
    assert (listed.data or {})["keys"] == ["leases/"]
    await _call(bao, ns, bridge, "POST", "secret/metadata/mcp/_bridge/leases/alice", {"max_versions": 5})
    # ... and nothing of any agent's
    async with root_client(bao, ns) as root:
        await root.request("POST", "secret/data/mcp/alice/app/db", operation="test", json_body={"data": {"pw": "s"}})
    for method, path in (("GET", "secret/data/mcp/alice/app/db"), ("GET", "secret/metadata/mcp/alice/app/db"),
                         ("GET", "secret/data/mcp/bridge/x"), ("POST", "transit/encrypt/mcp.alice.k")):
        with pytest.raises(VaultPermissionDeniedError):
            await _call(bao, ns, bridge, method, path, {"plaintext": B64} if method == "POST" else None)
    # an agent's token cannot read, list, write or delete the bridge's state
    alice = await _child(bao, ns, bridge, "alice")
    for method, path, body in (("GET", state, None), ("POST", state, {"data": {"quarantined": False}}),
                               ("DELETE", "secret/metadata/mcp/_bridge/leases/alice", None),
                               ("GET", "secret/metadata/mcp/_bridge/", None), ("GET", "secret/metadata/mcp/", None)):
        with pytest.raises(VaultPermissionDeniedError):
            await _call(bao, ns, alice, method, path, body,
                        params={"list": "true"} if path.endswith("/") else None)
    await _call(bao, ns, bridge, "DELETE", "secret/metadata/mcp/_bridge/leases/alice")
    with pytest.raises(VaultNotFoundError):
        await _call(bao, ns, bridge, "GET", state)


async def test_the_fingerprint_key_is_the_bridges_only_transit_right(bao: DevVault, fresh_namespace: str) -> None:
    result, bridge = await _setup(bao, fresh_namespace)
    ns = fresh_namespace
    assert "created Transit key mcp-bridge-fingerprint (hmac) at transit/" in result.changes
    async with root_client(bao, ns) as root:
        key = (await root.request("GET", "transit/keys/mcp-bridge-fingerprint", operation="test")).data or {}
        await root.request("POST", "transit/keys/mcp.alice.k", operation="test", json_body={"type": "aes256-gcm96"})
    assert (key["type"], key["exportable"], key["deletion_allowed"]) == ("hmac", False, False)
    first = await _call(bao, ns, bridge, "POST", "transit/hmac/mcp-bridge-fingerprint", {"input": B64})
    again = await _call(bao, ns, bridge, "POST", "transit/hmac/mcp-bridge-fingerprint", {"input": B64})
    other = await _call(bao, ns, bridge, "POST", "transit/hmac/mcp-bridge-fingerprint",
                        {"input": base64.b64encode(b"battery staple").decode()})
    mac = str((first.data or {})["hmac"])
    assert mac.startswith("vault:v1:")
    assert mac == (again.data or {})["hmac"]  # stable per value
    assert mac != (other.data or {})["hmac"]
    for path in ("transit/hmac/mcp.alice.k", "transit/encrypt/mcp-bridge-fingerprint",
                 "transit/hmac/mcp-bridge-fingerprint/sha2-512", "transit/keys/mcp-bridge-fingerprint"):
        with pytest.raises(VaultPermissionDeniedError):
            await _call(bao, ns, bridge, "POST", path, {"input": B64, "plaintext": B64})
    alice = await _child(bao, ns, bridge, "alice")
    with pytest.raises(VaultPermissionDeniedError):  # an agent cannot compute fingerprints to guess values
        await _call(bao, ns, alice, "POST", "transit/hmac/mcp-bridge-fingerprint", {"input": B64})
    with pytest.raises(VaultInvalidRequestError, match="encryption not supported"):  # never an encryption key
        async with root_client(bao, ns) as root:
            await root.request("POST", "transit/encrypt/mcp-bridge-fingerprint", operation="test",
                               json_body={"plaintext": B64})
    assert (await provision(bao.addr, bao.root_token, ProvisionOptions(agents=["alice", "bob"]),
                            namespace=ns)).changes == []


async def test_shared_transit_keys_still_exclude_the_fingerprint_key(bao: DevVault, fresh_namespace: str) -> None:
    ns = fresh_namespace
    _, bridge = await _setup(bao, ns, transit_scope="shared", fingerprint_key="fp-key")
    async with root_client(bao, ns) as root:
        await root.request("POST", "transit/keys/shared-k", operation="test", json_body={"type": "aes256-gcm96"})
    alice = await _child(bao, ns, bridge, "alice")
    assert (await _call(bao, ns, alice, "POST", "transit/hmac/shared-k", {"input": B64})).data
    for path in ("transit/hmac/fp-key", "transit/hmac/fp-key/sha2-256", "transit/verify/fp-key",
                 "transit/keys/fp-key", "transit/encrypt/fp-key"):
        with pytest.raises(VaultPermissionDeniedError):
            await _call(bao, ns, alice, "POST", path, {"input": B64, "plaintext": B64, "hmac": "vault:v1:x"})
    assert (await _call(bao, ns, bridge, "POST", "transit/hmac/fp-key", {"input": B64})).data


async def test_an_existing_key_of_another_type_is_not_taken(bao: DevVault, fresh_namespace: str) -> None:
    from bridge.provision import ProvisionError

    async with root_client(bao, fresh_namespace) as root:
        await root.request("POST", "sys/mounts/transit", operation="test", json_body={"type": "transit"})
        await root.request("POST", "transit/keys/mcp-bridge-fingerprint", operation="test",
                           json_body={"type": "aes256-gcm96"})
    with pytest.raises(ProvisionError, match="must be of type hmac"):
        await _setup(bao, fresh_namespace)


async def test_agents_cannot_write_custom_metadata(bao: DevVault, fresh_namespace: str) -> None:
    """The bridge.* keys live in custom metadata: the agent policy grants read and list on metadata, no write."""
    _, bridge = await _setup(bao, fresh_namespace)
    ns = fresh_namespace
    alice = await _child(bao, ns, bridge, "alice")
    await _call(bao, ns, alice, "POST", "secret/data/mcp/alice/app/db", {"data": {"pw": "s"}})
    meta = await _call(bao, ns, alice, "GET", "secret/metadata/mcp/alice/app/db")
    assert (meta.data or {})["current_version"] == 1
    with pytest.raises(VaultPermissionDeniedError):
        await _call(bao, ns, alice, "POST", "secret/metadata/mcp/alice/app/db",
                    {"custom_metadata": {"bridge.reveal": "allow"}})
    with pytest.raises(VaultPermissionDeniedError):
        await _call(bao, ns, alice, "PATCH", "secret/metadata/mcp/alice/app/db",
                    {"custom_metadata": {"bridge.canary": None}}, content_type="application/merge-patch+json")
    with pytest.raises(VaultPermissionDeniedError):  # nor create metadata for a new path
        await _call(bao, ns, alice, "POST", "secret/metadata/mcp/alice/new", {"custom_metadata": {"a": "b"}})


def test_options_refuse_a_lease_period_the_token_mount_would_cap() -> None:
    with pytest.raises(ValueError, match="lease token period cannot exceed the child max TTL"):
        ProvisionOptions(agents=["a"], lease_token_period=7200)
    ProvisionOptions(agents=["a"], lease_token_period=7200, child_max_ttl=7200)
    ProvisionOptions(agents=["a"], lease_token_period=7200, child_max_ttl=0)
    with pytest.raises(ValueError, match="at least 60"):
        ProvisionOptions(agents=["a"], lease_token_period=10)
    with pytest.raises(ValueError, match="fingerprint key"):
        ProvisionOptions(agents=["a"], fingerprint_key="mcp.alice.k")
    with pytest.raises(ValueError, match="database mount"):
        ProvisionOptions(agents=["a"], database_mount='db"x')
    with pytest.raises(ValueError, match="--prune needs --dynamic"):
        ProvisionOptions(agents=["a"], prune=True)
