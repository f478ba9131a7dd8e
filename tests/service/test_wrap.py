"""Wrapped delivery (issue 12): ``kv_read`` with ``wrap_ttl`` answers Vault's response-wrapping token instead of the
value; the process it is handed to unwraps it at Vault exactly once (``hvac`` on the consumer side). The wrapped
read runs under the agent's own token (its child token in child-token mode), so Vault applies the agent's policy.

Vault facts checked on OpenBao 2.7.2 (docs/use-dont-reveal.md, "Wrapped delivery"): batch and service child tokens
without the default policy may ask for wrapping; the wrapping token outlives the child token (revoked, expired);
its TTL is neither capped by the child token's TTL nor by ``auth/token/`` ``max_lease_ttl``, so the bridge bounds
it (``WRAP_MAX_TTL``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from aiohttp.test_utils import TestClient

from bridge.vault.errors import VaultPermissionDeniedError
from devtools.devvault import DevVault
from tests.support.reveal import ALICE, USER, WRITER, Admin, RevealClient, mcp_tool, structured, unique

pytestmark = pytest.mark.integration


def unwrap(bao: DevVault, token: str) -> dict[str, Any]:
    """What the consumer process does: unwrap with the wrapping token itself (hvac, synchronous)."""
    client = hvac.Client(url=bao.addr, token=token)
    answer: dict[str, Any] = client.sys.unwrap()
    return answer


def lookup(bao: DevVault, token: str) -> dict[str, Any]:
    answer: dict[str, Any] = hvac.Client(url=bao.addr).adapter.post("/v1/sys/wrapping/lookup",
                                                                     json={"token": token})  # needs no auth
    return answer


async def wrapped(client: TestClient[Any, Any], path: str, headers: dict[str, str], ttl: str,
                  **query: str) -> dict[str, Any]:
    resp = await client.get(f"/secrets/{path}", params={"wrap_ttl": ttl, **query}, headers=headers)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def test_wrapped_read_unwraps_exactly_once(reveal_client: RevealClient, admin: Admin, bao: DevVault,
                                                 tmp_path: Path) -> None:
    audit_log = tmp_path / "audit.log"
    client = await reveal_client(audit_log=str(audit_log))
    path = unique("db")
    await admin.write(path, {"password": "wrap-me-1"})
    version = await admin.write(path, {"password": "wrap-me-2", "user": "app"})
    for headers in (USER, ALICE):  # allowed for use (the value goes to a process, not the model) and for read
        body = await wrapped(client, path, headers, "60s")
        assert set(body) == {"path", "version", "wrap_info"}
        assert body["path"] == path
        assert body["version"] == version
        info = body["wrap_info"]
        assert set(info) == {"token", "accessor", "ttl", "creation_time", "creation_path"}
        assert info["ttl"] == 60
        assert info["creation_path"] == f"secret/data/mcp/alice/{path}"
        assert "wrap-me" not in json.dumps(body)
        looked = await asyncio.to_thread(lookup, bao, info["token"])
        assert looked["data"]["creation_path"] == info["creation_path"]
        data = await asyncio.to_thread(unwrap, bao, info["token"])
        assert data["data"]["data"] == {"password": "wrap-me-2", "user": "app"}
        assert data["data"]["metadata"]["version"] == version
        with pytest.raises(hvac.exceptions.InvalidRequest, match="wrapping token is not valid"):
            await asyncio.to_thread(unwrap, bao, info["token"])

    # a pinned version, in minutes, over MCP
    result = structured(await mcp_tool(client, key_of(USER), "kv_read",
                                       {"path": path, "version": 1, "wrap_ttl": "2m"}))
    assert result["version"] == 1
    assert result["wrap_info"]["ttl"] == 120
    data = await asyncio.to_thread(unwrap, bao, result["wrap_info"]["token"])
    assert data["data"]["data"] == {"password": "wrap-me-1"}

    # the audit trail: how the read answered and the accessor, never the token
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    wraps = [r for r in records if r.get("answer") == "wrapped"]
    assert len(wraps) == 3
    assert {r["wrap_accessor"] for r in wraps} >= {info["accessor"], result["wrap_info"]["accessor"]}
    assert info["token"] not in audit_log.read_text()
    assert result["wrap_info"]["token"] not in audit_log.read_text()


def key_of(headers: dict[str, str]) -> str:
    return headers["X-API-Key"]


async def test_wrap_refusals(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client(wrap_max_ttl="5m")
    path = unique("never")
    await admin.write(path, {"password": "never-wrap"})
    await admin.policy(path, reveal="never")

    async def refused(target: str, headers: dict[str, str], ttl: str, status: int, code: str,
                      **query: str) -> dict[str, Any]:
        resp = await client.get(f"/secrets/{target}", params={"wrap_ttl": ttl, **query}, headers=headers)
        body: dict[str, Any] = await resp.json()
        assert resp.status == status, body
        assert body["error"]["code"] == code, body
        assert "never-wrap" not in json.dumps(body)
        return body

    for headers in (USER, ALICE):  # reveal=never: no wrapped delivery for anyone
        await refused(path, headers, "60s", 403, "secret_not_revealable")
    result = await mcp_tool(client, key_of(USER), "kv_read", {"path": path, "wrap_ttl": "60s"})
    structured(result, error="secret_not_revealable")
    body = await refused(path, USER, "6m", 400, "invalid_wrap_ttl")  # over WRAP_MAX_TTL
    assert body["error"]["max_seconds"] == 300
    await refused(path, USER, "0", 400, "invalid_wrap_ttl")
    for bad in ("60x", "-5", "1.5m", "9999999"):
        await refused(path, USER, bad, 400, "invalid_request")
    await refused(path, WRITER, "60s", 403, "forbidden")  # neither use nor read

    plain = unique("plain")
    await admin.write(plain, {"a": "1"})
    await admin.write(plain, {"a": "2"})
    await refused(unique("missing"), USER, "60s", 404, "not_found")
    await refused(plain, USER, "60s", 404, "version_not_found", version="7")
    resp = await client.delete(f"/secrets/{plain}", headers=ALICE)
    assert resp.status == 204
    await refused(plain, USER, "60s", 404, "secret_deleted")
    assert (await wrapped(client, plain, USER, "5m", version="1"))["version"] == 1  # older version still wraps


@pytest.mark.parametrize("token_type", ["batch", "service"])
async def test_wrapping_with_child_tokens(reveal_client: RevealClient, child_settings: Any, admin: Admin,
                                          bao: DevVault, token_type: str) -> None:
    """In child-token mode the wrapped read runs under the agent's child token (Vault applies the agent's policy;
    a batch or service child token without the default policy may ask for wrapping), and fingerprints under the
    bridge's own token with the provisioned policy."""
    settings = child_settings(child_token_type=token_type)
    client = await reveal_client(**{k: getattr(settings, k) for k in
                                    ("vault_token", "vault_role_id", "vault_secret_id", "child_token_enabled",
                                     "child_token_type")})
    path = unique("child")
    await admin.write(path, {"password": f"child-{token_type}"})
    body = await wrapped(client, path, USER, "60s")
    refs = await client.get(f"/secrets/{path}", headers=USER)
    assert (await refs.json())["fields"]["password"]["fingerprint"].startswith("hmac-sha256:v1:")
    data = await asyncio.to_thread(unwrap, bao, body["wrap_info"]["token"])
    assert data["data"]["data"] == {"password": f"child-{token_type}"}


async def test_vault_facts_the_wrapping_token_outlives_the_child_token(admin: Admin, bao: DevVault) -> None:
    """Checked directly on OpenBao: a wrapping token made with a batch child token (2 s TTL) unwraps after that
    token expired, one made with a service child token after it revoked itself; Vault caps the wrap TTL by neither
    the child's TTL nor ``auth/token/`` ``max_lease_ttl`` (provision set it to 1 h), so the bridge must."""
    from tests.support.vault import root_client

    path = unique("fact")
    await admin.write(path, {"password": "fact-value"})
    wraps: list[str] = []
    async with root_client(bao) as root:
        for role in ("mcp-agent-batch", "mcp-agent"):
            minted = await root.request("POST", f"auth/token/create/{role}", operation="test.mint",
                                        json_body={"policies": ["mcp-agent-alice"], "ttl": "2s"})
            assert minted.auth is not None
            child = minted.auth.client_token.get_secret_value()
            read = await root.client.request("GET", f"secret/data/mcp/alice/{path}", operation="test.wrap",
                                             token=child, headers={"X-Vault-Wrap-TTL": "7200"})
            assert read.wrap_info is not None
            assert read.wrap_info.ttl == 7200  # two hours from a 2 s token, above the mount's 1 h max_lease_ttl
            wraps.append(read.wrap_info.token.get_secret_value())
            with pytest.raises(VaultPermissionDeniedError):  # the policy is applied before anything is wrapped
                await root.client.request("GET", f"secret/data/mcp/bob/{path}", operation="test.wrap", token=child,
                                          headers={"X-Vault-Wrap-TTL": "60"})
            if role == "mcp-agent":
                await root.client.request("POST", "auth/token/revoke-self", operation="test.revoke", token=child)
    await asyncio.sleep(3)  # the batch child token has expired
    for token in wraps:
        data = await asyncio.to_thread(unwrap, bao, token)
        assert data["data"]["data"] == {"password": "fact-value"}
