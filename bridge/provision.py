"""``vault-mcp-bridge provision``: prepare a Vault for the bridge with one idempotent command.

With an admin token it makes sure that:

- a KV v2 mount, a Transit mount and the AppRole auth method exist;
- every agent has its policy ``{policy_prefix}{agent}`` (rendered from the ``gen-policy`` templates);
- the token roles ``mcp-agent-batch`` (orphan batch tokens) and ``mcp-agent`` (service tokens with an explicit
  max TTL) exist, both limited to ``{policy_prefix}*`` and refusing ``root``, ``default`` and the bridge's own
  policy;
- what a child token can live is capped: the service role by its explicit max TTL; a batch role cannot carry
  one (OpenBao 2.7.2 refuses it), so the token auth mount's ``max_lease_ttl`` is lowered to
  ``child_max_ttl`` (never raised). It caps every token created through ``auth/token/``. OpenBao 2.7.2 applies
  only the root namespace's value, in every namespace (a namespace's own tune is stored and ignored), so
  provisioning into a namespace checks the effective cap and warns when it is missing instead of writing;
- the bridge's own minimal policy (mint through those two roles, keep its own token alive, list Transit key
  names to count an agent's keys; nothing on any secret and no use of any key) and its AppRole role exist;
  the role's secret ids expire (``secret_id_ttl``, 30 days by default) and its tokens have a ``token_max_ttl``.

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
from bridge.policy import policy_name, render_agent_policy, render_bridge_policy
from bridge.vault.client import VaultClient, quote_path
from bridge.vault.errors import VaultError, VaultInvalidRequestError, VaultNotFoundError

log = structlog.get_logger("bridge.provision")

BATCH_ROLE = "mcp-agent-batch"
SERVICE_ROLE = "mcp-agent"
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

    def __post_init__(self) -> None:
        for agent in self.agents:
            if not IDENT_RE.match(agent):
                raise ValueError(f"agent id {agent!r} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$")
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
    """Runs the provisioning steps with an admin token (``client.token``)."""

    def __init__(self, client: VaultClient, options: ProvisionOptions, *, namespace: str = "") -> None:
        self._c = client
        self._o = options
        self._namespace = namespace.strip("/")
        self.result = ProvisionResult()

    def _note(self, what: str, changed: bool) -> None:
        (self.result.changes if changed else self.result.unchanged).append(what)
        if changed:
            log.info("provision.changed", what=what)

    async def _get(self, path: str, operation: str) -> dict[str, Any] | None:
        try:
            resp = await self._c.request("GET", path, operation=operation)
        except VaultNotFoundError:
            return None
        return resp.data or {}

    async def mounts(self) -> None:
        o = self._o
        mounts = (await self._c.request("GET", "sys/mounts", operation="sys.mounts")).data or {}
        kv = mounts.get(f"{o.mount}/")
        if kv is None:
            await self._c.request("POST", f"sys/mounts/{quote_path(o.mount)}", operation="sys.mount",
                                  json_body={"type": "kv", "options": {"version": "2"}})
            self._note(f"enabled KV v2 at {o.mount}/", True)
        elif kv.get("type") not in ("kv", "generic") or str((kv.get("options") or {}).get("version")) != "2":
            raise ProvisionError(f"{o.mount}/ is mounted but is not KV version 2")
        else:
            self._note(f"KV v2 at {o.mount}/", False)
        transit = mounts.get(f"{o.transit}/")
        if transit is None:
            with contextlib.suppress(VaultInvalidRequestError):  # raced with another provisioner
                await self._c.request("POST", f"sys/mounts/{quote_path(o.transit)}", operation="sys.mount",
                                      json_body={"type": "transit"})
            self._note(f"enabled Transit at {o.transit}/", True)
        elif transit.get("type") != "transit":
            raise ProvisionError(f"{o.transit}/ is mounted but is not Transit")
        else:
            self._note(f"Transit at {o.transit}/", False)
        auths = (await self._c.request("GET", "sys/auth", operation="sys.auth")).data or {}
        approle = auths.get(f"{o.approle_mount}/")
        if approle is None:
            with contextlib.suppress(VaultInvalidRequestError):
                await self._c.request("POST", f"sys/auth/{quote_path(o.approle_mount)}", operation="sys.auth",
                                      json_body={"type": "approle"})
            self._note(f"enabled AppRole at auth/{o.approle_mount}/", True)
        elif approle.get("type") != "approle":
            raise ProvisionError(f"auth/{o.approle_mount}/ is enabled but is not AppRole")
        else:
            self._note(f"AppRole at auth/{o.approle_mount}/", False)

    async def policy(self, name: str, hcl: str) -> None:
        current = await self._get(f"sys/policies/acl/{quote_path(name)}", "sys.policy.read")
        if current is not None and current.get("policy") == hcl:
            self._note(f"policy {name}", False)
            return
        await self._c.request("PUT", f"sys/policies/acl/{quote_path(name)}", operation="sys.policy",
                              json_body={"policy": hcl})
        self._note(f"{'updated' if current is not None else 'created'} policy {name}", True)

    async def _role(self, path: str, body: dict[str, Any], label: str, operation: str) -> None:
        current = await self._get(path, operation + ".read")
        if current is not None and _same(current, body):
            self._note(label, False)
            return
        await self._c.request("POST", path, operation=operation, json_body=body)
        self._note(f"{'updated' if current is not None else 'created'} {label}", True)

    async def token_roles(self) -> None:
        o = self._o
        await self._role(f"auth/token/roles/{BATCH_ROLE}", batch_role_body(o.policy_prefix, o.bridge_name),
                         f"token role {BATCH_ROLE}", "token.role")
        await self._role(f"auth/token/roles/{SERVICE_ROLE}",
                         service_role_body(o.policy_prefix, o.child_ttl, o.bridge_name),
                         f"token role {SERVICE_ROLE}", "token.role")

    async def token_mount_cap(self) -> None:
        """Cap batch children on the server: a batch role cannot carry an explicit max TTL, but the token auth
        mount's ``max_lease_ttl`` caps every token it issues (checked on OpenBao 2.7.2: a batch child asked for
        10h, or for no TTL at all, got the cap). Only ever lowered, never raised.

        In a namespace, OpenBao 2.7.2 accepts a tune of the namespace's token mount but ignores it (tokens there
        are capped by the root namespace's value, which the namespace's tune read shows): writing would change
        nothing, so a missing cap is reported as a warning for the operator of the root namespace."""
        cap = self._o.child_max_ttl
        if not cap:
            return
        tune = await self._c.request("GET", "sys/auth/token/tune", operation="sys.auth.tune.read")
        current = int((tune.data or {}).get("max_lease_ttl") or 0)  # 0 would mean the system default
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
        await self._c.request("POST", "sys/auth/token/tune", operation="sys.auth.tune",
                              json_body={"max_lease_ttl": cap})
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
        o = self._o
        base = f"auth/{quote_path(o.approle_mount)}/role/{o.bridge_name}"
        role = await self._c.request("GET", f"{base}/role-id", operation="approle.role_id")
        self.result.role_id = str((role.data or {}).get("role_id") or "")
        try:
            listed = await self._c.request("LIST", f"{base}/secret-id", operation="approle.secret_ids")
            exists = bool((listed.data or {}).get("keys"))
        except VaultNotFoundError:
            exists = False
        self.result.secret_id_exists = exists
        if exists and not new_secret_id:
            return
        headers = {"X-Vault-Wrap-TTL": wrap_ttl} if wrap_ttl else None
        resp = await self._c.request("POST", f"{base}/secret-id", operation="approle.secret_id", json_body={},
                                     headers=headers)
        if wrap_ttl:
            self.result.wrapped_secret_id = str((resp.wrap_info or {}).get("token") or "")
        else:
            self.result.secret_id = str((resp.data or {}).get("secret_id") or "")
        self._note("issued a new secret id" + (" (response-wrapped)" if wrap_ttl else ""), True)

    async def run(self, *, new_secret_id: bool = False, wrap_ttl: str | None = None,
                  bridge: bool = True) -> ProvisionResult:
        o = self._o
        await self.mounts()
        for agent in o.agents:
            await self.policy(policy_name(agent, o.policy_prefix),
                              render_agent_policy(agent, mount=o.mount, prefix=o.prefix, transit=o.transit,
                                                  transit_scope=o.transit_scope))
        await self.token_roles()
        if bridge:
            await self.policy(o.bridge_name, render_bridge_policy([BATCH_ROLE, SERVICE_ROLE],
                                                                  policy_prefix=o.policy_prefix, transit=o.transit))
            await self.bridge_role()
            await self.credentials(new_secret_id=new_secret_id, wrap_ttl=wrap_ttl)
        await self.token_mount_cap()
        return self.result


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
        client.token = admin_token
        return await Provisioner(client, options, namespace=namespace).run(new_secret_id=new_secret_id,
                                                                           wrap_ttl=wrap_ttl, bridge=bridge)


def add_provision_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", required=True, help="comma-separated agent ids, e.g. a,b,c")
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
        options = ProvisionOptions(
            agents=[a.lower() for a in parse_list(args.agents)], mount=args.mount.strip("/"), prefix=args.prefix,
            transit=args.transit.strip("/"), approle_mount=args.approle_mount.strip("/"),
            policy_prefix=args.policy_prefix, transit_scope=args.transit_key_scope,
            child_ttl=int(parse_duration(args.child_ttl)), child_max_ttl=int(parse_duration(args.child_max_ttl)),
            bridge_name=args.role_name, secret_id_ttl=int(parse_duration(args.secret_id_ttl)),
            token_ttl=int(parse_duration(args.token_ttl)), token_max_ttl=int(parse_duration(args.token_max_ttl)))
        if args.wrap_ttl is not None:
            parse_duration(args.wrap_ttl)
    except ValueError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(provision(addr, token, options, namespace=env.get("VAULT_NAMESPACE", ""),
                                       cacert=env.get("VAULT_CACERT", ""), new_secret_id=args.new_secret_id,
                                       wrap_ttl=args.wrap_ttl))
    except (ProvisionError, VaultError) as exc:
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
             f"TRANSIT_KEY_SCOPE={options.transit_scope}"]
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
