"""Token auth method: the bridge's own token (lookup, renew, revoke)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.vault.client import VaultResponse, quote_path

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient


class TokenAPI:
    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def lookup_self(self, *, token: str | None = None) -> VaultResponse:
        # GET: POST on lookup-self needs update capability, GET only read.
        return await self._c.request("GET", "auth/token/lookup-self", operation="token.lookup_self", token=token)

    async def renew_self(self, increment: int | None = None, *, token: str | None = None) -> VaultResponse:
        body = {"increment": f"{increment}s"} if increment else {}
        return await self._c.request("POST", "auth/token/renew-self", operation="token.renew_self",
                                     token=token, json_body=body)

    async def create_with_role(self, role: str, body: dict[str, Any], *,
                               token: str | None = None) -> VaultResponse:
        """Mint a token through a token role (``auth/token/create/<role>``); the result is in ``auth``."""
        return await self._c.request("POST", f"auth/token/create/{quote_path(role)}", operation="token.create_role",
                                     token=token, json_body=body)

    async def revoke_self(self, *, token: str | None = None) -> None:
        await self._c.request("POST", "auth/token/revoke-self", operation="token.revoke_self", token=token,
                              json_body={})
