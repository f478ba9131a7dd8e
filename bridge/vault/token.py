"""Token auth method: lookup, renewal and revocation of the calling token, and minting through a token role."""

from __future__ import annotations

from typing import Any

from bridge.vault.api import Requester, quote_path
from bridge.vault.errors import VaultCredentialError
from bridge.vault.models import AuthInfo, TokenLookup, VaultResponse


class TokenAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def lookup_self(self, *, token: str) -> TokenLookup:
        # GET: POST on lookup-self needs update capability, GET only read.
        resp = await self._requester.request("GET", "auth/token/lookup-self", operation="token.lookup_self",
                                             token=token)
        return TokenLookup.parse(resp.data)

    async def renew_self(self, increment: int | None = None, *, token: str) -> AuthInfo:
        """Renew the calling token (by ``increment`` seconds, else its own TTL); the granted lease."""
        body = {"increment": f"{increment}s"} if increment else {}
        resp = await self._requester.request("POST", "auth/token/renew-self", operation="token.renew_self",
                                             token=token, json_body=body)
        if resp.auth is None:
            raise VaultCredentialError("vault renewed the token but returned no auth block")
        return resp.auth

    async def create_with_role(self, role: str, body: dict[str, Any], *, token: str) -> VaultResponse:
        """Mint a token through a token role (``auth/token/create/<role>``): the token is in ``auth`` (``None``
        when Vault returned none), its warnings (a missing policy ...) in ``warnings``."""
        return await self._requester.request("POST", f"auth/token/create/{quote_path(role)}",
                                             operation="token.create_role", token=token, json_body=body)

    async def revoke_self(self, *, token: str) -> None:
        await self._requester.request("POST", "auth/token/revoke-self", operation="token.revoke_self", token=token,
                                      json_body={})
