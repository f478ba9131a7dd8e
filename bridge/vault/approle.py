"""AppRole auth method: the login protocol (like the Go client's ``AuthMethod``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.vault.client import VaultResponse, quote_path

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient


class AppRoleAPI:
    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def login(self, role_id: str, secret_id: str, *, mount: str = "approle") -> VaultResponse:
        """``auth`` carries ``client_token``, ``lease_duration``, ``renewable``."""
        return await self._c.request("POST", f"auth/{quote_path(mount)}/login", operation="approle.login",
                                     use_token=False, json_body={"role_id": role_id, "secret_id": secret_id})
