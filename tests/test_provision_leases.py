"""What the provisioned Vault guarantees for dynamic secrets, proven at the Vault level with real OpenBao and
PostgreSQL, with tokens minted exactly as the bridge mints them (its AppRole token, through the token roles):

- a credential obtained under the agent's lease token (``mcp-agent-lease``) lives its full TTL, beyond a request
  token's life and beyond the bridge's own login; revoking the lease token revokes the database login and the
  certificates (they appear on the CRL);
- one agent's token cannot obtain, renew or revoke another agent's credentials, even by naming the other lease
  in the request body;
- the agent's own PKI issue/sign, SSH sign, lease renew and revoke work, and ``sys/capabilities-self`` answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509

from bridge.policy import render_agent_policy
from bridge.vault.errors import VaultInvalidRequestError, VaultPermissionDeniedError
from bridge.vault.models import VaultResponse
from devtools.devvault import DevVault
from tests.support.dynamic import (
    DynamicVault,
    crl_serials,
    csr_for,
    provision_dynamic,
    serial_int,
    spec_dict,
    ssh_public_key,
)
from tests.support.postgres import PostgresServer, can_login, make_login_role

pytestmark = pytest.mark.integration

LEASE_TTL = 45  # the database roles' default_ttl here: well beyond the 10 s request token below


@pytest.fixture
async def dyn(bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> DynamicVault:
    admin = await make_login_role(postgres, createrole=True)
    spec = spec_dict(postgres, admin[0], db_ttl=f"{LEASE_TTL}s", db_max_ttl="5m")
    return await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=spec)


async def call(dv: DynamicVault, method: str, path: str, token: str, body: Any = None) -> VaultResponse:
    async with dv.client() as vault:
        return await vault.request(method, path, operation="test", token=token, json_body=body)


async def bridge_login(dv: DynamicVault) -> str:
    async with dv.client() as vault:
        auth = await vault.approle.login(dv.result.role_id, str(dv.result.secret_id))
        return auth.client_token.get_secret_value()


async def mint(dv: DynamicVault, bridge: str, role: str, agent: str, **extra: Any) -> dict[str, Any]:
    """As the bridge mints: its own token, the token role, the agent's one policy, a display name and meta."""
    body = {"policies": [f"mcp-agent-{agent}"], "display_name": f"mcp-{agent}", "meta": {"agent": agent}, **extra}
    return ((await call(dv, "POST", f"auth/token/create/{role}", bridge, body)).raw or {}).get("auth") or {}


async def lease_token(dv: DynamicVault, bridge: str, agent: str) -> str:
    return str((await mint(dv, bridge, "mcp-agent-lease", agent))["client_token"])


async def db_creds(dv: DynamicVault, token: str, agent: str) -> tuple[str, str, str, int]:
    resp = await call(dv, "GET", f"database/creds/mcp.{agent}.ro", token)
    raw = resp.raw or {}
    data = resp.data or {}
    return data["username"], data["password"], raw["lease_id"], int(raw["lease_duration"])


async def lease_ttl(dv: DynamicVault, lease_id: str) -> int | None:
    """The lease's remaining TTL as the root token sees it, or None once it is gone."""
    async with dv.root() as root:
        try:
            resp = await root.request("PUT", "sys/leases/lookup", operation="test", json_body={"lease_id": lease_id})
        except VaultInvalidRequestError:  # 400 "invalid lease"
            return None
        return int((resp.data or {})["ttl"])


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


async def test_the_lease_token_is_an_orphan_periodic_token_with_only_the_agents_policy(dyn: DynamicVault) -> None:
    bridge = await bridge_login(dyn)
    auth = await mint(dyn, bridge, "mcp-agent-lease", "alice")
    assert auth["token_type"] == "service"
    assert auth["orphan"] is True
    assert auth["renewable"] is True
    assert auth["policies"] == ["mcp-agent-alice"]  # no default policy
    assert auth["lease_duration"] == 3600  # the period (--lease-token-period)
    renewed = await call(dyn, "POST", "auth/token/renew-self", str(auth["client_token"]), {})
    assert ((renewed.raw or {}).get("auth") or {})["lease_duration"] == 3600  # renew-self resets it to the period
    for refused in (["mcp-agent-alice", "vault-mcp-bridge"], ["root"], ["default"], ["other"]):
        with pytest.raises(VaultInvalidRequestError):
            await call(dyn, "POST", "auth/token/create/mcp-agent-lease", bridge, {"policies": refused})


async def test_a_lease_outlives_request_tokens_and_the_bridges_own_login(
        dyn: DynamicVault, postgres: PostgresServer) -> None:
    bridge = await bridge_login(dyn)
    holder = await lease_token(dyn, bridge, "alice")
    batch = str((await mint(dyn, bridge, "mcp-agent-batch", "alice", ttl="10s"))["client_token"])
    short_user, short_pw, short_lease, short_ttl = await db_creds(dyn, batch, "alice")
    user, pw, lease, ttl = await db_creds(dyn, holder, "alice")
    assert short_ttl <= 10  # capped by the batch token's remaining life
    assert ttl == LEASE_TTL  # the role's TTL, not the token's
    # the bridge's own token goes (shutdown, re-login): the orphan lease token and its lease stay
    await call(dyn, "POST", "auth/token/revoke-self", bridge)
    assert await can_login(postgres, user, pw)

    async def short_gone() -> bool:
        return await lease_ttl(dyn, short_lease) is None and not await can_login(postgres, short_user, short_pw)

    assert await eventually(short_gone), "the batch token's lease should have ended with it"
    remaining = await lease_ttl(dyn, lease)
    assert remaining is not None
    assert remaining > 0
    assert await can_login(postgres, user, pw)
    assert (await call(dyn, "POST", "auth/token/renew-self", holder, {})).auth  # still alive


async def test_revoking_the_lease_token_revokes_database_logins_and_certificates(
        dyn: DynamicVault, postgres: PostgresServer) -> None:
    bridge = await bridge_login(dyn)
    holder = await lease_token(dyn, bridge, "alice")
    user, pw, lease, _ = await db_creds(dyn, holder, "alice")
    issued = await call(dyn, "POST", "pki/issue/mcp.alice.web", holder, {"common_name": "a.alice.example"})
    signed = await call(dyn, "POST", "pki/sign/mcp.alice.web", holder, {"csr": csr_for("b.alice.example")})
    serials = {serial_int((r.data or {})["serial_number"]) for r in (issued, signed)}
    assert (issued.raw or {})["lease_id"].startswith("pki/issue/mcp.alice.web/")
    assert (signed.raw or {})["lease_id"].startswith("pki/sign/mcp.alice.web/")
    assert await can_login(postgres, user, pw)
    assert not serials & await crl_serials(dyn)

    await call(dyn, "POST", "auth/token/revoke-self", holder)  # quarantine: one call

    async def login_fails() -> bool:
        return not await can_login(postgres, user, pw)

    async def on_crl() -> bool:
        return serials <= await crl_serials(dyn)

    assert await eventually(login_fails, within=30)
    assert await lease_ttl(dyn, lease) is None
    assert await eventually(on_crl, within=30)
    with pytest.raises(VaultPermissionDeniedError):
        await call(dyn, "POST", "auth/token/renew-self", holder, {})


async def test_one_agent_cannot_obtain_renew_or_revoke_anothers_credentials(
        dyn: DynamicVault, postgres: PostgresServer) -> None:
    bridge = await bridge_login(dyn)
    alice, bob = await lease_token(dyn, bridge, "alice"), await lease_token(dyn, bridge, "bob")
    _, _, alice_lease, _ = await db_creds(dyn, alice, "alice")
    bob_user, bob_pw, bob_lease, _ = await db_creds(dyn, bob, "bob")
    bob_cert = await call(dyn, "POST", "pki/issue/mcp.bob.web", bob, {"common_name": "x.bob.example"})
    bob_cert_lease = (bob_cert.raw or {})["lease_id"]
    refused: list[tuple[str, str, Any]] = [
        ("GET", "database/creds/mcp.bob.ro", None),
        ("PUT", f"sys/leases/renew/{bob_lease}", {}),
        ("PUT", f"sys/leases/revoke/{bob_lease}", {}),
        ("PUT", f"sys/leases/revoke/{bob_cert_lease}", {}),
        # Vault lets a body lease_id override the URL's: the agent policy's allowed_parameters refuses it
        ("PUT", f"sys/leases/renew/{alice_lease}", {"lease_id": bob_lease}),
        ("PUT", f"sys/leases/revoke/{alice_lease}", {"lease_id": bob_lease}),
        ("PUT", "sys/leases/renew", {"lease_id": bob_lease}),
        ("PUT", "sys/leases/revoke", {"lease_id": bob_lease}),
        ("PUT", "sys/leases/revoke-prefix/database/creds/mcp.bob.ro", {}),
        ("PUT", f"sys/leases/revoke-force/{bob_lease}", {}),
        ("POST", "pki/issue/mcp.bob.web", {"common_name": "y.bob.example"}),
        ("POST", "pki/sign/mcp.bob.web", {"csr": csr_for("z.bob.example")}),
        ("POST", "pki/revoke", {"serial_number": (bob_cert.data or {})["serial_number"]}),
        ("POST", "ssh/sign/mcp.bob.shell", {"public_key": ssh_public_key(), "valid_principals": "deploy"}),
    ]
    for method, path, body in refused:
        with pytest.raises(VaultPermissionDeniedError):
            await call(dyn, method, path, alice, body)
    remaining = await lease_ttl(dyn, bob_lease)
    assert remaining is not None
    assert remaining > LEASE_TTL - 30  # not renewed to anything, not revoked
    assert await can_login(postgres, bob_user, bob_pw)
    assert serial_int((bob_cert.data or {})["serial_number"]) not in await crl_serials(dyn)


async def test_an_agents_own_roles_and_leases_work(dyn: DynamicVault, postgres: PostgresServer) -> None:
    bridge = await bridge_login(dyn)
    holder = await lease_token(dyn, bridge, "alice")
    issued = await call(dyn, "POST", "pki/issue/mcp.alice.web", holder,
                        {"common_name": "www.alice.example", "alt_names": "api.alice.example", "ttl": "1h"})
    data = issued.data or {}
    assert set(data) >= {"certificate", "issuing_ca", "ca_chain", "private_key", "private_key_type",
                         "serial_number", "expiration"}
    assert (issued.raw or {})["renewable"] is False
    cert = x509.load_pem_x509_certificate(str(data["certificate"]).encode())
    assert cert.serial_number == serial_int(data["serial_number"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(sans) == ["api.alice.example", "www.alice.example"]
    with pytest.raises(VaultInvalidRequestError, match="not allowed by this role"):
        await call(dyn, "POST", "pki/issue/mcp.alice.web", holder, {"common_name": "www.bob.example"})
    signed = (await call(dyn, "POST", "pki/sign/mcp.alice.web", holder, {"csr": csr_for("c.alice.example")})).data
    assert signed is not None
    assert "private_key" not in signed  # the key never left the agent
    ssh = await call(dyn, "POST", "ssh/sign/mcp.alice.shell", holder,
                     {"public_key": ssh_public_key(), "valid_principals": "deploy", "ttl": "5m"})
    assert str((ssh.data or {})["signed_key"]).startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert (ssh.data or {})["serial_number"]
    assert (ssh.raw or {})["lease_id"] == ""  # SSH certificates are not leases and cannot be revoked
    with pytest.raises(VaultInvalidRequestError, match="not a valid value for valid_principals"):
        await call(dyn, "POST", "ssh/sign/mcp.alice.shell", holder,
                   {"public_key": ssh_public_key(), "valid_principals": "root"})
    # revoke one certificate by its lease: on the CRL; the other is not
    revoked = await call(dyn, "PUT", f"sys/leases/revoke/{(issued.raw or {})['lease_id']}", holder, {})
    assert revoked.status == 204
    crl = await crl_serials(dyn)
    assert serial_int(data["serial_number"]) in crl
    assert serial_int(signed["serial_number"]) not in crl
    # renew and revoke the agent's own database lease
    user, pw, lease, _ = await db_creds(dyn, holder, "alice")
    renewed = await call(dyn, "PUT", f"sys/leases/renew/{lease}", holder, {"increment": "2m"})
    assert ((renewed.raw or {})["lease_id"], (renewed.raw or {})["lease_duration"]) == (lease, 120)
    assert (await call(dyn, "PUT", f"sys/leases/revoke/{lease}", holder, {})).status == 204
    assert not await can_login(postgres, user, pw)


async def test_capabilities_self_answers_for_the_agents_paths(dyn: DynamicVault) -> None:
    bridge = await bridge_login(dyn)
    child = str((await mint(dyn, bridge, "mcp-agent-batch", "alice", ttl="60s"))["client_token"])
    paths = ["secret/data/mcp/alice/app/db", "secret/metadata/mcp/alice/app/db", "database/creds/mcp.alice.ro",
             "database/creds/mcp.bob.ro", "database/creds/mcp.alicex.ro", "pki/issue/mcp.alice.web",
             "transit/encrypt/mcp.alice.k", "secret/data/mcp/_bridge/x"]
    answer = (await call(dyn, "POST", "sys/capabilities-self", child, {"paths": paths})).data or {}
    assert answer == {
        "secret/data/mcp/alice/app/db": ["create", "delete", "list", "patch", "read", "update"],
        "secret/metadata/mcp/alice/app/db": ["list", "read"],
        "database/creds/mcp.alice.ro": ["read"],
        "database/creds/mcp.bob.ro": ["deny"],
        "database/creds/mcp.alicex.ro": ["deny"],
        "pki/issue/mcp.alice.web": ["update"],
        "transit/encrypt/mcp.alice.k": ["create", "update"],
        "secret/data/mcp/_bridge/x": ["deny"],
    }
    # without the grant (a policy rendered before it existed), child tokens carry no default policy: denied
    old = render_agent_policy("alice").replace('path "sys/capabilities-self"', 'path "sys/nothing-here"')
    async with dyn.root() as root:
        await root.request("PUT", "sys/policies/acl/mcp-agent-old", operation="test", json_body={"policy": old})
    old_child = str((await mint(dyn, bridge, "mcp-agent-batch", "old", ttl="60s"))["client_token"])
    with pytest.raises(VaultPermissionDeniedError):
        await call(dyn, "POST", "sys/capabilities-self", old_child, {"paths": paths[:1]})
