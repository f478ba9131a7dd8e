"""Vault policy HCL for an agent, rendered from a jinja2 template shipped with the package."""

from __future__ import annotations

from pathlib import Path

import jinja2

from bridge.config import IDENT_RE

TEMPLATES = Path(__file__).parent / "templates"
_MOUNT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,  # noqa: S701
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_agent_policy(agent: str, *, mount: str = "secret", prefix: str = "mcp", transit: str = "transit",
                        transit_scope: str = "agent") -> str:
    """HCL for ``agent``. Names are validated first: nothing reaches the template that could break out of a
    quoted HCL string or widen a glob."""
    agent = agent.lower()
    if not IDENT_RE.match(agent):
        raise ValueError("agent must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    if not IDENT_RE.match(prefix):
        raise ValueError("prefix must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    for name, value in (("mount", mount), ("transit", transit)):
        _check_mount(name, value)
    if transit_scope not in ("agent", "shared"):
        raise ValueError("transit_scope is 'agent' or 'shared'")
    return _env().get_template("agent-policy.hcl.j2").render(
        agent=agent, mount=mount.strip("/"), prefix=prefix, transit=transit.strip("/"), transit_scope=transit_scope)


def render_bridge_policy(roles: list[str], *, policy_prefix: str = "mcp-agent-", transit: str = "transit") -> str:
    """HCL of the bridge's own minimal policy: mint through ``roles``, keep its own token alive, list the Transit
    key names (to count an agent's keys)."""
    for role in roles:
        if not IDENT_RE.match(role):
            raise ValueError("token role names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    _check_mount("transit", transit)
    return _env().get_template("bridge-policy.hcl.j2").render(roles=roles, policy_prefix=policy_prefix,
                                                              transit=transit.strip("/"))


def _check_mount(name: str, value: str) -> None:
    if not value or not set(value) <= _MOUNT_CHARS or value.startswith("/") or "//" in value:
        raise ValueError(f"{name} must be a mount path like 'secret'")


def policy_name(agent: str, policy_prefix: str = "mcp-agent-") -> str:
    return f"{policy_prefix}{agent.lower()}"
