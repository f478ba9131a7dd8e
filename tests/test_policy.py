"""The agent policy HCL: rendered safely, and — loaded into OpenBao — a token holding only it can do all of
its agent's operations directly against Vault, and nothing on another agent's paths."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Awaitable

import pytest

from bridge.policy import policy_name, render_agent_policy, render_bridge_policy
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultPermissionDeniedError
from bridge.vault.models import TransitResult
from devtools.devvault import DevVault


def test_rendered_policy() -> None:
    hcl = render_agent_policy("alice", mount="secret", prefix="mcp")
    expected = {
        'path "secret/data/mcp/alice/*"': '["create", "read", "update", "patch", "delete", "list"]',
        'path "secret/metadata/mcp/alice/*"': '["read", "list"]',
        'path "secret/delete/mcp/alice/*"': '["update"]',
        'path "secret/undelete/mcp/alice/*"': '["update"]',
        'path "secret/destroy/mcp/alice/*"': '["update"]',
        'path "transit/encrypt/mcp.alice.*"': '["create", "update"]',
        'path "transit/decrypt/mcp.alice.*"': '["update"]',
    }
    for stanza, caps in expected.items():
        start = hcl.index(stanza)
        assert f"capabilities = {caps}" in hcl[start:hcl.index("}", start)], stanza
    assert "bob" not in hcl
    assert "mcp/*" not in hcl


def test_names_are_validated_before_rendering() -> None:
    assert 'path "kv/data/agents/bob/*"' in render_agent_policy("Bob", mount="kv", prefix="agents")
    assert policy_name("Bob") == "mcp-agent-bob"
    for agent in ("a.b", "a/b", "a*", 'a"b', "", "alice\n", "x" * 65, "_a"):
        with pytest.raises(ValueError, match="agent"):
            render_agent_policy(agent)
    for prefix in ("MCP", "a/b", "*", "mcp\n"):
        with pytest.raises(ValueError, match="prefix"):
            render_agent_policy("alice", prefix=prefix)
    for mount in ('se"cret', "/secret", "a//b", "se cret", "*", ""):
        with pytest.raises(ValueError, match="mount"):
            render_agent_policy("alice", mount=mount)


def _stanza(hcl: str, path: str) -> str:
    start = hcl.index(f'path "{path}"')
    return hcl[start:hcl.index("\n}", start)]


def test_rendered_policy_grants_exactly_the_agents_dynamic_roles_and_leases() -> None:
    hcl = render_agent_policy("alice", database="db", pki="pki-int", ssh="ssh-users")
    expected = {
        "db/creds/mcp.alice.*": '["read"]',
        "pki-int/issue/mcp.alice.*": '["update"]',
        "pki-int/sign/mcp.alice.*": '["update"]',
        "ssh-users/sign/mcp.alice.*": '["update"]',
        "sys/leases/renew/db/creds/mcp.alice.*": '["update"]',
        "sys/leases/revoke/db/creds/mcp.alice.*": '["update"]',
        "sys/leases/revoke/pki-int/issue/mcp.alice.*": '["update"]',
        "sys/leases/revoke/pki-int/sign/mcp.alice.*": '["update"]',
        "auth/token/renew-self": '["update"]',
        "auth/token/revoke-self": '["update"]',
        "sys/capabilities-self": '["update"]',
    }
    for path, caps in expected.items():
        assert f"capabilities = {caps}" in _stanza(hcl, path), path
    # a lease id in the body would override the URL's: only these parameters are allowed
    assert '"increment" = []' in _stanza(hcl, "sys/leases/renew/db/creds/mcp.alice.*")
    assert '"sync" = []' in _stanza(hcl, "sys/leases/revoke/db/creds/mcp.alice.*")
    assert "pki-int/revoke" not in hcl  # certificates are revoked by lease (generate_lease), never by serial
    assert "_bridge" not in hcl
    shared = render_agent_policy("alice", dynamic_scope="shared")
    assert 'path "database/creds/*"' in shared
    assert 'path "sys/leases/revoke/pki/issue/*"' in shared
    for kwargs, match in (({"database": 'db"'}, "database"), ({"pki": "*"}, "pki"), ({"ssh": "/ssh"}, "ssh"),
                          ({"dynamic_scope": "all"}, "dynamic_scope"), ({"fingerprint_key": "a.b"}, "fingerprint")):
        with pytest.raises(ValueError, match=match):
            render_agent_policy("alice", **kwargs)


def test_shared_transit_keys_deny_the_fingerprint_key() -> None:
    assert "deny" not in render_agent_policy("alice")
    shared = render_agent_policy("alice", transit_scope="shared", prefix="corp")
    for op in ("encrypt", "decrypt", "rewrap", "sign", "verify", "hmac", "keys"):
        for suffix in ("", "/*"):
            assert 'capabilities = ["deny"]' in _stanza(shared, f"transit/{op}/corp-bridge-fingerprint{suffix}")


def test_bridge_policy_grants_minting_its_fingerprint_key_and_its_state() -> None:
    hcl = render_bridge_policy(["mcp-agent-batch", "mcp-agent", "mcp-agent-lease"], mount="kv", prefix="corp",
                               transit="tr")
    for role in ("mcp-agent-batch", "mcp-agent", "mcp-agent-lease"):
        assert 'capabilities = ["update"]' in _stanza(hcl, f"auth/token/create/{role}")
    assert 'capabilities = ["update"]' in _stanza(hcl, "tr/hmac/corp-bridge-fingerprint")
    state = '["create", "read", "update", "patch", "delete", "list"]'
    assert state in _stanza(hcl, "kv/data/corp/_bridge/*")
    assert state in _stanza(hcl, "kv/metadata/corp/_bridge/*")
    assert hcl.count('path "') == 10  # nothing else: no agent path, no use of another key (+ list of key names)
    assert 'path "transit/hmac/fp"' in render_bridge_policy([], fingerprint_key="fp")
    for kwargs, match in (({"prefix": "a/b"}, "prefix"), ({"mount": "*"}, "mount"),
                          ({"fingerprint_key": "mcp.alice.k"}, "fingerprint")):
        with pytest.raises(ValueError, match=match):
            render_bridge_policy([], **kwargs)


@pytest.fixture
async def root(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as c:
        yield c


async def _token_with_only(root: VaultClient, root_token: str, agent: str) -> str:
    hcl = render_agent_policy(agent)
    await root.sys.write_policy(policy_name(agent), hcl, token=root_token)
    resp = await root.logical.write("auth/token/create", {"policies": [policy_name(agent)], "no_default_policy": True,
                                                          "ttl": "5m"}, token=root_token)
    assert resp.auth is not None
    assert resp.auth.policies == (policy_name(agent),)
    return resp.auth.client_token.get_secret_value()


def _encrypt(c: VaultClient, key: str, b64: str, token: str) -> Awaitable[TransitResult]:
    return c.transit.call("transit", "encrypt", key, {"plaintext": b64}, token=token)


def _decrypt(c: VaultClient, key: str, ciphertext: str, token: str) -> Awaitable[TransitResult]:
    return c.transit.call("transit", "decrypt", key, {"ciphertext": ciphertext}, token=token)


@pytest.mark.integration
async def test_policy_allows_its_agent_and_denies_others(root: VaultClient, bao: DevVault) -> None:
    agent, other = f"pol_{secrets.token_hex(3)}", f"pol_{secrets.token_hex(3)}"
    token = await _token_with_only(root, bao.root_token, agent)
    await root.kv.write("secret", f"mcp/{other}/theirs", {"x": 1}, token=bao.root_token)
    own = f"mcp/{agent}/app/db"
    b64 = base64.b64encode(b"hello").decode()

    async with VaultClient(bao.addr) as c:
        # every operation of its own agent
        assert (await c.kv.write("secret", own, {"a": 1}, token=token)).version == 1
        assert (await c.kv.write("secret", own, {"a": 2}, cas=1, token=token)).version == 2
        assert (await c.kv.patch("secret", own, {"b": 3}, token=token)).version == 3
        assert (await c.kv.read("secret", own, token=token)).data == {"a": 2, "b": 3}
        assert (await c.kv.read("secret", own, version=1, token=token)).data == {"a": 1}
        assert await c.kv.list("secret", f"mcp/{agent}/", token=token) == ["app/"]
        assert await c.kv.list("secret", f"mcp/{agent}/app", token=token) == ["db"]
        assert (await c.kv.metadata("secret", own, token=token)).current_version == 3
        await c.kv.delete_latest("secret", own, token=token)
        await c.kv.undelete("secret", own, [3], token=token)
        await c.kv.destroy("secret", own, [1], token=token)
        enc = (await _encrypt(c, f"mcp.{agent}.k", b64, token)).single  # creates the key on first use
        assert enc is not None
        assert enc.ciphertext
        decrypted = (await _decrypt(c, f"mcp.{agent}.k", enc.ciphertext, token)).single
        assert decrypted is not None
        assert decrypted.plaintext == b64

        # nothing of another agent's, nor above its own namespace
        denied = [
            c.kv.read("secret", f"mcp/{other}/theirs", token=token),
            c.kv.write("secret", f"mcp/{other}/mine-now", {"x": 1}, token=token),
            c.kv.patch("secret", f"mcp/{other}/theirs", {"x": 2}, token=token),
            c.kv.delete_latest("secret", f"mcp/{other}/theirs", token=token),
            c.kv.undelete("secret", f"mcp/{other}/theirs", [1], token=token),
            c.kv.destroy("secret", f"mcp/{other}/theirs", [1], token=token),
            c.kv.metadata("secret", f"mcp/{other}/theirs", token=token),
            c.kv.list("secret", f"mcp/{other}/", token=token),
            c.kv.list("secret", "mcp/", token=token),
            c.kv.read("secret", f"mcp/{agent}", token=token),
            c.kv.write("secret", "elsewhere", {"x": 1}, token=token),
            _encrypt(c, f"mcp.{other}.k", b64, token),
            _decrypt(c, f"mcp.{other}.k", enc.ciphertext, token),
            _encrypt(c, "k", b64, token),
        ]
        for call in denied:
            with pytest.raises(VaultPermissionDeniedError):
                await call
        await c.auth_token.revoke_self(token=token)  # the policy lets a token revoke itself
    assert (await root.kv.read("secret", f"mcp/{other}/theirs", token=bao.root_token)).data == {"x": 1}
    assert await root.kv.list("secret", f"mcp/{other}/", token=bao.root_token) == ["theirs"]
