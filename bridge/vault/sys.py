"""``sys/`` endpoints: health, response unwrapping, and the mounts, auth methods, tuning and policies that
``provision`` reads and writes."""

from __future__ import annotations

from typing import Any

from bridge.vault.api import Requester, quote_path
from bridge.vault.errors import VaultNotFoundError
from bridge.vault.models import Health, MountInfo

# Ask for 200 in every state so the body (sealed, standby, version) always comes back.
_HEALTH_PARAMS = {
    "standbyok": "true",
    "perfstandbyok": "true",
    "sealedcode": "200",
    "uninitcode": "200",
    "drsecondarycode": "200",
}


class SysAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def health(self) -> Health:
        resp = await self._requester.request("GET", "sys/health", operation="sys.health", params=_HEALTH_PARAMS)
        # sys/health answers without an envelope: its fields arrive as the top level, which is ``raw`` here
        return Health.parse(resp.raw)

    async def unwrap(self, wrapping_token: str) -> dict[str, Any]:
        """The data a response-wrapping token holds (``sys/wrapping/unwrap`` with it as the request token; it
        works once)."""
        resp = await self._requester.request("POST", "sys/wrapping/unwrap", operation="sys.wrapping.unwrap",
                                             token=wrapping_token)
        return resp.data or {}

    async def mounts(self, *, token: str) -> dict[str, MountInfo]:
        """Secrets engines by path (``secret/``, with its trailing slash)."""
        resp = await self._requester.request("GET", "sys/mounts", operation="sys.mounts", token=token)
        return {path: MountInfo.parse(entry) for path, entry in (resp.data or {}).items() if isinstance(entry, dict)}

    async def auth_methods(self, *, token: str) -> dict[str, MountInfo]:
        """Auth methods by path (``approle/``)."""
        resp = await self._requester.request("GET", "sys/auth", operation="sys.auth", token=token)
        return {path: MountInfo.parse(entry) for path, entry in (resp.data or {}).items() if isinstance(entry, dict)}

    async def enable_engine(self, path: str, engine: str, *, token: str, options: dict[str, str] | None = None,
                            max_lease_ttl: int = 0) -> None:
        body: dict[str, Any] = {"type": engine}
        if options:
            body["options"] = options
        if max_lease_ttl:
            body["config"] = {"max_lease_ttl": max_lease_ttl}
        await self._requester.request("POST", f"sys/mounts/{quote_path(path)}", operation="sys.mount", token=token,
                                      json_body=body)

    async def enable_auth(self, path: str, method: str, *, token: str) -> None:
        await self._requester.request("POST", f"sys/auth/{quote_path(path)}", operation="sys.auth", token=token,
                                      json_body={"type": method})

    async def max_lease_ttl(self, mount: str, *, token: str) -> int:
        """The ``max_lease_ttl`` a mount is tuned to (``auth/token`` for the token auth method; 0: the system
        default)."""
        resp = await self._requester.request("GET", f"sys/{_tune_path(mount)}/tune", operation="sys.tune.read",
                                             token=token)
        try:
            return int((resp.data or {}).get("max_lease_ttl") or 0)
        except (TypeError, ValueError):
            return 0

    async def set_max_lease_ttl(self, mount: str, seconds: int, *, token: str) -> None:
        await self._requester.request("POST", f"sys/{_tune_path(mount)}/tune", operation="sys.tune", token=token,
                                      json_body={"max_lease_ttl": seconds})

    async def policy(self, name: str, *, token: str) -> str | None:
        """The ACL policy's HCL, ``None`` when there is no such policy."""
        try:
            resp = await self._requester.request("GET", f"sys/policies/acl/{quote_path(name)}",
                                                 operation="sys.policy.read", token=token)
        except VaultNotFoundError:
            return None
        return str((resp.data or {}).get("policy") or "")

    async def write_policy(self, name: str, hcl: str, *, token: str) -> None:
        await self._requester.request("PUT", f"sys/policies/acl/{quote_path(name)}", operation="sys.policy",
                                      token=token, json_body={"policy": hcl})

    async def capabilities_self(self, paths: list[str], *, token: str) -> dict[str, frozenset[str]]:
        """What ``token`` may do on each of ``paths`` (``POST sys/capabilities-self``): path → capability names
        (``deny`` when nothing is granted, ``root`` for a root token). A token without ``update`` on
        ``sys/capabilities-self`` (and without the default policy, which grants it) gets 403."""
        resp = await self._requester.request("POST", "sys/capabilities-self", operation="sys.capabilities_self",
                                             token=token, json_body={"paths": paths})
        data = resp.data or {}
        return {path: frozenset(str(c) for c in caps) if isinstance(caps := data.get(path), list) else frozenset()
                for path in paths}


def _tune_path(mount: str) -> str:
    """``auth/token`` → ``auth/token``; a secrets engine ``pki`` → ``mounts/pki``."""
    mount = mount.strip("/")
    return quote_path(mount) if mount.startswith("auth/") else f"mounts/{quote_path(mount)}"

