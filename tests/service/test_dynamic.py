"""Dynamic secrets through a real bridge, real OpenBao and real PostgreSQL (issue 13): two agents get working
database logins, certificates and SSH certificates for their own roles only; every lease is listed, renewed and
revoked through the bridge, and the credential itself proves it (the PostgreSQL login fails, the certificate is on
the CRL); TTLs are capped; the leases outlive the request tokens and a restart of the bridge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509

from bridge.app import create_app
from bridge.vault.errors import VaultPermissionDeniedError
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY
from tests.mcp.conftest import initialize, legacy_headers, rpc
from tests.support.dynamic import (
    DynamicVault,
    bridge_settings,
    crl_serials,
    csr_for,
    eventually,
    lease_token_of,
    lease_ttl,
    serial_int,
    ssh_public_key,
)
from tests.support.postgres import PostgresServer, can_login

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
BOB = {"X-API-Key": API_KEY_BOB}
Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def dyn_client(aiohttp_client: Callable[..., Awaitable[Client]], dynamic_vault: DynamicVault) -> MakeClient:
    """``await dyn_client(SETTING="value", ...)``: a bridge on ``dynamic_vault``'s namespace."""

    async def make(**overrides: str) -> Client:
        return await aiohttp_client(create_app(bridge_settings(dynamic_vault, **overrides)))

    return make


async def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body


async def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    assert body["error"]["code"] == code, body
    return body


async def test_two_agents_get_working_credentials_for_their_own_roles_only(
        dyn_client: MakeClient, dynamic_vault: DynamicVault, postgres: PostgresServer) -> None:
    client = await dyn_client()
    logins = {}
    for agent, headers in (("alice", ALICE), ("bob", BOB)):
        creds = await ok(await client.post("/dynamic/database/ro", json={}, headers=headers))
        assert set(creds) == {"username", "password", "lease_id", "ttl", "renewable"}
        assert creds["lease_id"].startswith(f"database/creds/mcp.{agent}.ro/")
        assert creds["renewable"] is True
        assert 890 <= creds["ttl"] <= 900  # LEASE_DEFAULT_TTL (15m), the role's default here too
        assert await can_login(postgres, creds["username"], creds["password"])
        logins[agent] = creds
        cert = await ok(await client.post("/dynamic/pki/web", json={
            "common_name": f"www.{agent}.example", "alt_names": f"api.{agent}.example", "ttl": "10m"},
            headers=headers))
        parsed = x509.load_pem_x509_certificate(cert["certificate"].encode())
        assert parsed.serial_number == serial_int(cert["serial_number"])
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == [f"api.{agent}.example", f"www.{agent}.example"]
        assert cert["private_key"].startswith("-----BEGIN")
        assert cert["lease_id"].startswith(f"pki/issue/mcp.{agent}.web/")
        assert 590 <= cert["ttl"] <= 600
        signed = await ok(await client.post("/dynamic/pki/web:sign", json={"csr": csr_for(f"c.{agent}.example")},
                                            headers=headers))
        assert "private_key" not in signed  # the key never left the agent
        assert signed["lease_id"].startswith(f"pki/sign/mcp.{agent}.web/")
        ssh = await ok(await client.post("/dynamic/ssh/shell", json={
            "public_key": ssh_public_key(), "valid_principals": "deploy", "ttl": "5m"}, headers=headers))
        assert ssh["signed_key"].startswith("ssh-ed25519-cert-v01@openssh.com ")
        assert ssh["valid_principals"] == ["deploy"]
        assert 290 <= ssh["ttl"] <= 300
    # the agent names its own roles only; Vault itself refuses the other's, to the very token the bridge uses
    await error(await client.post("/dynamic/pki/web", json={"common_name": "www.bob.example"}, headers=ALICE),
                400, "invalid_request")
    await error(await client.post("/dynamic/ssh/shell", json={"public_key": ssh_public_key(),
                                                              "valid_principals": "root"}, headers=ALICE),
                400, "invalid_request")
    alice_token = str((await lease_token_of(dynamic_vault, "alice"))["token"])
    async with dynamic_vault.client() as vault:
        for call in (vault.database.creds("database", "mcp.bob.ro", token=alice_token),
                     vault.pki.issue("pki", "mcp.bob.web", {"common_name": "x.bob.example"}, token=alice_token),
                     vault.ssh.sign("ssh", "mcp.bob.shell", {"public_key": ssh_public_key()}, token=alice_token),
                     vault.leases.revoke(logins["bob"]["lease_id"], token=alice_token)):
            with pytest.raises(VaultPermissionDeniedError):
                await call
    assert await can_login(postgres, logins["bob"]["username"], logins["bob"]["password"])
    # a role the agent does not have: Vault's answer, not a 500
    # a role the agent does not have (bob's name included): 404 naming the agent's own role name
    for path, body in (("/dynamic/database/nope", {}), ("/dynamic/pki/nope", {"common_name": "a.alice.example"}),
                       ("/dynamic/ssh/nope", {"public_key": ssh_public_key()})):
        missing = await error(await client.post(path, json=body, headers=ALICE), 404, "role_not_found")
        assert missing["error"]["role"] == "nope"
        assert "mcp.alice" not in missing["error"]["message"]


async def test_every_lease_is_listed_renewed_and_revoked_and_the_credential_stops_working(
        dyn_client: MakeClient, dynamic_vault: DynamicVault, postgres: PostgresServer) -> None:
    client = await dyn_client()
    db = await ok(await client.post("/dynamic/database/ro", json={"ttl": "2m"}, headers=ALICE))
    assert 110 <= db["ttl"] <= 120  # renewed down from the role's 15m at once
    cert = await ok(await client.post("/dynamic/pki/web", json={"common_name": "a.alice.example"}, headers=ALICE))
    ssh = await ok(await client.post("/dynamic/ssh/shell", json={"public_key": ssh_public_key()}, headers=ALICE))
    bob = await ok(await client.post("/dynamic/database/ro", json={}, headers=BOB))

    listed = (await ok(await client.get("/leases", headers=ALICE)))["leases"]
    assert [item["kind"] for item in listed] == ["database", "pki", "ssh"]
    by_kind = {item["kind"]: item for item in listed}
    assert by_kind["database"]["lease_id"] == db["lease_id"]
    assert by_kind["database"]["username"] == db["username"]
    assert by_kind["database"]["renewable"]
    assert by_kind["database"]["revocable"]
    assert by_kind["pki"]["serial_number"] == cert["serial_number"]
    assert by_kind["pki"]["common_name"] == "a.alice.example"
    assert not by_kind["pki"]["renewable"]
    assert by_kind["pki"]["revocable"]
    assert "lease_id" not in by_kind["ssh"]  # no lease: listed until it expires, never revocable
    assert by_kind["ssh"]["serial_number"] == ssh["serial_number"]
    assert not by_kind["ssh"]["revocable"]
    assert "password" not in str(listed)
    assert (await ok(await client.get("/leases", headers=BOB)))["leases"][0]["lease_id"] == bob["lease_id"]

    renewed = await ok(await client.post("/leases:renew", json={"lease_id": db["lease_id"], "increment": "10m"},
                                         headers=ALICE))
    assert 590 <= renewed["ttl"] <= 600
    remaining = await lease_ttl(dynamic_vault, db["lease_id"])
    assert remaining is not None
    assert remaining > 500
    await error(await client.post("/leases:renew", json={"lease_id": cert["lease_id"]}, headers=ALICE),
                400, "lease_not_renewable")
    # another agent's lease is not found, whatever Vault would say; it stays untouched
    for path in ("/leases:renew", "/leases:revoke"):
        await error(await client.post(path, json={"lease_id": bob["lease_id"]}, headers=ALICE), 404,
                    "lease_not_found")
    assert await can_login(postgres, bob["username"], bob["password"])

    assert await ok(await client.post("/leases:revoke", json={"lease_id": db["lease_id"]}, headers=ALICE)) == {
        "lease_id": db["lease_id"], "revoked": True}
    assert not await can_login(postgres, db["username"], db["password"])
    await ok(await client.post("/leases:revoke", json={"lease_id": cert["lease_id"]}, headers=ALICE))
    assert serial_int(cert["serial_number"]) in await crl_serials(dynamic_vault)
    await error(await client.post("/leases:revoke", json={"lease_id": db["lease_id"]}, headers=ALICE), 404,
                "lease_not_found")
    assert [item["kind"] for item in (await ok(await client.get("/leases", headers=ALICE)))["leases"]] == ["ssh"]
    # revoking needs the delete scope
    await error(await client.post("/leases:revoke", json={"lease_id": bob["lease_id"]},
                                  headers={"X-API-Key": API_KEY_READONLY}), 403, "forbidden")


async def test_ttls_are_capped_by_lease_max_ttl(dyn_client: MakeClient, postgres: PostgresServer) -> None:
    client = await dyn_client(LEASE_MAX_TTL="3m", LEASE_DEFAULT_TTL="1m")
    db = await ok(await client.post("/dynamic/database/ro", json={"ttl": "5h"}, headers=ALICE))
    assert 170 <= db["ttl"] <= 180
    default = await ok(await client.post("/dynamic/database/ro", json={}, headers=ALICE))
    assert 50 <= default["ttl"] <= 60
    cert = await ok(await client.post("/dynamic/pki/web", json={"common_name": "a.alice.example", "ttl": 86400},
                                      headers=ALICE))
    assert cert["ttl"] <= 180
    ssh = await ok(await client.post("/dynamic/ssh/shell", json={"public_key": ssh_public_key(), "ttl": "1h"},
                                     headers=ALICE))
    assert ssh["ttl"] <= 180
    renewed = await ok(await client.post("/leases:renew", json={"lease_id": db["lease_id"], "increment": "2h"},
                                         headers=ALICE))
    assert renewed["ttl"] <= 180
    for bad in ({"ttl": "soon"}, {"ttl": 0}, {"ttl": True}, {"other": 1}):
        await error(await client.post("/dynamic/database/ro", json=bad, headers=ALICE), 400, "invalid_request")
    await error(await client.post("/dynamic/database/Bad.Role", json={}, headers=ALICE), 400, "invalid_request")


async def test_leases_outlive_request_tokens_and_survive_a_restart(
        dyn_client: MakeClient, dynamic_vault: DynamicVault, postgres: PostgresServer) -> None:
    client = await dyn_client(CHILD_TOKEN_TTL="10s")
    db = await ok(await client.post("/dynamic/database/ro", json={"ttl": "10m"}, headers=ALICE))
    remaining = await lease_ttl(dynamic_vault, db["lease_id"])
    assert remaining is not None
    assert remaining > 500  # not capped by the 10 s request token
    token = await lease_token_of(dynamic_vault, "alice")
    assert token["accessor"]
    # another bridge process (a replica, or this one restarted) sees the same leases and uses the same token
    other = await dyn_client()
    listed = (await ok(await other.get("/leases", headers=ALICE)))["leases"]
    assert [item["lease_id"] for item in listed] == [db["lease_id"]]
    await ok(await other.post("/dynamic/database/ro", json={}, headers=ALICE))
    assert (await lease_token_of(dynamic_vault, "alice"))["accessor"] == token["accessor"]
    assert await ok(await other.post("/leases:revoke", json={"lease_id": db["lease_id"]}, headers=ALICE))
    assert not await can_login(postgres, db["username"], db["password"])


async def test_a_dead_lease_token_is_replaced_and_its_records_dropped(
        dyn_client: MakeClient, dynamic_vault: DynamicVault, postgres: PostgresServer) -> None:
    client = await dyn_client()
    first = await ok(await client.post("/dynamic/database/ro", json={}, headers=ALICE))
    old = await lease_token_of(dynamic_vault, "alice")
    async with dynamic_vault.client() as vault:  # gone behind the bridge's back (an operator, its period)
        await vault.auth_token.revoke_self(token=str(old["token"]))

    async def login_gone() -> bool:
        return not await can_login(postgres, first["username"], first["password"])

    assert await eventually(login_gone)
    second = await ok(await client.post("/dynamic/database/ro", json={}, headers=ALICE))
    assert await can_login(postgres, second["username"], second["password"])
    assert (await lease_token_of(dynamic_vault, "alice"))["accessor"] != old["accessor"]
    listed = (await ok(await client.get("/leases", headers=ALICE)))["leases"]
    assert [item["lease_id"] for item in listed] == [second["lease_id"]]


async def test_lease_limit_and_mcp_tools(dyn_client: MakeClient, postgres: PostgresServer) -> None:
    client = await dyn_client(LEASE_MAX_PER_AGENT="2")
    session = await initialize(client, API_KEY_ALICE)
    headers = legacy_headers(API_KEY_ALICE, session, **{"MCP-Protocol-Version": "2025-11-25"})

    async def tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post("/mcp", json=rpc("tools/call", {"name": name, "arguments": arguments}),
                                 headers=headers)
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = (await resp.json())["result"]
        return result

    listed = await client.post("/mcp", json=rpc("tools/list"), headers=headers)
    names = {t["name"] for t in (await listed.json())["result"]["tools"]}
    assert {"db_creds", "pki_issue", "pki_sign", "ssh_sign", "lease_list", "lease_renew", "lease_revoke"} <= names
    creds = await tool("db_creds", {"role": "ro", "ttl": "5m"})
    assert not creds["isError"]
    login = creds["structuredContent"]
    assert await can_login(postgres, login["username"], login["password"])
    await tool("ssh_sign", {"role": "shell", "public_key": ssh_public_key()})
    full = await tool("pki_issue", {"role": "web", "common_name": "a.alice.example"})
    assert full["isError"]
    assert full["structuredContent"]["error"]["code"] == "lease_limit_reached"
    leases = (await tool("lease_list", {}))["structuredContent"]["leases"]
    assert len(leases) == 2
    assert not (await tool("lease_revoke", {"lease_id": login["lease_id"]}))["isError"]
    assert not await can_login(postgres, login["username"], login["password"])
    assert not (await tool("pki_issue", {"role": "web", "common_name": "a.alice.example"}))["isError"]


async def test_idle_agents_lose_their_leases(dyn_client: MakeClient, postgres: PostgresServer,
                                             tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await dyn_client(LEASE_REVOKE_ON_IDLE="3s", AUDIT_LOG=str(audit))
    db = await ok(await client.post("/dynamic/database/ro", json={}, headers=ALICE))
    bob = await ok(await client.post("/dynamic/database/ro", json={}, headers=BOB))
    for _ in range(10):  # alice keeps working (any request counts); bob is idle
        await ok(await client.get("/whoami", headers=ALICE))
        await asyncio.sleep(0.5)
    assert await can_login(postgres, db["username"], db["password"])

    async def bob_revoked() -> bool:
        return not await can_login(postgres, bob["username"], bob["password"])

    assert await eventually(bob_revoked, within=20)

    async def alice_revoked() -> bool:
        return not await can_login(postgres, db["username"], db["password"])

    assert await eventually(alice_revoked, within=20)  # now she is idle too
    assert (await ok(await client.get("/leases", headers=ALICE)))["leases"] == []
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    idle = [(r["agent"], r["leases_revoked"]) for r in records if r["operation"] == "lease_revoke_idle"]
    assert idle == [("bob", 1), ("alice", 1)]
