"""Database passwords by reference (issue 13 with issue 12), through a real bridge, real OpenBao and real
PostgreSQL: a ``use``-only identity gets ``lease://<lease_id>#password`` instead of the password (REST and MCP);
brokered HTTP delivers the password to a host the operator allowed for the role (``allowed_hosts`` in the
``provision --dynamic`` file) and to no other; ``vault-mcp-bridge exec`` with a ``read`` key of the same agent
logs in to PostgreSQL with it; another agent's reference is 404; the held password (bridge state in Vault) goes
with its lease (revoke, expiry, quarantine); an identity with ``read`` still gets the password exactly as before;
and the password is in no log line or audit record of a bridge process at ``LOG_LEVEL=debug``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.vault.errors import VaultNotFoundError
from devtools.devvault import DevVault
from tests.broker.conftest import MakeUpstream, Upstream
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY, API_KEYS
from tests.mcp.conftest import modern_body, modern_headers
from tests.support.dynamic import (
    ADMIN_KEY,
    DynamicVault,
    bridge_env,
    bridge_settings,
    csr_for,
    eventually,
    provision_dynamic,
    spec_dict,
    ssh_public_key,
)
from tests.support.postgres import PostgresServer, can_login, make_login_role
from tests.support.reveal import mcp_tool, structured
from tests.support.servers import BridgeProcess

pytestmark = pytest.mark.integration

USE_ALICE = "use-alice-key-" + "u" * 16
USE_BOB = "use-bob-key-" + "v" * 18
KEYS = {**API_KEYS, USE_ALICE: {"agent": "alice", "scopes": ["use", "write", "list"]},
        USE_BOB: {"agent": "bob", "scopes": ["use", "write", "list"]}}
USE = {"X-API-Key": USE_ALICE}
BOB_USE = {"X-API-Key": USE_BOB}
ALICE = {"X-API-Key": API_KEY_ALICE}  # read, write, delete, list
READER = {"X-API-Key": API_KEY_READONLY}  # alice with read, list
BOB = {"X-API-Key": API_KEY_BOB}
Client = TestClient[Any, Any]


@pytest.fixture
async def listed(make_upstream: MakeUpstream) -> Upstream:
    """The host alice's database role allows (a recording server on 127.0.0.1)."""
    return await make_upstream()


@pytest.fixture
async def unlisted(make_upstream: MakeUpstream) -> Upstream:
    return await make_upstream()


@pytest.fixture
async def ref_vault(bao: DevVault, fresh_namespace: str, postgres: PostgresServer, listed: Upstream) -> DynamicVault:
    """As ``dynamic_vault``, with ``allowed_hosts: [127.0.0.1:<listed>]`` on alice's database role (bob's has
    none)."""
    admin = await make_login_role(postgres, createrole=True)
    spec = spec_dict(postgres, admin[0])
    alice_role = spec["database"]["roles"][0]
    assert alice_role["agent"] == "alice"
    alice_role["allowed_hosts"] = [f"127.0.0.1:{listed.port}"]
    return await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=spec)


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]], ref_vault: DynamicVault) -> Client:
    return await aiohttp_client(create_app(bridge_settings(ref_vault, API_KEYS_JSON=json.dumps(KEYS))))


async def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body


async def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    assert body["error"]["code"] == code, body
    return body


def _held_path(agent: str, lease_id: str = "") -> str:
    folder = f"secret/data/mcp/_bridge/lease-values/{agent}"
    return f"{folder}/{hashlib.sha256(lease_id.encode()).hexdigest()}" if lease_id else folder


async def held_doc(dv: DynamicVault, agent: str, lease_id: str) -> dict[str, Any] | None:
    """The bridge state's document of the password held for ``lease_id`` (read with the root token)."""
    async with dv.root() as root:
        try:
            resp = await root.request("GET", _held_path(agent, lease_id), operation="test")
        except VaultNotFoundError:
            return None
    return dict((resp.data or {}).get("data") or {})


async def held_count(dv: DynamicVault, agent: str) -> int:
    async with dv.root() as root:
        try:
            resp = await root.request("GET", _held_path(agent).replace("/data/", "/metadata/", 1),
                                      operation="test", params={"list": "true"})
        except VaultNotFoundError:
            return 0
    return len((resp.data or {}).get("keys") or [])


def placeholder(ref: str) -> str:
    return "{{" + ref + "}}"


async def test_a_use_only_identity_gets_a_reference_that_the_broker_sends_to_allowed_hosts_only(
        client: Client, ref_vault: DynamicVault, postgres: PostgresServer, listed: Upstream,
        unlisted: Upstream) -> None:
    creds = await ok(await client.post("/dynamic/database/ro", json={}, headers=USE))
    assert set(creds) == {"username", "password_reference", "password_fingerprint", "lease_id", "ttl", "renewable"}
    ref = creds["password_reference"]
    assert ref == f"lease://{creds['lease_id']}#password"
    assert creds["password_fingerprint"].startswith("hmac-sha256:v1:")
    doc = await held_doc(ref_vault, "alice", creds["lease_id"])  # written before the answer
    assert doc is not None
    password = doc["password"]
    assert doc["lease_id"] == creds["lease_id"]
    assert await can_login(postgres, creds["username"], password)
    assert password not in json.dumps(creds)

    # MCP: the same answer, and the tool's output schema says so
    result = await mcp_tool(client, USE_ALICE, "db_creds", {"role": "ro", "ttl": "5m"})
    tool_creds = structured(result)
    assert "password" not in tool_creds
    assert tool_creds["password_reference"] == f"lease://{tool_creds['lease_id']}#password"
    tool_doc = await held_doc(ref_vault, "alice", tool_creds["lease_id"])
    assert tool_doc is not None
    assert tool_doc["password"] not in json.dumps(result)
    listing = await client.post("/mcp", json=modern_body("tools/list"), headers=modern_headers(USE_ALICE,
                                                                                                "tools/list"))
    schema = next(t for t in (await listing.json())["result"]["tools"] if t["name"] == "db_creds")["outputSchema"]
    assert {"password", "password_reference", "password_fingerprint"} <= set(schema["properties"])
    assert "password" not in schema.get("required", [])
    listed_leases = (await ok(await client.get("/leases", headers=USE)))["leases"]
    assert {item["lease_id"]: item.get("password_reference") for item in listed_leases} == {
        creds["lease_id"]: ref, tool_creds["lease_id"]: tool_creds["password_reference"]}

    # brokered HTTP: the password reaches the host the operator allowed for the role, redacted in the answer
    request = {"method": "POST", "url": f"http://127.0.0.1:{listed.port}/login",
               "headers": {"X-Token": placeholder(ref), "Content-Type": "application/json"},
               "body": json.dumps({"user": creds["username"], "password": placeholder(ref)})}
    for answer in (await ok(await client.post("/broker/http", json=request, headers=USE)),
                   structured(await mcp_tool(client, USE_ALICE, "http_request", request))):
        assert answer["status"] == 200
        assert f"[redacted:{creds['password_fingerprint']}]" in answer["body"]
        assert password not in json.dumps(answer)
        received = listed.received[-1]
        assert received.headers["X-Token"] == password
        assert json.loads(received.body) == {"user": creds["username"], "password": password}
    # to any other host: refused before anything is sent
    elsewhere = {**request, "url": f"http://127.0.0.1:{unlisted.port}/steal"}
    await error(await client.post("/broker/http", json=elsewhere, headers=USE), 403, "broker_host_not_allowed")
    assert unlisted.received == []

    # bob's role lists no allowed_hosts: his passwords cannot be brokered at all
    bob = await ok(await client.post("/dynamic/database/ro", json={}, headers=BOB_USE))
    bob_request = {**request, "headers": {"X-Token": placeholder(bob["password_reference"])}, "body": None}
    refused = await error(await client.post("/broker/http", json=bob_request, headers=BOB_USE), 403,
                          "broker_not_brokerable")
    assert "allowed_hosts" in refused["error"]["message"]
    # another agent's reference is not found, wherever it is used
    await error(await client.post("/broker/http", json=request, headers=BOB_USE), 404, "lease_not_found")
    await error(await client.post("/leases:resolve", json={"reference": ref}, headers=BOB), 404, "lease_not_found")
    count = len(listed.received)
    assert structured(await mcp_tool(client, USE_BOB, "http_request", request), error="lease_not_found")
    assert len(listed.received) == count
    # Transit takes secret references only, and says so
    refused = await error(await client.post("/transit/encrypt", json={"key": "k", "plaintext_ref": ref},
                                            headers=USE), 400, "invalid_reference")
    assert "lease reference" in refused["error"]["message"]
    assert await can_login(postgres, creds["username"], password)


async def test_a_reference_resolves_for_read_only_and_dies_with_its_lease(
        client: Client, ref_vault: DynamicVault, postgres: PostgresServer,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    creds = await ok(await client.post("/dynamic/database/ro", json={}, headers=USE))
    ref = creds["password_reference"]
    replica = await aiohttp_client(create_app(bridge_settings(ref_vault, API_KEYS_JSON=json.dumps(KEYS))))
    resolved = await ok(await replica.post("/leases:resolve", json={"reference": ref}, headers=READER))  # shared
    assert resolved["reference"] == ref
    assert resolved["lease_id"] == creds["lease_id"]
    assert resolved["field"] == "password"
    assert await can_login(postgres, creds["username"], resolved["value"])
    await error(await client.post("/leases:resolve", json={"reference": ref}, headers=USE), 403, "forbidden")
    await error(await client.post("/leases:resolve", json={"reference": "secret://app/db#password"},
                                  headers=READER), 400, "invalid_reference")
    await error(await client.post("/leases:resolve", json={"reference": "lease://x#username"}, headers=READER), 400,
                "invalid_reference")

    # an identity that may see values gets the password exactly as before, and the bridge keeps nothing of it
    plain = await ok(await client.post("/dynamic/database/ro", json={}, headers=READER))
    assert set(plain) == {"username", "password", "lease_id", "ttl", "renewable"}
    assert await can_login(postgres, plain["username"], plain["password"])
    assert await held_doc(ref_vault, "alice", plain["lease_id"]) is None
    await error(await client.post("/leases:resolve", json={"reference": f"lease://{plain['lease_id']}#password"},
                                  headers=READER), 404, "field_not_found")

    # renewing takes use; revoking (delete) ends the reference and deletes what the bridge held
    renewed = await ok(await client.post("/leases:renew", json={"lease_id": creds["lease_id"], "increment": "10m"},
                                         headers=USE))
    assert 590 <= renewed["ttl"] <= 600
    await ok(await client.post("/leases:revoke", json={"lease_id": creds["lease_id"]}, headers=ALICE))
    assert not await can_login(postgres, creds["username"], resolved["value"])
    assert await held_doc(ref_vault, "alice", creds["lease_id"]) is None
    await error(await client.post("/leases:resolve", json={"reference": ref}, headers=READER), 404, "lease_not_found")
    request = {"method": "GET", "url": "http://127.0.0.1:9/x", "headers": {"X-Token": placeholder(ref)}}
    await error(await client.post("/broker/http", json=request, headers=USE), 404, "lease_not_found")

    # an expired login's reference is gone, and so is its held password (deleted when it is asked for)
    short = await ok(await client.post("/dynamic/database/ro", json={"ttl": "2s"}, headers=USE))
    assert await held_doc(ref_vault, "alice", short["lease_id"]) is not None

    async def expired() -> bool:
        resp = await client.post("/leases:resolve", json={"reference": short["password_reference"]},
                                 headers=READER)
        return resp.status == 404

    assert await eventually(expired)
    assert await held_doc(ref_vault, "alice", short["lease_id"]) is None

    # the quarantine revokes every lease of the agent and deletes every password held for it
    held = [await ok(await client.post("/dynamic/database/ro", json={}, headers=USE)) for _ in range(2)]
    assert await held_count(ref_vault, "alice") == 2
    passwords = [(await ok(await client.post("/leases:resolve", json={"reference": h["password_reference"]},
                                             headers=READER)))["value"] for h in held]
    await ok(await client.post("/admin/agents/alice:quarantine", json={}, headers={"X-API-Key": ADMIN_KEY}))
    assert await held_count(ref_vault, "alice") == 0
    for item, password in zip(held, passwords, strict=True):

        async def login_gone(user: str = item["username"], secret: str = password) -> bool:
            return not await can_login(postgres, user, secret)

        assert await eventually(login_gone)  # Vault revokes a token's leases in the background


async def test_pki_issue_needs_read_and_signing_takes_use(client: Client) -> None:
    refused = await error(await client.post("/dynamic/pki/web", json={"common_name": "a.alice.example"},
                                            headers=USE), 403, "forbidden")
    assert "pki_sign" in refused["error"]["message"]
    assert refused["error"]["required_scope"] == "read"
    tool = (await mcp_tool(client, USE_ALICE, "pki_issue", {"role": "web", "common_name": "a.alice.example"},
                           status=403))["error"]
    assert tool["data"]["code"] == "insufficient_scope"
    assert "pki_sign" in tool["message"]
    signed = await ok(await client.post("/dynamic/pki/web:sign", json={"csr": csr_for("a.alice.example")},
                                        headers=USE))
    assert signed["certificate"].startswith("-----BEGIN CERTIFICATE")
    assert "private_key" not in signed
    ssh = structured(await mcp_tool(client, USE_ALICE, "ssh_sign", {"role": "shell", "public_key": ssh_public_key()}))
    assert ssh["signed_key"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    kinds = [item["kind"] for item in structured(await mcp_tool(client, USE_ALICE, "lease_list", {}))["leases"]]
    assert kinds == ["pki", "ssh"]


EXEC_CHILD = r"""
import asyncio, os, asyncpg
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(os.environ["PGPORT"]), user=os.environ["PGUSER"],
                                 password=os.environ["PGPASSWORD"], database="postgres", timeout=30)
    try:
        print("logged in as", await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()
    print("password", os.environ["PGPASSWORD"])
asyncio.run(main())
"""


def run_exec(url: str, key_file: Path, env: dict[str, str], bindings: list[str]) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "bridge", "exec", "--url", url, "--api-key-file", str(key_file)]
    for binding in bindings:
        args += ["--env", binding]
    args += ["--", sys.executable, "-c", EXEC_CHILD]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, check=False,
                          env=env)


async def test_exec_logs_in_with_a_lease_reference_and_no_log_or_audit_record_holds_the_password(
        spawn_bridge: Callable[..., BridgeProcess], ref_vault: DynamicVault, postgres: PostgresServer,
        listed: Upstream, tmp_path: Path) -> None:
    import os

    audit_log = tmp_path / "audit.jsonl"
    bridge = await asyncio.to_thread(spawn_bridge, bridge_env(
        ref_vault, API_KEYS_JSON=json.dumps(KEYS), LOG_LEVEL="debug", AUDIT_LOG=str(audit_log)))
    passwords: list[str] = []
    async with aiohttp.ClientSession(bridge.url) as http:

        async def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
            async with http.request(method, path, json=body, headers=headers) as resp:
                answer: dict[str, Any] = await resp.json()
                assert resp.status == 200, answer
                return answer

        creds = await call("POST", "/dynamic/database/ro", USE, {})
        async with http.post("/mcp", json=modern_body("tools/call", {"name": "db_creds", "arguments": {"role": "ro"}}),
                             headers=modern_headers(USE_ALICE, "tools/call", "db_creds")) as resp:
            assert resp.status == 200
            tool = (await resp.json())["result"]["structuredContent"]
        for ref in (creds["password_reference"], tool["password_reference"]):
            passwords.append((await call("POST", "/leases:resolve", READER, {"reference": ref}))["value"])
        sent = await call("POST", "/broker/http", USE, {
            "method": "GET", "url": f"http://127.0.0.1:{listed.port}/x",
            "headers": {"Authorization": "Basic " + placeholder(creds["password_reference"])}})
        assert sent["status"] == 200
        assert listed.received[-1].headers["Authorization"] == "Basic " + passwords[0]

        read_key, use_key, bob_key = tmp_path / "read.key", tmp_path / "use.key", tmp_path / "bob.key"
        read_key.write_text(API_KEY_READONLY + "\n")
        use_key.write_text(USE_ALICE)
        bob_key.write_text(API_KEY_BOB)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "PG"))}
        env.update(PGUSER=creds["username"], PGPORT=str(postgres.port))
        binding = f"PGPASSWORD={creds['password_reference']}"
        done = await asyncio.to_thread(run_exec, bridge.url, read_key, env, [binding])
        assert done.returncode == 0, done.stderr
        assert f"logged in as {creds['username']}" in done.stdout
        assert "password [redacted:PGPASSWORD]" in done.stdout
        assert passwords[0] not in done.stdout + done.stderr
        # the exec key must be one that may see values, and the agent's own
        for key_file, expected in ((use_key, "403 forbidden"), (bob_key, "404 lease_not_found")):
            refused = await asyncio.to_thread(run_exec, bridge.url, key_file, env, [binding])
            assert refused.returncode == 125
            assert expected in refused.stderr, refused.stderr
        await call("POST", "/leases:revoke", ALICE, {"lease_id": creds["lease_id"]})
        gone = await asyncio.to_thread(run_exec, bridge.url, read_key, env, [binding])
        assert gone.returncode == 125
        assert "404 lease_not_found" in gone.stderr
    bridge.stop()  # flush and close: the log is complete
    log = bridge.log_path.read_text(errors="replace")
    audit = audit_log.read_text()
    assert "dynamic.obtained" in log
    assert "lease_resolve" in audit
    for password in passwords:
        assert password not in log
        assert password not in audit
