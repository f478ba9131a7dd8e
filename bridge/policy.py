"""Vault policy HCL for an agent and for the bridge itself, rendered from jinja2 templates shipped with the package.

Every name that reaches a template is validated first: nothing can break out of a quoted HCL string or widen a
glob. Names that end up inside a glob (agent ids, the prefix, role and key names) never contain ``.``, so
``{prefix}.{agent}.*`` covers exactly one agent's Transit keys and dynamic roles.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from bridge.config import IDENT_RE

TEMPLATES = Path(__file__).parent / "templates"
_MOUNT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")
BRIDGE_STATE = "_bridge"  # {mount}/data/{prefix}/_bridge/...: the bridge's own state; never an agent id


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,  # noqa: S701
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def check_mount(name: str, value: str) -> str:
    if not value or not set(value) <= _MOUNT_CHARS or value.startswith("/") or "//" in value:
        raise ValueError(f"{name} must be a mount path like 'secret'")
    return value.strip("/")


def _check_scope(name: str, value: str) -> None:
    if value not in ("agent", "shared"):
        raise ValueError(f"{name} is 'agent' or 'shared'")


def check_fingerprint_key(key: str) -> str:
    """The bridge's Transit HMAC key: a plain key name without ``.``, so it can never be an agent's key."""
    if not IDENT_RE.match(key):
        raise ValueError("the fingerprint key must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return key


def render_agent_policy(agent: str, *, mount: str = "secret", prefix: str = "mcp", transit: str = "transit",
                        transit_scope: str = "agent", database: str = "database", pki: str = "pki",
                        ssh: str = "ssh", dynamic_scope: str = "agent", fingerprint_key: str = "") -> str:
    """HCL for ``agent``: its KV subtree, its Transit keys, its dynamic roles and their leases (see the template).
    ``fingerprint_key`` (the bridge's own HMAC key; default ``{prefix}-bridge-fingerprint``) is denied explicitly
    when Transit keys are shared."""
    agent = agent.lower()
    if not IDENT_RE.match(agent):
        raise ValueError("agent must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    if not IDENT_RE.match(prefix):
        raise ValueError("prefix must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    mounts = {name: check_mount(name, value) for name, value in
              (("mount", mount), ("transit", transit), ("database", database), ("pki", pki), ("ssh", ssh))}
    _check_scope("transit_scope", transit_scope)
    _check_scope("dynamic_scope", dynamic_scope)
    key = check_fingerprint_key(fingerprint_key or default_fingerprint_key(prefix))
    return _env().get_template("agent-policy.hcl.j2").render(
        agent=agent, prefix=prefix, transit_scope=transit_scope, dynamic_scope=dynamic_scope,
        fingerprint_key=key, **mounts)


def render_bridge_policy(roles: list[str], *, policy_prefix: str = "mcp-agent-", mount: str = "secret",
                         prefix: str = "mcp", transit: str = "transit", fingerprint_key: str = "") -> str:
    """HCL of the bridge's own minimal policy: mint through ``roles``, keep its own token alive, HMAC with
    ``fingerprint_key`` (default ``{prefix}-bridge-fingerprint``), and its state below
    ``{mount}/{data,metadata}/{prefix}/_bridge/``."""
    for role in roles:
        if not IDENT_RE.match(role):
            raise ValueError("token role names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    if not IDENT_RE.match(prefix):
        raise ValueError("prefix must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    key = check_fingerprint_key(fingerprint_key or default_fingerprint_key(prefix))
    return _env().get_template("bridge-policy.hcl.j2").render(
        roles=roles, policy_prefix=policy_prefix, mount=check_mount("mount", mount), prefix=prefix,
        transit=check_mount("transit", transit), fingerprint_key=key, state=BRIDGE_STATE)


def default_fingerprint_key(prefix: str) -> str:
    return f"{prefix}-bridge-fingerprint"


def policy_name(agent: str, policy_prefix: str = "mcp-agent-") -> str:
    return f"{policy_prefix}{agent.lower()}"
