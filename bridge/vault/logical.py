"""Configuration endpoints read and written as documents (the Go client's ``Logical()``): roles, connections,
CA configuration. ``provision`` compares what it wants with what a read returns, key by key, so these stay
dictionaries of Vault's own field names; the envelope around them is parsed here."""

from __future__ import annotations

from typing import Any

from bridge.vault.api import LIST, Requester
from bridge.vault.errors import VaultNotFoundError
from bridge.vault.models import VaultResponse


class LogicalAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def read(self, path: str, *, token: str, operation: str = "logical.read") -> dict[str, Any] | None:
        """``data`` of ``GET path`` (already quoted); ``None`` when there is nothing there (404)."""
        try:
            resp = await self._requester.request("GET", path, operation=operation, token=token)
        except VaultNotFoundError:
            return None
        return resp.data or {}

    async def write(self, path: str, body: dict[str, Any], *, token: str,
                    operation: str = "logical.write") -> VaultResponse:
        return await self._requester.request("POST", path, operation=operation, token=token, json_body=body)

    async def list(self, path: str, *, token: str, operation: str = "logical.list") -> list[str]:
        """The names below ``path``; empty when there is none (404)."""
        try:
            resp = await self._requester.request("GET", path, operation=operation, token=token, params=LIST)
        except VaultNotFoundError:
            return []
        keys = (resp.data or {}).get("keys")
        return [str(k) for k in keys] if isinstance(keys, list) else []

    async def delete(self, path: str, *, token: str, operation: str = "logical.delete") -> None:
        await self._requester.request("DELETE", path, operation=operation, token=token)
