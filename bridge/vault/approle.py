"""AppRole auth method: the login, and the role's credentials (what ``provision`` hands the bridge)."""

from __future__ import annotations

from pydantic import SecretStr

from bridge.vault.api import LIST, Requester, quote_path
from bridge.vault.errors import VaultCredentialError, VaultNotFoundError
from bridge.vault.models import AuthInfo, WrapInfo


class AppRoleAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def login(self, role_id: str, secret_id: str, *, mount: str = "approle") -> AuthInfo:
        """Log in (no token needed); the new token and its lease."""
        resp = await self._requester.request("POST", f"auth/{quote_path(mount)}/login", operation="approle.login",
                                             json_body={"role_id": role_id, "secret_id": secret_id})
        if resp.auth is None:
            raise VaultCredentialError("approle login returned no client token")
        return resp.auth

    async def role_id(self, role: str, *, mount: str, token: str) -> str:
        resp = await self._requester.request("GET", f"auth/{quote_path(mount)}/role/{quote_path(role)}/role-id",
                                             operation="approle.role_id", token=token)
        return str((resp.data or {}).get("role_id") or "")

    async def has_secret_ids(self, role: str, *, mount: str, token: str) -> bool:
        """Whether the role has issued a secret id that still exists."""
        try:
            resp = await self._requester.request(
                "GET", f"auth/{quote_path(mount)}/role/{quote_path(role)}/secret-id", operation="approle.secret_ids",
                token=token, params=LIST)
        except VaultNotFoundError:
            return False
        return bool((resp.data or {}).get("keys"))

    async def new_secret_id(self, role: str, *, mount: str, token: str,
                            wrap_ttl: str | None = None) -> SecretStr | WrapInfo:
        """Issue a secret id; with ``wrap_ttl`` it comes response-wrapped (the wrapping token, in ``WrapInfo``)."""
        resp = await self._requester.request(
            "POST", f"auth/{quote_path(mount)}/role/{quote_path(role)}/secret-id", operation="approle.secret_id",
            token=token, json_body={}, headers={"X-Vault-Wrap-TTL": wrap_ttl} if wrap_ttl else None)
        if wrap_ttl:
            if resp.wrap_info is None:
                raise VaultCredentialError("vault returned no wrapping token for the secret id")
            return resp.wrap_info
        return SecretStr(str((resp.data or {}).get("secret_id") or ""))
