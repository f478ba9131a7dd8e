"""A provisioned namespace with dynamic secrets: PostgreSQL roles, a PKI CA and roles, an SSH CA and roles, for
agents alice and bob, made with ``vault-mcp-bridge provision --dynamic`` exactly as an operator would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.provision import ProvisionOptions, ProvisionResult, provision
from bridge.provision_dynamic import parse_dynamic, plan_dynamic
from bridge.vault.client import VaultClient
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
