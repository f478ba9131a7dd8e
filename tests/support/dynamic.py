"""A provisioned namespace with dynamic secrets: PostgreSQL roles, a PKI CA and roles, an SSH CA and roles, for
agents alice and bob, made with ``vault-mcp-bridge provision --dynamic`` exactly as an operator would; and the
``dynamic_vault`` fixture with helpers for tests of a bridge serving them (issue 13)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.config import Settings
from bridge.provision import ProvisionOptions, ProvisionResult, provision
from bridge.provision_dynamic import parse_dynamic, plan_dynamic
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError
from devtools.devvault import DevVault
from tests.support.postgres import PostgresServer, make_login_role
from tests.support.vault import RootVault

CREATE_LOGIN = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"


def spec_dict(server: PostgresServer, admin: str, *, agents: tuple[str, ...] = ("alice", "bob"),
              db_ttl: str = "15m", db_max_ttl: str = "1h") -> dict[str, Any]:
    """A roles file (as parsed YAML): per agent a database role ``ro``, a PKI role ``web`` for
    ``<agent>.example`` and an SSH role ``shell`` for user ``deploy``; the connection logs in as ``admin``
    with the password from ``$TEST_DB_ADMIN_PASSWORD``."""
    return {
        "database": {
            "connections": {"app": {
                "plugin": "postgresql-database-plugin", "connection_url": server.vault_connection_url,
                "username": admin, "password_env": "TEST_DB_ADMIN_PASSWORD"}},
            "roles": [{"agent": a, "name": "ro", "connection": "app", "creation_statements": [CREATE_LOGIN],
                       "default_ttl": db_ttl, "max_ttl": db_max_ttl} for a in agents]},
        "pki": {
            "generate_root": {"common_name": "bridge test root", "ttl": "8760h"},
            "roles": [{"agent": a, "name": "web", "allowed_domains": [f"{a}.example"], "allow_subdomains": True,
                       "key_type": "ec", "ttl": "1h", "max_ttl": "24h"} for a in agents]},
        "ssh": {
            "roles": [{"agent": a, "name": "shell", "allowed_users": ["deploy"], "default_user": "deploy",
                       "ttl": "10m", "max_ttl": "1h"} for a in agents]},
    }


@dataclass
class DynamicVault:
    """What a test needs: the namespace, the provisioning result, the connection's admin login."""

    bao: DevVault
    namespace: str
    result: ProvisionResult
    admin: str
    admin_password: str

    def client(self) -> VaultClient:
        return VaultClient(self.bao.addr, namespace=self.namespace)

    def root(self) -> RootVault:
        return RootVault(self.client(), self.bao.root_token)


async def provision_dynamic(bao: DevVault, namespace: str, server: PostgresServer, *,
                            admin: tuple[str, str] | None = None, spec: dict[str, Any] | None = None,
                            **options: Any) -> DynamicVault:
    """Provision ``namespace`` with the bridge's usual setup plus ``spec`` (default :func:`spec_dict`)."""
    name, password = admin or await make_login_role(server, createrole=True)
    data = spec if spec is not None else spec_dict(server, name)
    plan = plan_dynamic(parse_dynamic(data), prefix="mcp", scope=options.get("dynamic_scope", "agent"),
                        prune=options.get("prune", False), environ={"TEST_DB_ADMIN_PASSWORD": password})
    result = await provision(bao.addr, bao.root_token,
                             ProvisionOptions(agents=["alice", "bob"], dynamic=plan, **options),
                             namespace=namespace)
    return DynamicVault(bao, namespace, result, name, password)


# -- a bridge serving dynamic secrets (issue 13) -----------------------------------------------------------------

ADMIN_KEY = "admin-key-" + "q" * 24


def bridge_env(dv: DynamicVault, **overrides: str) -> dict[str, str]:
    """The environment of a bridge for ``dv``'s namespace, logged in with the provisioned AppRole (the bridge's
    own minimal policy, as in production), child tokens on, the test agents' API keys, an admin key."""
    import json

    from tests.conftest import API_KEYS

    env = {
        "VAULT_ADDR": dv.bao.addr, "VAULT_NAMESPACE": dv.namespace, "VAULT_ROLE_ID": dv.result.role_id,
        "VAULT_SECRET_ID": str(dv.result.secret_id), "CHILD_TOKEN_ENABLED": "true",
        "API_KEYS_JSON": json.dumps(API_KEYS), "ADMIN_API_KEYS": ADMIN_KEY, "RATE_LIMIT_REQUESTS": "100000",
        "READY_PROBE_INTERVAL": "0.1",
    }
    env.update(overrides)
    return env


def bridge_settings(dv: DynamicVault, **overrides: str) -> Settings:
    return Settings.from_env(bridge_env(dv, **overrides))


async def lease_token_of(dv: DynamicVault, agent: str) -> dict[str, Any]:
    """What the bridge state holds of ``agent``'s lease token (read with the root token)."""
    async with dv.root() as root:
        try:
            resp = await root.request("GET", f"secret/data/mcp/_bridge/lease-tokens/{agent}", operation="test")
        except VaultNotFoundError:
            return {}
    return dict(((resp.data or {}).get("data")) or {})


async def lease_ttl(dv: DynamicVault, lease_id: str) -> int | None:
    """The lease's remaining TTL as the root token sees it, or None once it is gone."""
    async with dv.root() as root:
        try:
            resp = await root.request("PUT", "sys/leases/lookup", operation="test", json_body={"lease_id": lease_id})
        except VaultInvalidRequestError:
            return None
        return int((resp.data or {})["ttl"])


async def crl_serials(dv: DynamicVault) -> set[int]:
    """The serials on the PKI mount's CRL (rebuilt on each revocation)."""
    from cryptography import x509

    async with dv.root() as root:
        pem = str(((await root.request("GET", "pki/cert/crl", operation="test")).data or {})["certificate"])
    return {entry.serial_number for entry in x509.load_pem_x509_crl(pem.encode())}


def serial_int(serial: str) -> int:
    return int(serial.replace(":", ""), 16)


def csr_for(name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def ssh_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


@pytest.fixture
async def dynamic_vault(bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> DynamicVault:
    """A fresh namespace provisioned for alice and bob with database, PKI and SSH roles (15 min logins)."""
    return await provision_dynamic(bao, fresh_namespace, postgres)
