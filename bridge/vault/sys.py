"""``sys/`` endpoints the bridge reads: health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient

# Ask for 200 in every state so the body (sealed, standby, version) always comes back.
_HEALTH_PARAMS = {
    "standbyok": "true",
    "perfstandbyok": "true",
    "sealedcode": "200",
    "uninitcode": "200",
    "drsecondarycode": "200",
}


class SysAPI:
    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def health(self) -> dict[str, Any]:
        resp = await self._c.request("GET", "sys/health", operation="sys.health", use_token=False,
                                     params=_HEALTH_PARAMS)
        return resp.raw or {}
