"""``vault-mcp-bridge provision``: prepare a Vault for the bridge with one idempotent command.

With an admin token it makes sure that:

- a KV v2 mount, a Transit mount and the AppRole auth method exist;
- every agent has its policy ``{policy_prefix}{agent}`` (rendered from the ``gen-policy`` templates);
- the token roles ``mcp-agent-batch`` (orphan batch tokens) and ``mcp-agent`` (service tokens with an explicit
  max TTL) exist, both limited to ``{policy_prefix}*`` and refusing ``root``, ``default`` and the bridge's own
  policy; so does ``mcp-agent-lease`` (orphan, periodic, renewable service tokens: the per-agent token that
  dynamic-secret leases are obtained with, so they outlive request tokens and the bridge's own login, and die
  when it is revoked; docs/dynamic.md);
- what a child token can live is capped: the service role by its explicit max TTL; a batch role cannot carry
  one (OpenBao 2.7.2 refuses it), so the token auth mount's ``max_lease_ttl`` is lowered to
  ``child_max_ttl`` (never raised). It caps every token created through ``auth/token/``. OpenBao 2.7.2 applies
  only the root namespace's value, in every namespace (a namespace's own tune is stored and ignored), so
  provisioning into a namespace checks the effective cap and warns when it is missing instead of writing;
- the Transit key ``{prefix}-bridge-fingerprint`` (type hmac) exists: the bridge's fingerprint key;
- the bridge's own minimal policy (mint through those roles, keep its own token alive, list Transit key names to
  count an agent's keys, HMAC with its fingerprint key, its own state below ``{mount}/data/{prefix}/_bridge/``;
  nothing on any agent's secret and no use of any agent's key) and its AppRole role exist; the role's secret ids
  expire (``secret_id_ttl``, 30 days by default) and its tokens have a ``token_max_ttl``.

With ``--dynamic roles.yaml`` it also provisions database connections, per-agent dynamic roles and the PKI and
SSH CAs (:mod:`bridge.provision_dynamic`).

Each step reads first and writes only what differs, so a second run changes nothing and says so. The
AppRole ``role_id`` is always reported; a ``secret_id`` only on the first run (no secret id exists yet) or
when asked for (``--new-secret-id``), optionally response-wrapped (``--wrap-ttl``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.config import IDENT_RE
from bridge.policy import (
    check_fingerprint_key,
    check_mount,
    default_fingerprint_key,
    policy_name,
    render_agent_policy,
    render_bridge_policy,
)
from bridge.provision_dynamic import (
    DynamicPlan,
    DynamicProvisioner,
    DynamicSpecError,
    DynamicStateError,
    load_dynamic,
    plan_dynamic,
)
from bridge.vault.api import quote_path
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultInvalidRequestError
from bridge.vault.models import WrapInfo

log = structlog.get_logger("bridge.provision")

BATCH_ROLE = "mcp-agent-batch"
SERVICE_ROLE = "mcp-agent"
LEASE_ROLE = "mcp-agent-lease"
DEFAULT_LEASE_TOKEN_PERIOD = 3600  # = LEASE_MAX_TTL's default
BRIDGE_NAME = "vault-mcp-bridge"
DEFAULT_CHILD_MAX_TTL = 3600
DEFAULT_SECRET_ID_TTL = 30 * 86400
SERVICE_TTL_MARGIN = 30  # the service role's explicit max TTL is the child TTL + this
POLICY_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # as CHILD_TOKEN_POLICY_PREFIX


class ProvisionError(Exception):
    """Vault is in a state provisioning must not overwrite (say, a KV v1 mount where KV v2 is expected)."""


@dataclass(frozen=True)
class ProvisionOptions:
    agents: Sequence[str]
    mount: str = "secret"
    prefix: str = "mcp"
    transit: str = "transit"
    approle_mount: str = "approle"
    policy_prefix: str = "mcp-agent-"
    transit_scope: str = "agent"
    child_ttl: int = 90
    child_max_ttl: int = DEFAULT_CHILD_MAX_TTL  # the token mount's max_lease_ttl; 0 leaves the mount alone
    bridge_name: str = BRIDGE_NAME
    token_ttl: int = 3600
    token_max_ttl: int = 4 * 3600
    secret_id_ttl: int = DEFAULT_SECRET_ID_TTL  # 0: the secret ids never expire (not recommended)
    lease_token_period: int = DEFAULT_LEASE_TOKEN_PERIOD  # the mcp-agent-lease role's token_period
    fingerprint_key: str = ""  # "" = {prefix}-bridge-fingerprint
    database_mount: str = "database"
    pki_mount: str = "pki"
    ssh_mount: str = "ssh"
    dynamic_scope: str = "agent"
    dynamic: DynamicPlan | None = None  # --dynamic roles.yaml, validated (bridge.provision_dynamic.plan_dynamic)
    write_db_passwords: bool = False
    prune: bool = False

    def __post_init__(self) -> None:
        for agent in self.agents:
            if not IDENT_RE.match(agent):
                raise ValueError(f"agent id {agent!r} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$")
        if not IDENT_RE.match(self.prefix):
            raise ValueError("the prefix must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        if not IDENT_RE.match(self.bridge_name):
            raise ValueError("the bridge role name must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        if not POLICY_PREFIX_RE.match(self.policy_prefix):
            # never empty: the roles' glob "{prefix}*" would then allow every policy but the refused ones
            raise ValueError("the policy prefix must be a policy name prefix such as mcp-agent- (never empty)")
        if self.child_ttl < 10:
            raise ValueError("the child token TTL must be at least 10 seconds")
        if self.child_max_ttl and self.child_max_ttl < self.child_ttl + SERVICE_TTL_MARGIN:
            raise ValueError("the child max TTL must be at least the child TTL + 30 s (or 0: leave the "
                             "token mount alone)")
        if not 0 < self.token_ttl <= self.token_max_ttl:
            raise ValueError("the bridge token TTL must be positive and at most its max TTL")
        if self.secret_id_ttl < 0:
            raise ValueError("the secret id TTL cannot be negative")
        if self.lease_token_period < 60:
            raise ValueError("the lease token period must be at least 60 seconds")
        if self.child_max_ttl and self.lease_token_period > self.child_max_ttl:
            # the token mount's max_lease_ttl caps a periodic token's period too (checked on OpenBao 2.7.2)
            raise ValueError("the lease token period cannot exceed the child max TTL: the token mount's "
                             "max_lease_ttl caps it (raise --child-max-ttl or lower --lease-token-period)")
        for name in ("mount", "transit", "database_mount", "pki_mount", "ssh_mount"):
            check_mount(name.replace("_", " "), getattr(self, name))
        if self.dynamic_scope not in ("agent", "shared"):
            raise ValueError("the dynamic role scope is 'agent' or 'shared'")
        if self.fingerprint_key:
            check_fingerprint_key(self.fingerprint_key)
        if self.prune and self.dynamic is None:
            raise ValueError("--prune needs --dynamic")
        if self.write_db_passwords and self.dynamic is None:
            raise ValueError("--write-db-passwords needs --dynamic")

    @property
    def fingerprint(self) -> str:
        return self.fingerprint_key or default_fingerprint_key(self.prefix)

    @property
    def all_agents(self) -> list[str]:
        """``agents`` and every agent the ``--dynamic`` file names (each needs its policy)."""
        named = self.dynamic.spec.agents() if self.dynamic is not None else []
        return list(dict.fromkeys([*self.agents, *named]))


@dataclass
class ProvisionResult:
    role_id: str = ""
    secret_id: str | None = field(default=None, repr=False)
    wrapped_secret_id: str | None = field(default=None, repr=False)
    secret_id_exists: bool = False
    changes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def refused_policies(bridge_name: str) -> list[str]:
    """Never on a child token, even if a policy of that name matched the roles' glob: ``root``, ``default``
    (children carry exactly their agent's policy) and the bridge's own policy (a child must not mint)."""
    return sorted({"root", "default", bridge_name})


def batch_role_body(policy_prefix: str, bridge_name: str = BRIDGE_NAME) -> dict[str, Any]:
    """Batch children: orphan (a batch role must be), no default policy, only ``{policy_prefix}*``. A batch
    role cannot carry an explicit max TTL: the bridge sends ``ttl`` with every mint and checks what it got,
    and the token mount's ``max_lease_ttl`` caps it on the server (:meth:`Provisioner.token_mount_cap`)."""
    return {"allowed_policies": [], "allowed_policies_glob": [f"{policy_prefix}*"],
            "disallowed_policies": refused_policies(bridge_name), "disallowed_policies_glob": [],
            "orphan": True, "renewable": False, "token_type": "batch", "token_no_default_policy": True}


def service_role_body(policy_prefix: str, child_ttl: int, bridge_name: str = BRIDGE_NAME) -> dict[str, Any]:
    """Service children: capped by an explicit max TTL a little above the child TTL; revocable."""
    return {"allowed_policies": [], "allowed_policies_glob": [f"{policy_prefix}*"],
            "disallowed_policies": refused_policies(bridge_name), "disallowed_policies_glob": [],
            "orphan": False, "renewable": False, "token_type": "service", "token_no_default_policy": True,
            "token_explicit_max_ttl": child_ttl + SERVICE_TTL_MARGIN}


def lease_role_body(policy_prefix: str, period: int, bridge_name: str = BRIDGE_NAME) -> dict[str, Any]:
    """The per-agent lease token: a periodic service token carrying the agent's policy. Orphan, so it survives
    the revocation of the bridge's own token (at shutdown, at re-login) instead of taking every lease with it;
    renewable (``renew-self``, which the agent policy grants), so a replica keeps it alive while the agent holds
    leases; revoking it (``revoke-self``) revokes every lease obtained with it. No explicit max TTL: an unused
    lease token dies one period after its last renewal."""
    return {"allowed_policies": [], "allowed_policies_glob": [f"{policy_prefix}*"],
            "disallowed_policies": refused_policies(bridge_name), "disallowed_policies_glob": [],
            "orphan": True, "renewable": True, "token_type": "service", "token_no_default_policy": True,
            "token_period": period, "token_explicit_max_ttl": 0}


def _same(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, list):
            if sorted(str(v) for v in (have or [])) != sorted(str(v) for v in want):
                return False
        elif have != want:
            return False
    return True


class Provisioner:
    """Runs the provisioning steps with an admin token."""

    def __init__(self, client: VaultClient, token: str, options: ProvisionOptions, *, namespace: str = "") -> None:
        self._c = client
        self._token = token
        self._o = options
        self._namespace = namespace.strip("/")
        self.result = ProvisionResult()

    def _note(self, what: str, changed: bool) -> None:
        (self.result.changes if changed else self.result.unchanged).append(what)
        if changed:
            log.info("provision.changed", what=what)

    async def mounts(self) -> None:
        o, token = self._o, self._token
        mounts = await self._c.sys.mounts(token=token)
        kv = mounts.get(f"{o.mount}/")
        if kv is None:
            await self._c.sys.enable_engine(o.mount, "kv", options={"version": "2"}, token=token)
            self._note(f"enabled KV v2 at {o.mount}/", True)
        elif kv.type not in ("kv", "generic") or kv.options.get("version") != "2":
            raise ProvisionError(f"{o.mount}/ is mounted but is not KV version 2")
        else:
            self._note(f"KV v2 at {o.mount}/", False)
        transit = mounts.get(f"{o.transit}/")
        if transit is None:
            with contextlib.suppress(VaultInvalidRequestError):  # raced with another provisioner
                await self._c.sys.enable_engine(o.transit, "transit", token=token)
            self._note(f"enabled Transit at {o.transit}/", True)
        elif transit.type != "transit":
            raise ProvisionError(f"{o.transit}/ is mounted but is not Transit")
        else:
            self._note(f"Transit at {o.transit}/", False)
        approle = (await self._c.sys.auth_methods(token=token)).get(f"{o.approle_mount}/")
        if approle is None:
            with contextlib.suppress(VaultInvalidRequestError):
                await self._c.sys.enable_auth(o.approle_mount, "approle", token=token)
            self._note(f"enabled AppRole at auth/{o.approle_mount}/", True)
        elif approle.type != "approle":
            raise ProvisionError(f"auth/{o.approle_mount}/ is enabled but is not AppRole")
        else:
            self._note(f"AppRole at auth/{o.approle_mount}/", False)

    async def policy(self, name: str, hcl: str) -> None:
        current = await self._c.sys.policy(name, token=self._token)
        if current == hcl:
            self._note(f"policy {name}", False)
            return
        await self._c.sys.write_policy(name, hcl, token=self._token)
        self._note(f"{'updated' if current is not None else 'created'} policy {name}", True)

    async def _role(self, path: str, body: dict[str, Any], label: str, operation: str) -> None:
        current = await self._c.logical.read(path, token=self._token, operation=operation + ".read")
        if current is not None and _same(current, body):
            self._note(label, False)
            return
        await self._c.logical.write(path, body, token=self._token, operation=operation)
        self._note(f"{'updated' if current is not None else 'created'} {label}", True)

    async def token_roles(self) -> None:
        o = self._o
        await self._role(f"auth/token/roles/{BATCH_ROLE}", batch_role_body(o.policy_prefix, o.bridge_name),
                         f"token role {BATCH_ROLE}", "token.role")
        await self._role(f"auth/token/roles/{SERVICE_ROLE}",
                         service_role_body(o.policy_prefix, o.child_ttl, o.bridge_name),
                         f"token role {SERVICE_ROLE}", "token.role")
        await self._role(f"auth/token/roles/{LEASE_ROLE}",
                         lease_role_body(o.policy_prefix, o.lease_token_period, o.bridge_name),
                         f"token role {LEASE_ROLE}", "token.role")

    async def fingerprint_key(self) -> None:
        """The bridge's Transit HMAC key (type hmac, 32 bytes, not exportable, not deletable): HMACs are stable
        per value and key version; an existing key of another type is an error, never replaced."""
        o = self._o
        path = f"{quote_path(o.transit)}/keys/{quote_path(o.fingerprint)}"
        current = await self._c.logical.read(path, token=self._token, operation="transit.key.read")
        if current is None:
            await self._c.logical.write(path, {"type": "hmac", "key_size": 32}, token=self._token,
                                        operation="transit.key")
            self._note(f"created Transit key {o.fingerprint} (hmac) at {o.transit}/", True)
        elif current.get("type") != "hmac":
            raise ProvisionError(f"Transit key {o.fingerprint} exists with type {current.get('type')}; the "
                                 "fingerprint key must be of type hmac (choose another with --fingerprint-key)")
        else:
            self._note(f"Transit key {o.fingerprint} at {o.transit}/", False)

    async def dynamic(self) -> None:
        o = self._o
        if o.dynamic is None:
            return
        await DynamicProvisioner(self._c, self._token, o.dynamic, prefix=o.prefix, scope=o.dynamic_scope,
                                 database_mount=o.database_mount, pki_mount=o.pki_mount, ssh_mount=o.ssh_mount,
                                 note=self._note, warn=self.result.warnings.append,
                                 write_db_passwords=o.write_db_passwords, prune=o.prune, kv_mount=o.mount).run()

    async def token_mount_cap(self) -> None:
        """Cap batch children on the server: a batch role cannot carry an explicit max TTL, but the token auth
        mount's ``max_lease_ttl`` caps every token it issues (checked on OpenBao 2.7.2: a batch child asked for
        10h, or for no TTL at all, got the cap). Only ever lowered, never raised.

        In a namespace, OpenBao 2.7.2 accepts a tune of the namespace's token mount but ignores it (tokens there
        are capped by the root namespace's value, which the namespace's tune read shows): writing would change
        nothing, so a missing cap is reported as a warning for the operator of the root namespace."""
        cap = self._o.child_max_ttl
        current = await self._c.sys.max_lease_ttl("auth/token", token=self._token)  # 0: the system default
        if 0 < current < self._o.lease_token_period:
            self.result.warnings.append(
                f"auth/token/ max_lease_ttl ({_human(current)}) caps the lease tokens' period "
                f"({_human(self._o.lease_token_period)}): they must be renewed more often than that")
        if not cap:
            return
        if 0 < current <= cap:
            self._note(f"token lifetime cap at auth/token/ ({_human(current)})", False)
            return
        if self._namespace:
            self.result.warnings.append(
                f"batch child tokens are not capped on the server (auth/token/ max_lease_ttl is "
                f"{_human(current) if current else 'the system default'}): in a namespace OpenBao applies the "
                f"root namespace's value; ask its operator for `bao auth tune -max-lease-ttl={_human(cap)} token/` "
                "(the bridge still asks for CHILD_TOKEN_TTL and checks what it gets)")
            log.warning("provision.token_cap_missing", namespace=self._namespace)
            return
        await self._c.sys.set_max_lease_ttl("auth/token", cap, token=self._token)
        was = f", was {_human(current)}" if current else ""
        self._note(f"capped token lifetimes at auth/token/ to {_human(cap)} (max_lease_ttl{was})", True)

    async def bridge_role(self) -> None:
        o = self._o
        body = {"token_policies": [o.bridge_name], "token_ttl": o.token_ttl, "token_max_ttl": o.token_max_ttl,
                "token_type": "service", "token_no_default_policy": True, "secret_id_ttl": o.secret_id_ttl,
                "bind_secret_id": True}
        await self._role(f"auth/{quote_path(o.approle_mount)}/role/{o.bridge_name}", body,
                         f"AppRole role {o.bridge_name}", "approle.role")

    async def credentials(self, *, new_secret_id: bool, wrap_ttl: str | None) -> None:
        o, token = self._o, self._token
        self.result.role_id = await self._c.approle.role_id(o.bridge_name, mount=o.approle_mount, token=token)
        exists = await self._c.approle.has_secret_ids(o.bridge_name, mount=o.approle_mount, token=token)
        self.result.secret_id_exists = exists
        if exists and not new_secret_id:
            return
        issued = await self._c.approle.new_secret_id(o.bridge_name, mount=o.approle_mount, token=token,
                                                     wrap_ttl=wrap_ttl)
        if isinstance(issued, WrapInfo):
            self.result.wrapped_secret_id = issued.token.get_secret_value()
        else:
            self.result.secret_id = issued.get_secret_value()
        self._note("issued a new secret id" + (" (response-wrapped)" if wrap_ttl else ""), True)

    async def run(self, *, new_secret_id: bool = False, wrap_ttl: str | None = None,
                  bridge: bool = True) -> ProvisionResult:
        o = self._o
        await self.mounts()
        for agent in o.all_agents:
            await self.policy(policy_name(agent, o.policy_prefix), agent_policy(o, agent))
        await self.token_roles()
        if bridge:
            await self.fingerprint_key()
            await self.policy(o.bridge_name, render_bridge_policy(
                [BATCH_ROLE, SERVICE_ROLE, LEASE_ROLE], policy_prefix=o.policy_prefix, mount=o.mount,
                prefix=o.prefix, transit=o.transit, fingerprint_key=o.fingerprint))
            await self.bridge_role()
            await self.credentials(new_secret_id=new_secret_id, wrap_ttl=wrap_ttl)
        await self.token_mount_cap()
        await self.dynamic()
        return self.result


def agent_policy(o: ProvisionOptions, agent: str) -> str:
    return render_agent_policy(agent, mount=o.mount, prefix=o.prefix, transit=o.transit,
                               transit_scope=o.transit_scope, database=o.database_mount, pki=o.pki_mount,
                               ssh=o.ssh_mount, dynamic_scope=o.dynamic_scope, fingerprint_key=o.fingerprint)


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def provision(addr: str, admin_token: str, options: ProvisionOptions, *, namespace: str = "",
                    cacert: str = "", new_secret_id: bool = False, wrap_ttl: str | None = None,
                    bridge: bool = True) -> ProvisionResult:
    """Provision the Vault at ``addr`` (see the module docstring); returns what changed and the credentials."""
    async with VaultClient(addr, namespace=namespace, cacert=cacert, timeout=30) as client:
        return await Provisioner(client, admin_token, options, namespace=namespace).run(
            new_secret_id=new_secret_id, wrap_ttl=wrap_ttl, bridge=bridge)


def add_provision_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default="",
                        help="comma-separated agent ids, e.g. a,b,c (required unless --dynamic names the agents)")
    parser.add_argument("--mount", default="secret", help="KV v2 mount (default: secret)")
    parser.add_argument("--prefix", default="mcp", help="namespace prefix = DEFAULT_PREFIX (default: mcp)")
    parser.add_argument("--transit", default="transit", help="Transit mount (default: transit)")
    parser.add_argument("--approle-mount", default="approle", help="AppRole mount (default: approle)")
    parser.add_argument("--policy-prefix", default="mcp-agent-", help="= CHILD_TOKEN_POLICY_PREFIX")
    parser.add_argument("--transit-key-scope", choices=("agent", "shared"), default="agent",
                        help="= TRANSIT_KEY_SCOPE (default: agent)")
    parser.add_argument("--child-ttl", default="90s", help="= CHILD_TOKEN_TTL; caps the service role (default 90s)")
    parser.add_argument("--child-max-ttl", default="1h",
                        help="lower the token auth mount's max_lease_ttl to this (caps batch children and every "
                             "other token of auth/token/ in this namespace; default 1h; 0 = leave it alone)")
    parser.add_argument("--role-name", default=BRIDGE_NAME, help=f"bridge policy and AppRole role ({BRIDGE_NAME})")
    parser.add_argument("--secret-id-ttl", default="30d",
                        help="lifetime of each AppRole secret id (default 30d; 0 = never expires)")
    parser.add_argument("--token-ttl", default="1h", help="TTL of the bridge's AppRole token (default 1h)")
    parser.add_argument("--token-max-ttl", default="4h",
                        help="max TTL of the bridge's AppRole token, renewals included (default 4h)")
    parser.add_argument("--lease-token-period", default="1h",
                        help="token_period of the mcp-agent-lease role: a lease token lives this long after its last "
                             "renewal (default 1h = LEASE_MAX_TTL's default; at most --child-max-ttl)")
    parser.add_argument("--fingerprint-key", default="",
                        help="= FINGERPRINT_KEY, the bridge's Transit HMAC key (default: {prefix}-bridge-fingerprint)")
    parser.add_argument("--database-mount", default="database", help="= DATABASE_MOUNT (default: database)")
    parser.add_argument("--pki-mount", default="pki", help="= PKI_MOUNT (default: pki)")
    parser.add_argument("--ssh-mount", default="ssh", help="= SSH_MOUNT (default: ssh)")
    parser.add_argument("--dynamic-role-scope", choices=("agent", "shared"), default="agent",
                        help="= DYNAMIC_ROLE_SCOPE: agent a's role r is {prefix}.a.r (default) or names as given")
    parser.add_argument("--dynamic", default=None, metavar="ROLES_YAML",
                        help="also provision database connections, dynamic roles and CAs from this file "
                             "(docs/dynamic.md)")
    parser.add_argument("--write-db-passwords", action="store_true",
                        help="write the connections' passwords from the --dynamic file again (Vault never shows "
                             "them, so a changed password is not noticed otherwise)")
    parser.add_argument("--prune", action="store_true",
                        help="delete {prefix}.<agent>.<name> roles the --dynamic file no longer declares")
    parser.add_argument("--new-secret-id", action="store_true", help="issue a new secret id even if one exists")
    parser.add_argument("--wrap-ttl", default=None,
                        help="response-wrap the secret id for this long (e.g. 120s): VAULT_WRAPPED_SECRET_ID")


def provision_main(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """The ``provision`` command: env lines on stdout, what changed on stderr."""
    from bridge.config import parse_duration, parse_list

    env = os.environ if environ is None else environ
    addr = env.get("VAULT_ADDR", "http://127.0.0.1:8200").rstrip("/")
    token = env.get("VAULT_TOKEN", "")
    if not token:
        print("provision: set VAULT_TOKEN to an admin token", file=sys.stderr)
        return 2
    try:
        prefix = args.prefix
        dynamic_scope = args.dynamic_role_scope
        plan = None
        if args.dynamic:
            plan = plan_dynamic(load_dynamic(args.dynamic), prefix=prefix, scope=dynamic_scope, prune=args.prune,
                                environ=env)
        agents = [a.lower() for a in parse_list(args.agents)]
        if not agents and (plan is None or not plan.spec.agents()):
            raise ValueError("name the agents with --agents a,b,c (or in the --dynamic file)")
        options = ProvisionOptions(
            agents=agents, mount=args.mount.strip("/"), prefix=prefix,
            transit=args.transit.strip("/"), approle_mount=args.approle_mount.strip("/"),
            policy_prefix=args.policy_prefix, transit_scope=args.transit_key_scope,
            child_ttl=int(parse_duration(args.child_ttl)), child_max_ttl=int(parse_duration(args.child_max_ttl)),
            bridge_name=args.role_name, secret_id_ttl=int(parse_duration(args.secret_id_ttl)),
            token_ttl=int(parse_duration(args.token_ttl)), token_max_ttl=int(parse_duration(args.token_max_ttl)),
            lease_token_period=int(parse_duration(args.lease_token_period)), fingerprint_key=args.fingerprint_key,
            database_mount=args.database_mount.strip("/"), pki_mount=args.pki_mount.strip("/"),
            ssh_mount=args.ssh_mount.strip("/"), dynamic_scope=dynamic_scope, dynamic=plan,
            write_db_passwords=args.write_db_passwords, prune=args.prune)
        if args.wrap_ttl is not None:
            parse_duration(args.wrap_ttl)
    except DynamicSpecError as exc:
        print(f"provision: {args.dynamic}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(provision(addr, token, options, namespace=env.get("VAULT_NAMESPACE", ""),
                                       cacert=env.get("VAULT_CACERT", ""), new_secret_id=args.new_secret_id,
                                       wrap_ttl=args.wrap_ttl))
    except (ProvisionError, DynamicStateError, VaultError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    for change in result.changes:
        print(f"provision: {change}", file=sys.stderr)
    for warning in result.warnings:
        print(f"provision: warning: {warning}", file=sys.stderr)
    if not result.changed:
        print("provision: no changes; everything was already in place", file=sys.stderr)
    lines = [f"VAULT_ADDR={addr}", f"VAULT_APPROLE_MOUNT={options.approle_mount}",
             f"VAULT_ROLE_ID={result.role_id}", "CHILD_TOKEN_ENABLED=true",
             f"CHILD_TOKEN_POLICY_PREFIX={options.policy_prefix}", f"CHILD_TOKEN_TTL={options.child_ttl}s",
             f"KV_MOUNT={options.mount}", f"TRANSIT_MOUNT={options.transit}", f"DEFAULT_PREFIX={options.prefix}",
             f"TRANSIT_KEY_SCOPE={options.transit_scope}", f"FINGERPRINT_KEY={options.fingerprint}",
             f"DATABASE_MOUNT={options.database_mount}", f"PKI_MOUNT={options.pki_mount}",
             f"SSH_MOUNT={options.ssh_mount}", f"DYNAMIC_ROLE_SCOPE={options.dynamic_scope}"]
    if result.secret_id:
        lines.append(f"VAULT_SECRET_ID={result.secret_id}")
    elif result.wrapped_secret_id:
        lines.append(f"VAULT_WRAPPED_SECRET_ID={result.wrapped_secret_id}")
    if (result.secret_id or result.wrapped_secret_id) and options.secret_id_ttl:
        print(f"provision: the secret id expires in {_human(options.secret_id_ttl)}; issue the next one with "
              "--new-secret-id before then (VAULT_SECRET_ID_FILE is re-read at every login)", file=sys.stderr)
    else:
        print("provision: a secret id already exists and is not shown again; pass --new-secret-id for "
              "another", file=sys.stderr)
    print("\n".join(lines))
    return 0
